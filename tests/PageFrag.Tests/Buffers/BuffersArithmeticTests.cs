using System.Buffers;
using PageFrag.Buffers;
using PageFrag.Frag;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;
using static PageFrag.Tests.Buffers.BufferTestSupport;

namespace PageFrag.Tests.Buffers;

/// <summary>
/// Issue 11 items 9 and 12: the pool's statistics use sizes read while the memory is still owned, and
/// sizes near <see cref="int.MaxValue"/> on every public entry point of Buffers/ get an argument exception
/// (never an overflow or an <see cref="OutOfMemoryException"/>) and leave everything usable and leak-free.
/// </summary>
public class BuffersArithmeticTests
{
    [Theory]
    [InlineData(40000, 65536)]
    [InlineData(100000, 131072)]
    [InlineData(1 << 20, 1 << 20)]
    public void A_dedicated_block_is_counted_with_its_own_size_when_returned(int size, int trueSize)
    {
        // 4 MiB arenas: a freed block merges with its free buddies, so its descriptor then shows a larger order.
        using PageAllocator allocator = WarmAllocator(arenaSize: 4 << 20);
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator, MaxBufferSize = 1 << 20 }))
        {
            pool.Rent(size).Dispose();
            PageFragMemoryPoolStats stats = pool.GetStats();
            Assert.Equal(1, stats.DedicatedBlocks);
            Assert.Equal(trueSize, stats.RentedBytes);
            Assert.Equal(0, stats.OutstandingBytes);
            Assert.Equal(0, stats.OutstandingBuffers);
            Assert.Equal(trueSize, stats.AllocatedBytes);
        }

        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Statistics_add_up_after_mixed_rents_returned_on_another_thread()
    {
        using PageAllocator allocator = WarmAllocator(arenaSize: 4 << 20);
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator, MaxBufferSize = 1 << 20 }))
        {
            var owners = new List<IMemoryOwner<byte>>();
            foreach (int size in new[] { 1, 100, 4096, 5000, 40000, 1 << 20, 32768 })
            {
                owners.Add(pool.Rent(size));
            }

            long rented = pool.GetStats().RentedBytes;
            Assert.Equal(rented, pool.GetStats().OutstandingBytes);
            var t = new Thread(() => owners.ForEach(o => o.Dispose()));
            t.Start();
            t.Join();
            PageFragMemoryPoolStats stats = pool.GetStats();
            Assert.Equal(0, stats.OutstandingBytes);
            Assert.Equal(0, stats.OutstandingBuffers);
            Assert.Equal(rented, stats.RentedBytes);
        }

        Leaks.AssertNone(allocator);
    }

    [Theory]
    [InlineData(int.MaxValue)]
    [InlineData(int.MaxValue - 1)]
    [InlineData(0x7FFFFFC8)] // Array.MaxLength + 1
    public void GetMemory_with_a_hint_above_the_largest_array_throws_an_argument_exception(int sizeHint)
    {
        using PageAllocator allocator = WarmAllocator();
        var cache = new PageFragCache(allocator);
        using (var writer = new FragBufferWriter(cache))
        {
            writer.GetSpan(10)[..10].Fill(7);
            writer.Advance(10);
            var e = Assert.Throws<ArgumentOutOfRangeException>(() => writer.GetMemory(sizeHint));
            Assert.Equal("sizeHint", e.ParamName);
            Assert.Contains($"sizeHint must be at most {Array.MaxLength} bytes", e.Message);
            e = Assert.Throws<ArgumentOutOfRangeException>(() => writer.GetSpan(sizeHint));
            Assert.Equal("sizeHint", e.ParamName);

            // The writer is unchanged and still works.
            Assert.Equal(10, writer.WrittenCount);
            writer.GetSpan(20)[..20].Fill(8);
            writer.Advance(20);
            Assert.Equal(30, writer.WrittenCount);
            Assert.Throws<InvalidOperationException>(() => writer.Advance(int.MaxValue));
            Assert.Equal(30, writer.WrittenCount);
        }

        cache.Drain();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void GetMemory_at_the_largest_block_and_just_above_it_is_served()
    {
        using PageAllocator allocator = WarmAllocator();
        var cache = new PageFragCache(allocator);
        int largest = PageConstants.PageSize << allocator.MaxOrder;
        using (var writer = new FragBufferWriter(cache))
        {
            Assert.Equal(largest, writer.GetMemory(largest).Length);
            writer.Advance(largest);
            Assert.True(writer.GetMemory(largest + 1).Length >= largest + 1);
            writer.Advance(largest + 1);
            Assert.Equal((2L * largest) + 1, writer.WrittenCount);
            writer.Detach().Dispose();
        }

        cache.Drain();
        Leaks.AssertNone(allocator);
    }

    [Theory]
    [InlineData(int.MaxValue)]
    [InlineData(int.MinValue)]
    [InlineData(-2)]
    [InlineData(32769)]
    public void Rent_sizes_out_of_range_throw_and_leave_the_pool_usable(int size)
    {
        using PageAllocator allocator = WarmAllocator();
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator }))
        {
            var e = Assert.Throws<ArgumentOutOfRangeException>(() => pool.Rent(size));
            Assert.Equal("minBufferSize", e.ParamName);
            Assert.Contains("between 0 and MaxBufferSize (32768)", e.Message);
            using IMemoryOwner<byte> owner = pool.Rent(32768);
            Assert.Equal(32768, owner.Memory.Length);
            Assert.Equal(0, pool.GetStats().Returns);
        }

        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Rent_at_the_allocators_largest_block_is_served_with_the_whole_block()
    {
        using PageAllocator allocator = WarmAllocator(arenaSize: 1 << 20);
        int largest = PageConstants.PageSize << allocator.MaxOrder;
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator, MaxBufferSize = largest }))
        {
            using (IMemoryOwner<byte> owner = pool.Rent(largest))
            {
                Assert.Equal(largest, owner.Memory.Length);
            }

            Assert.Throws<ArgumentOutOfRangeException>(() => pool.Rent(largest + 1));
            Assert.Equal(0, pool.GetStats().OutstandingBytes);
        }

        Leaks.AssertNone(allocator);
    }
}
