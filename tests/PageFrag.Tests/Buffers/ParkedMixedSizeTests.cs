using System.Buffers;
using PageFrag.Buffers;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;
using static PageFrag.Tests.Buffers.BufferTestSupport;

namespace PageFrag.Tests.Buffers;

/// <summary>
/// Rents of other sizes than the parked buffers' (session 9): a parked buffer is never handed to a rent of another size,
/// so none is grown over a later fragment, and a thread renting sizes in turn allocates nothing and keeps one page.
/// </summary>
public class ParkedMixedSizeTests
{
    private static unsafe nint AddressOf(IMemoryOwner<byte> owner)
    {
        using MemoryHandle pin = owner.Memory.Pin();
        return (nint)pin.Pointer;
    }

    private static void AssertDisjoint(IMemoryOwner<byte> a, IMemoryOwner<byte> b)
    {
        nint startA = AddressOf(a), startB = AddressOf(b);
        bool disjoint = startA + a.Memory.Length <= startB || startB + b.Memory.Length <= startA;
        Assert.True(disjoint, $"[{startA:x}, +{a.Memory.Length}) overlaps [{startB:x}, +{b.Memory.Length})");
    }

    [Fact]
    public void A_rent_of_another_size_never_takes_a_parked_buffer_nor_the_bytes_of_a_later_one()
    {
        using PageAllocator allocator = WarmAllocator();
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator }))
        {
            IMemoryOwner<byte> a = pool.Rent(256);
            IMemoryOwner<byte> b = pool.Rent(256);
            b.Memory.Span.Fill(0xBB);
            a.Dispose(); // parked, but b was carved after it: a is not the cache's most recent fragment

            IMemoryOwner<byte> c = pool.Rent(1024);
            Assert.NotSame(a, c);
            AssertDisjoint(b, c);
            c.Memory.Span.Fill(0xCC);
            Assert.True(b.Memory.Span.IndexOfAnyExcept((byte)0xBB) < 0, "b's bytes were overwritten by another renter");

            b.Dispose();
            c.Dispose();
            pool.Trim();
            Assert.Equal(0, allocator.PagesInUse);
        }

        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Rents_of_mixed_sizes_on_one_thread_allocate_nothing_and_keep_one_page()
    {
        using PageAllocator allocator = WarmAllocator();
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator }))
        {
            static void Loop(MemoryPool<byte> pool, int rounds)
            {
                for (int i = 0; i < rounds; i++)
                {
                    int size = 64 * (1 + (int)((uint)(i * 7919) % 64u));
                    IMemoryOwner<byte> owner = pool.Rent(size);
                    owner.Memory.Span[size - 1] = 1;
                    owner.Dispose();
                }
            }

            Loop(pool, 2048);
            long before = GC.GetAllocatedBytesForCurrentThread();
            Loop(pool, 4096);
            Assert.Equal(0, GC.GetAllocatedBytesForCurrentThread() - before);
            PageFragMemoryPoolStats stats = pool.GetStats();
            Assert.Equal(32768, stats.AllocatedBytes);
            Assert.Equal(0, stats.OutstandingBytes);
            pool.Trim();
            Assert.Equal(0, allocator.PagesInUse);
        }

        Leaks.AssertNone(allocator);
    }
}
