using PageFrag.Pages;
using PageFrag.Pool;
using PageFrag.Tests.Infrastructure;
using static PageFrag.Tests.Pool.PoolTesting;

namespace PageFrag.Tests.Pool;

public class PagePoolAllocationTests
{
    [Fact]
    public void The_first_allocation_is_slow_the_next_63_are_fast_and_the_65th_finds_the_ring_empty()
    {
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 1 << 20);
        PagePool pool = NewPool(allocator);
        var held = new List<NetMem>();

        Assert.True(pool.TryAllocNetMem(out NetMem first));
        held.Add(first);
        PagePoolStats s = pool.GetStats();
        Assert.Equal((1, 0, 1), (s.AllocSlow, s.AllocFast, s.AllocEmpty));
        Assert.Equal(63, pool.CachedPages);

        for (int i = 0; i < 63; i++)
        {
            Assert.True(pool.TryAllocNetMem(out NetMem m));
            held.Add(m);
        }

        s = pool.GetStats();
        Assert.Equal((1, 63, 1), (s.AllocSlow, s.AllocFast, s.AllocEmpty));

        Assert.True(pool.TryAllocNetMem(out NetMem sixtyFifth));
        held.Add(sixtyFifth);
        s = pool.GetStats();
        Assert.Equal((2, 63, 2), (s.AllocSlow, s.AllocFast, s.AllocEmpty));
        Assert.Equal(128, pool.PagesHeld);
        Assert.Equal(65, held.Distinct().Count());

        foreach (NetMem m in held)
        {
            Assert.Equal(1, m.PpRefCount);
            Assert.Same(pool, m.Pool);
            Assert.False(m.IsNetIov);
            Assert.Equal(4096, m.Length);
            pool.RecycleDirect(m);
        }

