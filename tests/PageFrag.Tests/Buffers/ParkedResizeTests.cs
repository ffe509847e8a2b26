using System.Buffers;
using System.Runtime.InteropServices;
using PageFrag.Buffers;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;
using static PageFrag.Tests.Buffers.BufferTestSupport;

namespace PageFrag.Tests.Buffers;

/// <summary>
/// A rent of another size than the parked buffers' is served by the newest parked buffer, resized in place, when its
/// fragment is still the cache's most recent and the page has room; otherwise it is carved as before. Resizing must never
/// reach bytes that another live buffer has, nor let a buffer outgrow its page, and the counters stay honest.
/// </summary>
public class ParkedResizeTests
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
    public void A_rent_of_another_size_takes_the_newest_parked_buffer_in_place_larger_or_smaller_and_the_counters_stay_honest()
    {
        using PageAllocator allocator = WarmAllocator();
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator }))
        {
            IMemoryOwner<byte> first = pool.Rent(256);
            nint address = AddressOf(first);
            first.Dispose();

            IMemoryOwner<byte> larger = pool.Rent(4096);
            Assert.Same(first, larger);
            Assert.Equal(address, AddressOf(larger));
            Assert.Equal(4096, larger.Memory.Length);
            larger.Memory.Span.Fill(3);
            Assert.Equal(32768 - 4096, pool.GetStats().PooledBytes); // the page's offset moved past the grown buffer
            larger.Dispose();

            // A smaller size of at least half the fragment takes it as it is: the extent and the true size stay (a Memory
            // kept from the 4 KiB rent must not reach bytes given to someone else).
            IMemoryOwner<byte> smaller = pool.Rent(2000);
            Assert.Same(first, smaller);
            Assert.Equal(address, AddressOf(smaller));
            Assert.Equal(2048, smaller.Memory.Length); // rounded to the pool's 64-byte granule
            IMemoryOwner<byte> next = pool.Rent(64);
            Assert.Equal(address + 4096, AddressOf(next));
            AssertDisjoint(smaller, next);
            next.Dispose();
            smaller.Dispose();

            // A size below half is carved instead (the parked 4 KiB would keep more than twice its bytes).
            IMemoryOwner<byte> tiny = pool.Rent(128);
            Assert.NotSame(first, tiny);
            tiny.Dispose();

            PageFragMemoryPoolStats stats = pool.GetStats();
            Assert.Equal(5, stats.Rents);
            Assert.Equal(5, stats.Returns);
            Assert.Equal(256 + 4096 + 4096 + 64 + 128, stats.RentedBytes); // the 2000-byte rent counts its fragment's 4096
            Assert.Equal(0, stats.OutstandingBytes);
            Assert.Equal(32768, pool.Trim());
            Assert.Equal(0, allocator.PagesInUse);
        }

        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_parked_buffer_with_a_later_fragment_after_it_is_not_grown_over_that_fragment()
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
    public void A_parked_buffer_near_the_end_of_its_page_is_not_grown_past_the_page()
    {
        using PageAllocator allocator = WarmAllocator(arenaSize: 256 * 1024);
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator }))
        {
            // 7 x 4 KiB and 3 KiB leave 1 KiB on the 32 KiB page; the 3 KiB buffer is parked and a 2 KiB rent follows.
            var held = new List<IMemoryOwner<byte>>();
            for (int i = 0; i < 7; i++)
            {
                held.Add(pool.Rent(4096));
            }

            IMemoryOwner<byte> tail = pool.Rent(3072);
            nint pageStart = AddressOf(held[0]);
            nint tailStart = AddressOf(tail);
            Assert.Equal(pageStart + (7 * 4096), tailStart);
            tail.Dispose();

            // 4 KiB fits in what is left: taken in place, up to the page's last byte.
            IMemoryOwner<byte> exact = pool.Rent(4096);
            Assert.Same(tail, exact);
            Assert.Equal(tailStart, AddressOf(exact));
            exact.Dispose();

            // 8 KiB does not: carved elsewhere, never grown past the page's end.
            IMemoryOwner<byte> grown = pool.Rent(8192);
            nint start = AddressOf(grown);
            Assert.True(start >= pageStart + 32768 || start + 8192 <= pageStart, "the buffer was grown past its page's end");
            held.ForEach(h => AssertDisjoint(h, grown));

            grown.Dispose();
            held.ForEach(h => h.Dispose());
            pool.Trim();
            Assert.Equal(0, allocator.PagesInUse);
        }

        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_memory_kept_from_a_larger_rent_reaches_no_byte_of_another_renter_after_a_smaller_rent_takes_its_fragment()
    {
        using PageAllocator allocator = WarmAllocator();
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator }))
        {
            IMemoryOwner<byte> big = pool.Rent(4096);
            Memory<byte> kept = big.Memory; // misuse: kept after Dispose
            big.Dispose();

            IMemoryOwner<byte> smaller = pool.Rent(2048);
            Assert.Same(big, smaller);
            IMemoryOwner<byte> neighbour = pool.Rent(64); // carved past the fragment's whole 4 KiB
            AssertDisjoint(big, neighbour);
            Assert.True(AddressOf(neighbour) >= AddressOf(smaller) + 4096);
            neighbour.Memory.Span.Fill(0x4E);

            // The stale Memory is 4096 long and the buffer now 2048: its span cannot be had at all, and the array segment
            // the runtime builds from it stays within the bytes this owner holds (the documented reuse of one owner).
            Assert.Throws<ArgumentOutOfRangeException>(() => kept.Span.Length);
            Assert.True(MemoryMarshal.TryGetArray<byte>(kept, out ArraySegment<byte> segment));
            segment.AsSpan().Fill(0xEE);
            Assert.True(neighbour.Memory.Span.IndexOfAnyExcept((byte)0x4E) < 0, "a stale Memory reached another renter");
            neighbour.Dispose();
            smaller.Dispose();
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
