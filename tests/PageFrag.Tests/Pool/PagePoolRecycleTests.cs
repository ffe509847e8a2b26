using PageFrag.Pages;
using PageFrag.Pool;
using PageFrag.Tests.Infrastructure;
using static PageFrag.Tests.Pool.PoolTesting;

namespace PageFrag.Tests.Pool;

public class PagePoolRecycleTests
{
    [Fact]
    public void A_direct_recycle_on_the_owner_thread_puts_the_page_in_the_cache_and_the_next_allocation_gets_it_back()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        PagePool pool = NewPool(allocator);
        Assert.True(pool.TryAllocNetMem(out NetMem m));
        int cachedBefore = pool.CachedPages;
        pool.RecycleDirect(m);
        Assert.Equal(cachedBefore + 1, pool.CachedPages);
        Assert.Equal(1, pool.GetStats().RecycleCached);

        Assert.True(pool.TryAllocNetMem(out NetMem again));
        Assert.Equal(m.Address, again.Address);
        Assert.NotEqual(m, again); // a new generation: the old handle is stale
        pool.RecycleDirect(again);
        DisposeAndAssertNoLeak(pool, allocator);
    }

    [Fact]
    public void A_put_from_another_thread_goes_through_the_ring_even_when_it_asks_for_direct_recycling()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        PagePool pool = NewPool(allocator);
        Assert.True(pool.TryAllocNetMem(out NetMem m));
        OnOtherThread(() => pool.PutPage(m, -1, allowDirect: true));
        PagePoolStats s = pool.GetStats();
        Assert.Equal((0, 1), (s.RecycleCached, s.RecycleRing));
        Assert.Equal(1, pool.RingPages);

        // Drain the 63 cached pages, then the next allocation refills from the ring.
        var held = new List<NetMem>();
        for (int i = 0; i < 63; i++)
        {
            Assert.True(pool.TryAllocNetMem(out NetMem x));
            held.Add(x);
        }

        Assert.True(pool.TryAllocNetMem(out NetMem fromRing));
        Assert.Equal(m.Address, fromRing.Address);
        Assert.Equal(1, pool.GetStats().AllocRefill);
        held.Add(fromRing);
        held.ForEach(pool.RecycleDirect);
        DisposeAndAssertNoLeak(pool, allocator);
    }

    [Fact]
    public void A_put_on_the_owner_thread_without_allow_direct_takes_the_ring()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        PagePool pool = NewPool(allocator);
        Assert.True(pool.TryAllocNetMem(out NetMem m));
        pool.PutFullPage(m, allowDirect: false);
        Assert.Equal(1, pool.GetStats().RecycleRing);
        DisposeAndAssertNoLeak(pool, allocator);
    }

    [Fact]
    public void A_full_cache_sends_direct_recycles_to_the_ring_and_counts_cache_full()
    {
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 1 << 20);
        PagePool pool = NewPool(allocator);
        var held = new List<NetMem>();
        for (int i = 0; i < 130; i++)
        {
            Assert.True(pool.TryAllocNetMem(out NetMem m));
            held.Add(m);
        }

        int cached = pool.CachedPages; // what the last bulk left
        held.ForEach(pool.RecycleDirect);
        PagePoolStats s = pool.GetStats();
        Assert.Equal(128, pool.CachedPages);
        Assert.Equal(128 - cached, s.RecycleCached);
        Assert.Equal(130 - (128 - cached), s.RecycleCacheFull);
        Assert.Equal(s.RecycleCacheFull, s.RecycleRing);
        DisposeAndAssertNoLeak(pool, allocator);
    }

    [Fact]
    public void A_full_ring_releases_the_page_to_the_allocator_and_counts_ring_full()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        PagePool pool = NewPool(allocator, poolSize: 2);
        Assert.Equal(2, pool.RingCapacity);
        var held = new NetMem[3];
        for (int i = 0; i < 3; i++)
        {
            Assert.True(pool.TryAllocNetMem(out held[i]));
        }

        long inUse = allocator.PagesInUse;
        OnOtherThread(() =>
        {
            foreach (NetMem m in held)
            {
                pool.PutFullPage(m, allowDirect: false);
            }
        });
        PagePoolStats s = pool.GetStats();
        Assert.Equal((2, 1), (s.RecycleRing, s.RecycleRingFull));
        Assert.Equal(inUse - 1, allocator.PagesInUse);
        Assert.Equal(pool.PagesHeld - 1, pool.InFlight);
        DisposeAndAssertNoLeak(pool, allocator);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(100)]
    [InlineData(1000)]
    public void The_ring_holds_exactly_the_pool_size_not_the_power_of_two_above_it(int poolSize)
    {
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 4 << 20);
        PagePool pool = NewPool(allocator, poolSize: poolSize);
        Assert.Equal(poolSize, pool.RingCapacity);
        int count = poolSize + 50;
        var held = new NetMem[count];
        for (int i = 0; i < count; i++)
        {
            Assert.True(pool.TryAllocNetMem(out held[i]));
        }

        // Two producers at once, as ptr_ring allows: the bound holds under concurrency too.
        using var start = new Barrier(2);
        var threads = new Thread[2];
        for (int t = 0; t < 2; t++)
        {
            int first = t;
            threads[t] = new Thread(() =>
            {
                start.SignalAndWait();
                for (int i = first; i < count; i += 2)
                {
                    pool.PutFullPage(held[i], allowDirect: false);
                }
            });
            threads[t].Start();
        }

        foreach (Thread t in threads)
        {
            t.Join();
        }

        PagePoolStats s = pool.GetStats();
        Assert.Equal(poolSize, pool.RingPages);
        Assert.Equal((poolSize, 50L), (s.RecycleRing, s.RecycleRingFull));
        DisposeAndAssertNoLeak(pool, allocator);
    }

    [Fact]
    public void A_page_someone_else_holds_a_reference_on_is_released_not_recycled_and_stays_valid_for_that_holder()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        PagePool pool = NewPool(allocator);
        Assert.True(pool.TryAllocNetMem(out NetMem m));
        Assert.True(m.TryGetPage(out Page page));
        page.AddRef();
        m.Span[0] = 42;

        pool.RecycleDirect(m);
        PagePoolStats s = pool.GetStats();
        Assert.Equal((0, 1), (s.RecycleCached, s.RecycleReleasedRefcnt));
        Assert.Equal(1, page.RefCount);
        Assert.Equal(42, page.Span[0]);
        Assert.Null(m.Pool);

        allocator.FreePages(page);
        DisposeAndAssertNoLeak(pool, allocator);
    }

    [Fact]
    public void Pages_from_the_emergency_reserve_are_released_instead_of_recycled()
    {
        // 16 pages, the top 8 reserved: a pool allowed into the reserve gets 8 ordinary and 8 pfmemalloc pages.
        using PageAllocator allocator = Leaks.NewAllocator(maxBytes: 64 * 1024, reserveBytes: 8 * 4096);
        PagePool pool = NewPool(allocator, allocFlags: AllocFlags.MayUseReserve);
        var held = new List<NetMem>();
        int pfmemalloc = 0;
        for (int i = 0; i < 16; i++)
        {
            Assert.True(pool.TryAllocNetMem(out NetMem m));
            Assert.True(m.TryGetPage(out Page p));
            pfmemalloc += p.IsPfMemalloc ? 1 : 0;
            held.Add(m);
        }

        Assert.Equal(8, pfmemalloc);
        held.ForEach(pool.RecycleDirect);
        PagePoolStats s = pool.GetStats();
        Assert.Equal((8, 8), (s.RecycleCached, s.RecycleReleasedRefcnt));
        DisposeAndAssertNoLeak(pool, allocator);
    }

    [Fact]
    public void Pages_of_another_node_found_in_the_ring_are_waived_and_the_allocator_serves_the_new_node()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        PagePool pool = NewPool(allocator);
        Assert.True(pool.TryAllocNetMem(out NetMem m));
        Assert.Equal(0, m.Node);
        var held = new List<NetMem>();
        for (int i = 0; i < 63; i++)
        {
            Assert.True(pool.TryAllocNetMem(out NetMem x));
            held.Add(x);
        }

        pool.PutFullPage(m, allowDirect: false);
        pool.SetNode(1);
        Assert.Equal(1, pool.Node);
        Assert.True(pool.TryAllocNetMem(out NetMem fresh));
        PagePoolStats s = pool.GetStats();
        Assert.Equal(1, s.AllocWaive);
        Assert.Equal(0, s.AllocRefill);
        Assert.Equal(2, s.AllocSlow);

        held.Add(fresh);
        pool.SetNode(-1);
        held.ForEach(pool.RecycleDirect);
        DisposeAndAssertNoLeak(pool, allocator);
    }

    [Fact]
    public void Ownership_moves_to_the_thread_that_calls_SetOwnerThread()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        PagePool pool = NewPool(allocator);
        Assert.True(pool.IsOwnerThread);
        OnOtherThread(() =>
        {
            pool.SetOwnerThread();
            Assert.True(pool.TryAllocNetMem(out NetMem m));
            pool.RecycleDirect(m);
            Assert.Equal(1, pool.GetStats().RecycleCached);
        });
        Assert.False(pool.IsOwnerThread);
        InvalidOperationException ex = Assert.Throws<InvalidOperationException>(() => pool.TryAllocNetMem(out _));
        Assert.Contains("owner thread", ex.Message, StringComparison.Ordinal);
        pool.SetOwnerThread();
        DisposeAndAssertNoLeak(pool, allocator);
    }

    [Fact]
    public void Driver_managed_fragmentation_recycles_the_page_when_the_last_of_its_pieces_is_put()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        PagePool pool = NewPool(allocator);
        Assert.True(pool.TryAllocNetMem(out NetMem m));
        pool.FragmentNetMem(m, 4);
        Assert.Equal(4, m.PpRefCount);

        OnOtherThread(() => pool.PutPage(m, -1, false));
        pool.PutPage(m, -1, allowDirect: true);
        Assert.Equal(2, m.PpRefCount);
        Assert.Equal(0, pool.GetStats().RecycleCached + pool.GetStats().RecycleRing);

        // The mlx5 way: drop the rest of the references at once, then recycle.
        Assert.Equal(0, pool.UnrefNetMem(m, 2));
        Assert.Equal(1, m.PpRefCount);
        pool.PutUnrefedNetMem(m, -1, allowDirect: true);
        Assert.Equal(1, pool.GetStats().RecycleCached);

        // A mono-frag again: a whole-page allocation of the same page has count 1 and one put recycles it.
        Assert.True(pool.TryAllocNetMem(out NetMem again));
        Assert.Equal(m.Address, again.Address);
        Assert.Equal(1, again.PpRefCount);
        pool.RecycleDirect(again);
        Assert.Equal(2, pool.GetStats().RecycleCached);
        DisposeAndAssertNoLeak(pool, allocator);
    }

    [Fact]
    public void Concurrent_puts_of_the_pieces_of_one_page_recycle_it_exactly_once()
    {
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 1 << 20);
        PagePool pool = NewPool(allocator);
        const int Rounds = 400;
        const int Pieces = 4;
        for (int r = 0; r < Rounds; r++)
        {
            Assert.True(pool.TryAllocNetMem(out NetMem m));
            pool.FragmentNetMem(m, Pieces);
            using var go = new Barrier(Pieces);
            var threads = new Thread[Pieces - 1];
            for (int t = 0; t < threads.Length; t++)
            {
                threads[t] = new Thread(() =>
                {
                    go.SignalAndWait();
                    pool.PutPage(m, -1, false);
                });
                threads[t].Start();
            }

            go.SignalAndWait();
            pool.PutPage(m, -1, true);
            foreach (Thread t in threads)
            {
                t.Join();
            }

            if (r % 100 == 0)
            {
                Assert.Equal(r + 1, pool.GetStats().RecycleCached + pool.GetStats().RecycleRing);
            }
        }

        PagePoolStats s = pool.GetStats();
        Assert.Equal(Rounds, s.RecycleCached + s.RecycleRing + s.RecycleRingFull);
        DisposeAndAssertNoLeak(pool, allocator);
    }
}