        DisposeAndAssertNoLeak(pool, allocator);
    }

    [Fact]
    public void A_high_order_pool_takes_one_block_per_slow_allocation()
    {
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 1 << 20);
        PagePool pool = NewPool(allocator, order: 2);
        Assert.True(pool.TryAllocNetMem(out NetMem a));
        Assert.True(pool.TryAllocNetMem(out NetMem b));
        PagePoolStats s = pool.GetStats();
        Assert.Equal((0, 2, 0), (s.AllocSlow, s.AllocSlowHighOrder, s.AllocFast));
        Assert.Equal(16384, a.Length);
        Assert.Equal(16384, pool.PageSize);
        Assert.True(a.TryGetPage(out Page page));
        Assert.Equal(2, page.Order);

        pool.RecycleDirect(a);
        Assert.True(pool.TryAllocNetMem(out NetMem again));
        Assert.Equal(1, pool.GetStats().AllocFast);
        pool.RecycleDirect(again);
        pool.RecycleDirect(b);
        DisposeAndAssertNoLeak(pool, allocator);
    }

    [Fact]
    public void Pages_are_readable_pinned_memory_that_socket_apis_can_take_as_array_segments()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        PagePool pool = NewPool(allocator);
        Assert.True(pool.TryAllocPage(out PagePoolBuffer page));
        Assert.False(page.IsFragment);
        Assert.Equal(4096, page.Length);
        Assert.Equal(4096, page.TrueSize);
        page.Span.Fill(0x5A);
        ArraySegment<byte> segment = page.ArraySegment;
        Assert.Equal(4096, segment.Count);
        Assert.All(segment, b => Assert.Equal(0x5A, b));
        Assert.Equal(0, page.Address % 4096);
        Assert.Equal(page.NetMem.Address, page.Address);
        page.Free();
        DisposeAndAssertNoLeak(pool, allocator);
    }

    [Fact]
    public void Memory_limit_ends_the_bulk_early_and_the_pool_fails_cleanly_once_the_allocator_is_full()
    {
        // One 64 KiB arena: 16 pages in all.
        using PageAllocator allocator = Leaks.NewAllocator(maxBytes: 64 * 1024);
        PagePool pool = NewPool(allocator);
        var held = new List<NetMem>();
        for (int i = 0; i < 16; i++)
        {
            Assert.True(pool.TryAllocNetMem(out NetMem m));
            held.Add(m);
        }

        Assert.Equal(16, pool.PagesHeld);
        Assert.False(pool.TryAllocNetMem(out NetMem none));
        Assert.True(none.IsEmpty);
        Assert.False(pool.TryAllocFrag(64, out PagePoolBuffer noFrag));
        Assert.True(noFrag.IsEmpty);

        // A page coming back makes the pool work again, through the ring.
        OnOtherThread(() => pool.PutFullPage(held[0], allowDirect: false));
        held.RemoveAt(0);
        Assert.True(pool.TryAllocNetMem(out NetMem back));
        Assert.Equal(1, pool.GetStats().AllocRefill);
        held.Add(back);
        foreach (NetMem m in held)
        {
            pool.RecycleDirect(m);
        }

        DisposeAndAssertNoLeak(pool, allocator);
    }

    [Fact]
    public void Injected_faults_fail_the_slow_path_without_corrupting_the_pool()
    {
        var faults = new FaultInjection { FailEveryNth = 5 };
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 1 << 20, faults: faults);
        PagePool pool = NewPool(allocator);

        // The bulk stops at the first injected failure: 4 pages, one returned, 3 cached.
        Assert.True(pool.TryAllocNetMem(out NetMem a));
        Assert.Equal(4, pool.PagesHeld);
        Assert.Equal(3, pool.CachedPages);
        var held = new List<NetMem> { a };
        for (int i = 0; i < 3; i++)
        {
            Assert.True(pool.TryAllocNetMem(out NetMem m));
            held.Add(m);
        }

        // With every attempt failing, the slow path fails and the pool holds what it held.
        allocator.FaultInjection = new FaultInjection { FailEveryNth = 1 };
        Assert.False(pool.TryAllocNetMem(out NetMem failed));
        Assert.True(failed.IsEmpty);
        Assert.False(pool.TryAlloc(100, out _));
        Assert.Equal(4, pool.PagesHeld);
        Assert.Equal(1, faults.Injected);

        allocator.FaultInjection = null;
        Assert.True(pool.TryAllocNetMem(out NetMem after));
        held.Add(after);
        foreach (NetMem m in held)
        {
            pool.RecycleDirect(m);
        }

        DisposeAndAssertNoLeak(pool, allocator);
    }

    [Fact]
    public void Stats_add_into_the_callers_struct_so_pools_can_be_summed()
    {
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 1 << 20);
        PagePool p1 = NewPool(allocator);
        PagePool p2 = NewPool(allocator);
        Assert.True(p1.TryAllocNetMem(out NetMem a));
        Assert.True(p1.TryAllocNetMem(out NetMem b));
        Assert.True(p2.TryAllocNetMem(out NetMem c));
        p1.RecycleDirect(a);
        p2.RecycleDirect(c);

        var sum = default(PagePoolStats);
        p1.GetStats(ref sum);
        p2.GetStats(ref sum);
        Assert.Equal(2, sum.AllocSlow);
        Assert.Equal(1, sum.AllocFast);
        Assert.Equal(2, sum.RecycleCached);

        var again = sum;
        again.Add(p1.GetStats());
        Assert.Equal(3, again.AllocSlow);
        Assert.Contains("alloc fast 1, slow 2", sum.ToString(), StringComparison.Ordinal);

        p1.RecycleDirect(b);
        p1.Dispose();
        DisposeAndAssertNoLeak(p2, allocator);
        Assert.True(p1.IsReleased);
    }

    [Fact]
    public void Two_pools_on_one_allocator_keep_their_pages_apart()
    {
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 1 << 20);
        PagePool p1 = NewPool(allocator);
        PagePool p2 = NewPool(allocator);
        Assert.True(p1.TryAllocNetMem(out NetMem a));
        Assert.True(p2.TryAllocNetMem(out NetMem b));
        Assert.Same(p1, a.Pool);
        Assert.Same(p2, b.Pool);
        Assert.NotEqual(p1.Id, p2.Id);
        p1.RecycleDirect(a);
        p2.RecycleDirect(b);
        p1.Dispose();
        DisposeAndAssertNoLeak(p2, allocator);
        Assert.True(p1.IsReleased);
    }
}
