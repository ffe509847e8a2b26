using System.Buffers;
using System.Runtime.InteropServices;
using PageFrag.Buffers;
using PageFrag.Frag;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;
using static PageFrag.Tests.Buffers.BufferTestSupport;

namespace PageFrag.Tests.Buffers;

public class PageFragMemoryPoolTests
{
    [Theory]
    [InlineData(-1, 4096)]
    [InlineData(0, 64)]
    [InlineData(1, 64)]
    [InlineData(64, 64)]
    [InlineData(65, 128)]
    [InlineData(4000, 4032)]
    [InlineData(4096, 4096)]
    public void Rent_sizes_are_rounded_up_to_a_cache_line(int requested, int expected)
    {
        using PageAllocator allocator = WarmAllocator();
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator }))
        {
            using IMemoryOwner<byte> owner = pool.Rent(requested);
            Assert.Equal(expected, owner.Memory.Length);
        }

        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Rented_memory_is_a_fragment_of_a_pinned_arena_page()
    {
        using PageAllocator allocator = WarmAllocator();
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator }))
        {
            using IMemoryOwner<byte> a = pool.Rent(100);
            using IMemoryOwner<byte> b = pool.Rent(100);
            Assert.True(MemoryMarshal.TryGetArray<byte>(a.Memory, out ArraySegment<byte> sa));
            Assert.True(MemoryMarshal.TryGetArray<byte>(b.Memory, out ArraySegment<byte> sb));
            Assert.Same(sa.Array, sb.Array);
            Assert.Equal(2, GC.GetGeneration(sa.Array!));
            unsafe
            {
                fixed (byte* p = a.Memory.Span)
                {
                    Assert.True(PageAllocator.TryGetPage((nint)p, out Page page));
                    Assert.Equal(allocator, page.Allocator);
                }
            }
        }

        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Eight_default_rents_share_one_order_3_page()
    {
        using PageAllocator allocator = WarmAllocator();
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator }))
        {
            var owners = Enumerable.Range(0, 8).Select(_ => pool.Rent()).ToList();
            Assert.Equal(8, allocator.PagesInUse);
            PageFragMemoryPoolStats stats = pool.GetStats();
            Assert.Equal(32768, stats.AllocatedBytes);
            Assert.Equal(8, stats.OutstandingBuffers);
            Assert.Equal(32768, stats.OutstandingBytes);
            Assert.Equal(0, stats.DedicatedBlocks);
            owners.ForEach(o => o.Dispose());
            stats = pool.GetStats();
            Assert.Equal(0, stats.OutstandingBuffers);
            Assert.Equal(0, stats.OutstandingBytes);
        }

        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Rents_above_4096_on_order_0_pages_get_blocks_of_their_own()
    {
        using PageAllocator allocator = WarmAllocator(faults: new FaultInjection { FailOrderAtLeast = 3 });
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator, MaxBufferSize = 16384 }))
        {
            using IMemoryOwner<byte> small = pool.Rent(100);
            using IMemoryOwner<byte> large = pool.Rent(5000);
            Assert.Equal(8192, large.Memory.Length);
            PageFragMemoryPoolStats stats = pool.GetStats();
            Assert.Equal(1, stats.DedicatedBlocks);
            Assert.Equal(128 + 8192, stats.OutstandingBytes);
        }

        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_buffer_returned_on_its_renting_thread_goes_back_to_the_bias_and_from_another_thread_to_the_page_count()
    {
        using PageAllocator allocator = WarmAllocator();
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator }))
        {
            IMemoryOwner<byte> keep = pool.Rent(100);
            IMemoryOwner<byte> local = pool.Rent(100);
            IMemoryOwner<byte> remote = pool.Rent(100);
            Page page = PageOf(keep);
            Assert.Equal(page, PageOf(local));
            Assert.Equal(page, PageOf(remote));
            int refCount = page.RefCount;

            // On the renting thread the return is the cache owner's: a plain increment of the bias.
            local.Dispose();
            Assert.Equal(refCount, page.RefCount);

            // Another thread frees as from anywhere: an atomic decrement of the page, counted by that thread's slot.
            var other = new Thread(() => remote.Dispose());
            other.Start();
            other.Join();
            Assert.Equal(refCount - 1, page.RefCount);

            PageFragMemoryPoolStats stats = pool.GetStats();
            Assert.Equal(3, stats.Rents);
            Assert.Equal(2, stats.Returns);
            Assert.Equal(128, stats.OutstandingBytes);
            Assert.Equal(2, pool.SlotCount);
            keep.Dispose();
        }

        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Buffers_returned_locally_and_from_other_threads_never_overlap_a_live_buffer()
    {
        using PageAllocator allocator = WarmAllocator();
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator }))
        {
            const int Rounds = 20_000;
            var handOff = new System.Collections.Concurrent.BlockingCollection<(IMemoryOwner<byte> Owner, byte Tag)>(boundedCapacity: 256);
            long corrupted = 0;

            // Each worker keeps a window of live buffers it returns itself (the local path, racing with the
            // other worker's returns into the same caches) and hands every third buffer to the other side.
            void Work(int id)
            {
                var window = new Queue<(IMemoryOwner<byte> Owner, byte Tag)>();
                for (int i = 0; i < Rounds; i++)
                {
                    byte tag = (byte)(id * 100 + i % 97);
                    IMemoryOwner<byte> owner = pool.Rent(1 + (i * 37 % 3000));
                    owner.Memory.Span.Fill(tag);
                    if (i % 3 == 0)
                    {
                        handOff.Add((owner, tag));
                    }
                    else
                    {
                        window.Enqueue((owner, tag));
                    }

                    if (window.Count > 32 || (window.Count > 0 && i == Rounds - 1))
                    {
                        Release(window.Dequeue());
                    }

                    while (handOff.TryTake(out (IMemoryOwner<byte>, byte) other))
                    {
                        Release(other);
                    }
                }

                while (window.Count > 0)
                {
                    Release(window.Dequeue());
                }
            }

            void Release((IMemoryOwner<byte> Owner, byte Tag) item)
            {
                if (item.Owner.Memory.Span.ContainsAnyExcept(item.Tag))
                {
                    Interlocked.Increment(ref corrupted);
                }

                item.Owner.Dispose();
            }

            var workers = Enumerable.Range(1, 2).Select(id => new Thread(() => Work(id))).ToList();
            workers.ForEach(t => t.Start());
            workers.ForEach(t => t.Join());
            while (handOff.TryTake(out (IMemoryOwner<byte>, byte) left))
            {
                Release(left);
            }

            Assert.Equal(0, Interlocked.Read(ref corrupted));
            PageFragMemoryPoolStats stats = pool.GetStats();
            Assert.Equal(2 * Rounds, stats.Rents);
            Assert.Equal(stats.Rents, stats.Returns);
            Assert.Equal(0, stats.OutstandingBytes);
        }

        Leaks.AssertNone(allocator);
    }

    private static unsafe Page PageOf(IMemoryOwner<byte> owner)
    {
        Assert.True(MemoryMarshal.TryGetArray<byte>(owner.Memory, out ArraySegment<byte> segment));
        nint address = (nint)System.Runtime.CompilerServices.Unsafe.AsPointer(ref segment.Array![segment.Offset]);
        Assert.True(PageAllocator.TryGetPage(address, out Page page));
        return page;
    }

    [Fact]
    public void A_second_Dispose_of_a_buffer_is_ignored_like_MemoryPool_Shared()
    {
        using PageAllocator allocator = WarmAllocator();
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator }))
        {
            IMemoryOwner<byte> owner = pool.Rent(100);
            owner.Dispose();
            owner.Dispose();
            var e = Assert.Throws<ObjectDisposedException>(() => owner.Memory);
            Assert.Equal("PageFragMemoryPool buffer", e.ObjectName);
            Assert.Equal(1, pool.GetStats().Returns);

            IMemoryOwner<byte> shared = MemoryPool<byte>.Shared.Rent(100);
            shared.Dispose();
            shared.Dispose();
            Assert.Throws<ObjectDisposedException>(() => shared.Memory);
        }

        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void When_the_allocator_refuses_pages_Rent_throws_and_works_again_once_memory_is_back()
    {
        using PageAllocator allocator = WarmAllocator();
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator }))
        {
            allocator.FaultInjection = new FaultInjection { FailEveryNth = 1 };
            var e = Assert.Throws<InsufficientMemoryException>(() => pool.Rent(100));
            Assert.Equal("The PageAllocator could not supply 128 bytes: its memory limit is reached or an allocation fault was injected.", e.Message);
            Assert.Equal(0, pool.GetStats().Rents);

            allocator.FaultInjection = null;
            using IMemoryOwner<byte> owner = pool.Rent(100);
            Assert.Equal(128, owner.Memory.Length);
        }

        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Trimming_idle_caches_skips_those_used_since_the_previous_trim()
    {
        using PageAllocator allocator = WarmAllocator();
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator }))
        {
            pool.Rent(100).Dispose();
            Assert.Equal(8, allocator.PagesInUse);

            Assert.Equal(0, pool.Trim(idleOnly: true));
            Assert.Equal(8, allocator.PagesInUse);

            // The page's free space and the 128-byte buffer parked for the next rent of its size (it was returned on the
            // renting thread): the trim gives both back.
            Assert.Equal(32768, pool.Trim(idleOnly: true));
            Assert.Equal(0, allocator.PagesInUse);
            PageFragMemoryPoolStats stats = pool.GetStats();
            Assert.Equal(32768, stats.EvictedBytes);
            Assert.Equal(0, stats.PooledBytes);
        }

        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_pool_created_without_an_allocator_takes_its_pages_from_the_shared_allocator()
    {
        using var pool = new PageFragMemoryPool();
        Assert.Same(PageAllocator.Shared, pool.Allocator);
        IMemoryOwner<byte> owner = pool.Rent(100);
        Assert.Same(PageAllocator.Shared, ((FragmentMemoryOwner)owner).Home.Cache.Allocator);
        owner.Dispose();
        pool.Trim();
        Assert.Equal(0, pool.GetStats().OutstandingBuffers);
    }

    [Fact]
    public void The_shared_pool_is_one_instance_over_the_shared_allocator_and_ignores_Dispose()
    {
        PageFragMemoryPool shared = PageFragMemoryPool.Shared;
        Assert.Same(shared, PageFragMemoryPool.Shared);
        Assert.Same(PageAllocator.Shared, shared.Allocator);
        shared.Dispose();
        Assert.False(shared.IsDisposed);
        using IMemoryOwner<byte> owner = shared.Rent(300);
        Assert.Equal(320, owner.Memory.Length);
    }

    [Fact]
    public void A_trim_never_frees_the_page_of_a_buffer_still_out()
    {
        using PageAllocator allocator = WarmAllocator();
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator }))
        {
            IMemoryOwner<byte> owner = pool.Rent(100);
            owner.Memory.Span.Fill(9);
            pool.Trim();
            Assert.Equal(8, allocator.PagesInUse);
            using (IMemoryOwner<byte> other = pool.Rent(100))
            {
                other.Memory.Span.Fill(1);
            }

            Assert.True(owner.Memory.Span.IndexOfAnyExcept((byte)9) < 0);
            owner.Dispose();
            pool.Trim();
        }

        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Bad_options_are_rejected_when_the_pool_is_created()
    {
        using PageAllocator allocator = WarmAllocator();
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator, MaxBufferSize = 100 }));
        Assert.Equal("MaxBufferSize", e.ParamName);
        Assert.StartsWith("MaxBufferSize must be between 4096 and the allocator's largest block (65536 bytes).", e.Message);
        e = Assert.Throws<ArgumentOutOfRangeException>(() => new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator, MaxBufferSize = 65537 }));
        Assert.Equal("MaxBufferSize", e.ParamName);
        e = Assert.Throws<ArgumentOutOfRangeException>(() => new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator, OwnersPerCpu = -1 }));
        Assert.Equal("OwnersPerCpu", e.ParamName);
        Assert.StartsWith("OwnersPerCpu must be between 0 and 1024.", e.Message);
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Disposing_the_pool_twice_does_nothing()
    {
        using PageAllocator allocator = WarmAllocator();
        var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator });
        pool.Rent(10).Dispose();
        pool.Dispose();
        pool.Dispose();
        Assert.Equal(nameof(PageFragMemoryPool), Assert.Throws<ObjectDisposedException>(() => pool.Rent()).ObjectName);
        Leaks.AssertNone(allocator);
    }
}

[Collection(AllocationMeasurements.Name)]
public class PageFragMemoryPoolAllocationTests
{
    [Fact]
    public void Renting_and_returning_allocate_nothing_once_warm()
    {
        // A 1 MiB arena: when the thread migrates between CPUs, free blocks parked on the other CPU's
        // per-CPU list are out of reach, and a small arena would make the allocator grow a new one.
        using PageAllocator allocator = WarmAllocator(arenaSize: 1 << 20);
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator }))
        {
            void Loop()
            {
                for (int i = 0; i < 20_000; i++)
                {
                    IMemoryOwner<byte> a = pool.Rent(i % 4096);
                    IMemoryOwner<byte> b = pool.Rent(-1);
                    a.Memory.Span[0] = 1;
                    b.Dispose();
                    a.Dispose();
                }
            }

            Loop();
            AssertAllocatesNothing(Loop);
        }

        Leaks.AssertNone(allocator);
    }
}
