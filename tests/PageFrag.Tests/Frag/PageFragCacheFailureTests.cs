using PageFrag.Frag;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;

namespace PageFrag.Tests.Frag;

/// <summary>
/// Allocation failure is not bad input: it returns the kernel's NULL (false and an empty handle),
/// corrupts nothing, and the cache works again once memory comes back.
/// </summary>
public class PageFragCacheFailureTests
{
    [Fact]
    public void At_the_memory_limit_allocation_fails_with_an_empty_fragment_and_works_again_after_frees()
    {
        // One 64 KiB arena: 16 pages, whichever mix of order-3 and order-0 pages the refills get.
        using PageAllocator allocator = FragKit.NewAllocator(arenaSize: 64 * 1024, maxBytes: 64 * 1024);
        var cache = new PageFragCache(allocator);
        var held = new List<PageFragment>();
        for (int i = 0; i < 16; i++)
        {
            Assert.True(cache.TryAlloc(PageConstants.PageSize, out PageFragment f), $"fragment {i}");
            FragKit.Fill(f, i);
            held.Add(f);
        }

        long failuresBefore = allocator.GetStats().Failures;
        Assert.False(cache.TryAlloc(PageConstants.PageSize, out PageFragment none));
        Assert.True(none.IsEmpty);
        Assert.False(cache.TryPrepare(1, out PreparedFragment noSpace));
        Assert.True(noSpace.IsEmpty);
        Assert.False(cache.TryAlloc(1, out _));

        // The full page was given up before the refill failed; its fragments keep it.
        Assert.Equal(0, cache.CurrentPageSize);
        PageAllocatorStats stats = allocator.GetStats();
        Assert.True(stats.IsConsistent);
        Assert.Equal(16, stats.PagesInUse);
        Assert.True(stats.Failures > failuresBefore);
        for (int i = 0; i < held.Count; i++)
        {
            Assert.True(FragKit.IsIntact(held[i], i));
            held[i].Free();
        }

        Leaks.AssertNone(allocator);
        Assert.True(cache.TryAlloc(PageConstants.PageSize, out PageFragment again));
        again.Free();
        FragKit.AssertStillWorks(cache);
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void An_injected_fault_fails_only_the_allocations_that_need_a_page_and_clearing_it_recovers()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(30000, out PageFragment a));
        Page page = cache.CurrentPage;

        var faults = new FaultInjection { FailEveryNth = 1 };
        allocator.FaultInjection = faults;

        // Room left on the page: no page needed, no failure.
        Assert.True(cache.TryAlloc(1000, out PageFragment b));
        Assert.True(cache.TryPrepare(100, out PreparedFragment fits));
        Assert.Equal(0, faults.Injected);

        // A refill: the order-3 try and the order-0 fallback both fail.
        Assert.False(cache.TryAlloc(4000, out PageFragment none));
        Assert.True(none.IsEmpty);
        Assert.Equal(2, faults.Injected);
        Assert.Equal(0, cache.CurrentPageSize);
        Assert.Equal(1, cache.PagesAllocated);
        Assert.False(cache.TryPrepare(10, out _));
        Assert.False(cache.TryProbe(10, out _));
        FragKit.Throws<InvalidOperationException>(() => cache.Commit(fits, 10), null, "The preparation is stale");
        // The cache gave its unused bias back before the refill: only a's and b's references are left.
        Assert.Equal(2, page.RefCount);
        Assert.True(allocator.GetStats().IsConsistent);

        allocator.FaultInjection = null;
        Assert.True(cache.TryAlloc(4000, out PageFragment c));
        Assert.Equal(2, cache.PagesAllocated);

        a.Free();
        b.Free();
        c.Free();
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void A_cache_whose_page_is_entirely_free_keeps_working_under_faults_by_reusing_it_in_place()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(30000, out PageFragment a));
        a.Free();
        var faults = new FaultInjection { FailEveryNth = 1 };
        allocator.FaultInjection = faults;

        Assert.True(cache.TryAlloc(30000, out PageFragment b));
        Assert.Equal(1, cache.PagesReused);
        Assert.Equal(0, faults.Injected);

        allocator.FaultInjection = null;
        b.Free();
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void Every_second_refill_attempt_failing_still_gives_order0_pages()
    {
        // The counter counts attempts of every order: the first refill's order-3 try passes, and from then
        // on each refill's order-3 try lands on a failing count and its order-0 fallback on a passing one.
        using PageAllocator allocator = FragKit.NewAllocator();
        var faults = new FaultInjection { FailEveryNth = 2 };
        allocator.FaultInjection = faults;
        var cache = new PageFragCache(allocator);
        var held = new List<PageFragment>();
        for (int i = 0; i < 40; i++)
        {
            Assert.True(cache.TryAlloc(PageConstants.PageSize, out PageFragment f), $"fragment {i}");
            held.Add(f);
        }

        Assert.Equal(40 - 8, faults.Injected);
        Assert.Equal(1 + 32, cache.PagesAllocated);
        Assert.True(allocator.GetStats().IsConsistent);
        allocator.FaultInjection = null;
        foreach (PageFragment f in held)
        {
            f.Free();
        }

        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }
}
