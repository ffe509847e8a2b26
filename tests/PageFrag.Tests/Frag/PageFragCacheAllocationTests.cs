using CsCheck;
using PageFrag.Frag;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;

namespace PageFrag.Tests.Frag;

/// <summary>Allocation, the bias trick, alignment, in-place reuse and draining (page_frag_alloc and friends).</summary>
public class PageFragCacheAllocationTests
{
    [Fact]
    public void The_first_allocation_refills_an_order3_page_and_raises_its_refcount_by_the_bias_once()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        long allocationsBefore = allocator.GetStats().Allocations;
        var cache = new PageFragCache(allocator);
        Assert.Equal(0, cache.CurrentPageSize);
        Assert.True(cache.CurrentPage.IsEmpty);

        Assert.True(cache.TryAlloc(12, out PageFragment a));

        Assert.Equal(FragKit.BigPage, cache.CurrentPageSize);
        Assert.Equal(3, cache.CurrentPage.Order);
        Assert.False(cache.CurrentPage.IsPfMemalloc);
        Assert.Equal(FragKit.FreshRefCount, cache.CurrentPage.RefCount);
        Assert.Equal(FragKit.RefBias, cache.Bias);
        Assert.Equal(1, cache.PagesAllocated);
        Assert.Equal(0, cache.PagesReused);
        Assert.Equal(12, cache.Offset);
        Assert.Equal(1, allocator.GetStats().Allocations - allocationsBefore);
        Assert.Equal(8, allocator.PagesInUse);

        Assert.Equal(0, a.PageOffset);
        Assert.Equal(12, a.Length);
        Assert.Equal(12, a.TrueSize);
        Assert.Equal(cache.CurrentPage, a.Page);
        Assert.Equal(cache.CurrentPage.Address, a.Address);

        a.Free();
        Assert.Equal(FragKit.RefBias, cache.CurrentPage.RefCount);
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void An_over_page_request_grows_the_allocator_when_no_order3_block_is_free()
    {
        // One 64 KiB arena, no limit: fill it with order-0 pages and give one back, so that the only free memory is a
        // single 4 KiB page. The opportunistic order-3 try cannot grow; the order-0 fallback could not hold 8 KiB.
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 64 * 1024);
        var held = new List<Page>();
        for (int i = 0; i < 16; i++)
        {
            Assert.True(allocator.TryAllocPages(0, AllocFlags.None, out Page p));
            held.Add(p);
        }

        Assert.Equal(1, allocator.GetStats().Arenas);
        allocator.FreePages(held[^1]);
        held.RemoveAt(held.Count - 1);

        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(8192, out PageFragment big));
        Assert.Equal(3, big.Page.Order);
        Assert.Equal(2, allocator.GetStats().Arenas);
        FragKit.Fill(big, 3);
        Assert.True(FragKit.IsIntact(big, 3));

        // A small request after it still fits the order-3 page.
        Assert.True(cache.TryAlloc(100, out PageFragment small));
        Assert.Equal(big.Page.Address, small.Page.Address);
        PageFragCache.Free(big);
        PageFragCache.Free(small);
        cache.Dispose();
        foreach (Page p in held)
        {
            allocator.FreePages(p);
        }

        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_new_allocator_gives_the_first_refill_an_order3_page()
    {
        // The allocator creates its first arena up front, so the opportunistic order-3 try (which never grows
        // arenas) finds memory at once, as the kernel's does on a machine with free memory.
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 64 * 1024);
        var cache = new PageFragCache(allocator);

        Assert.True(cache.TryAlloc(PageConstants.PageSize, out PageFragment first));
        Assert.Equal(FragKit.BigPage, cache.CurrentPageSize);
        Assert.Equal(1, cache.PagesAllocated);
        Assert.Equal(1, allocator.GetStats().Arenas);

        first.Free();
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void Unaligned_fragments_are_packed_back_to_back_without_touching_the_page_refcount()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);

        Assert.True(cache.TryAlloc(12, out PageFragment a));
        Assert.True(cache.TryAlloc(12, out PageFragment b));
        Assert.True(cache.TryAlloc(12, out PageFragment c));

        Assert.Equal(new[] { 0, 12, 24 }, new[] { a.PageOffset, b.PageOffset, c.PageOffset });
        Assert.Equal(a.Address + 12, b.Address);
        Assert.Equal(a.Address + 24, c.Address);
        Assert.All(new[] { a, b, c }, f => Assert.Equal(12, f.TrueSize));
        Assert.Equal(36, cache.Offset);

        // Handing out fragments only spends the cache-local bias; the page's count moves on free.
        Assert.Equal(FragKit.FreshRefCount, cache.CurrentPage.RefCount);
        Assert.Equal(FragKit.RefBias - 2, cache.Bias);

        b.Free();
        Assert.Equal(FragKit.FreshRefCount - 1, cache.CurrentPage.RefCount);
        Assert.Equal(FragKit.RefBias - 2, cache.Bias);
        a.Free();
        c.Free();
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void An_aligned_allocation_skips_padding_and_counts_it_in_the_true_size()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);

        Assert.True(cache.TryAlloc(12, out PageFragment a));
        Assert.True(cache.TryAlloc(100, 64, out PageFragment b));
        Assert.Equal(64, b.PageOffset);
        Assert.Equal(100, b.Length);
        Assert.Equal(64 - 12 + 100, b.TrueSize);
        Assert.Equal(0, b.Address % 64);
        Assert.Equal(164, cache.Offset);

        Assert.True(cache.TryAlloc(10, PageConstants.PageSize, out PageFragment c));
        Assert.Equal(4096, c.PageOffset);
        Assert.Equal(4096 - 164 + 10, c.TrueSize);
        Assert.Equal(0, c.Address % PageConstants.PageSize);

        // Already aligned: no padding. Alignment 1 is the unaligned allocation.
        Assert.True(cache.TryAlloc(16, 2, out PageFragment d));
        Assert.Equal(4106, d.PageOffset);
        Assert.Equal(16, d.TrueSize);
        Assert.True(cache.TryAlloc(3, 1, out PageFragment e));
        Assert.Equal(4122, e.PageOffset);

        // Every byte of the page is accounted to exactly one fragment's true size.
        Assert.Equal(cache.Offset, a.TrueSize + b.TrueSize + c.TrueSize + d.TrueSize + e.TrueSize);

        foreach (PageFragment f in new[] { a, b, c, d, e })
        {
            f.Free();
        }

        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void Random_sequences_of_sizes_and_alignments_give_aligned_disjoint_fragments_whose_true_sizes_add_up()
    {
        Gen<(int Size, int Alignment)> request = Gen.Select(Gen.Int[1, 6000], Gen.Int[0, 12], (size, shift) => (size, 1 << shift));
        request.Array[1, 60].Sample(requests =>
        {
            using PageAllocator allocator = FragKit.NewAllocator();
            var cache = new PageFragCache(allocator);
            var live = new List<(PageFragment Fragment, int Seed)>();
            long trueSizeOnPage = 0;
            Page page = default;
            for (int i = 0; i < requests.Length; i++)
            {
                (int size, int alignment) = requests[i];
                if (!cache.TryAlloc(size, alignment, out PageFragment f))
                {
                    // With unlimited memory only an over-page request on an order-0 page may fail.
                    Assert.True(size > PageConstants.PageSize, $"a {size} B request failed");
                    Assert.Equal(PageConstants.PageSize, cache.CurrentPageSize);
                    Assert.True(f.IsEmpty);
                    continue;
                }

                Assert.Equal(0, f.Address % alignment);
                Assert.Equal(size, f.Length);
                if (f.Page != page)
                {
                    // Fragments are all held, so a page is never reused in place here.
                    page = f.Page;
                    trueSizeOnPage = 0;
                }

                trueSizeOnPage += f.TrueSize;
                Assert.Equal(cache.Offset, trueSizeOnPage);
                Assert.Equal(cache.Offset, f.PageOffset + Math.Max(f.Length, 8));
                FragKit.Fill(f, i);
                live.Add((f, i));
            }

            // Had two fragments overlapped, the later fill would show in the earlier one.
            foreach ((PageFragment f, int seed) in live)
            {
                Assert.True(FragKit.IsIntact(f, seed), $"{f} was overwritten");
                f.Free();
            }

            FragKit.DrainAndAssertNoLeak(cache, allocator);
        }, iter: 60, threads: 1);
    }

    [Fact]
    public void A_fragment_freed_on_another_thread_drops_one_reference_on_the_page()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(100, out PageFragment a));
        Assert.True(cache.TryAlloc(100, out PageFragment b));
        Assert.True(cache.TryAlloc(100, out PageFragment c));
        Page page = cache.CurrentPage;

        RunOnOtherThread(() => a.Free());
        Assert.Equal(FragKit.FreshRefCount - 1, page.RefCount);
        RunOnOtherThread(() => PageFragCache.Free(b.Address));
        Assert.Equal(FragKit.FreshRefCount - 2, page.RefCount);
        nint address = c.Address;
        RunOnOtherThread(() =>
        {
            unsafe
            {
                PageFragCache.Free((void*)address);
            }
        });

        Assert.Equal(FragKit.FreshRefCount - 3, page.RefCount);
        Assert.Equal(FragKit.RefBias - 2, cache.Bias);
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void A_page_whose_fragments_are_all_freed_before_it_fills_is_reused_in_place()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        var fragments = new PageFragment[8];
        for (int i = 0; i < fragments.Length; i++)
        {
            Assert.True(cache.TryAlloc(PageConstants.PageSize, out fragments[i]));
            Assert.Equal(i * PageConstants.PageSize, fragments[i].PageOffset);
        }

        Page page = cache.CurrentPage;
        Assert.Equal(FragKit.BigPage, cache.Offset);
        foreach (PageFragment f in fragments)
        {
            f.Free();
        }

        long allocationsBefore = allocator.GetStats().Allocations;
        Assert.True(cache.TryAlloc(12, out PageFragment again));

        Assert.Equal(1, cache.PagesReused);
        Assert.Equal(1, cache.PagesAllocated);
        Assert.Equal(allocationsBefore, allocator.GetStats().Allocations);
        Assert.Equal(page, cache.CurrentPage);
        Assert.Equal(0, again.PageOffset);
        Assert.Equal(fragments[0].Address, again.Address);
        Assert.Equal(12, cache.Offset);
        Assert.Equal(FragKit.FreshRefCount, page.RefCount);
        Assert.Equal(FragKit.RefBias, cache.Bias);
        Assert.Equal(8, allocator.PagesInUse);

        again.Free();
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void A_full_page_with_a_fragment_still_out_is_left_to_that_fragment_and_a_new_page_is_taken()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        var fragments = new PageFragment[8];
        for (int i = 0; i < fragments.Length; i++)
        {
            Assert.True(cache.TryAlloc(PageConstants.PageSize, out fragments[i]));
        }

        Page oldPage = cache.CurrentPage;
        for (int i = 1; i < fragments.Length; i++)
        {
            fragments[i].Free();
        }

        Assert.True(cache.TryAlloc(12, out PageFragment next));

        Assert.Equal(0, cache.PagesReused);
        Assert.Equal(2, cache.PagesAllocated);
        Assert.NotEqual(oldPage, cache.CurrentPage);
        Assert.Equal(FragKit.BigPage, cache.CurrentPageSize);
        Assert.Equal(0, next.PageOffset);

        // The cache gave its unused bias back: only the held fragment's reference is left.
        Assert.Equal(1, oldPage.RefCount);
        Assert.Equal(16, allocator.PagesInUse);
        fragments[0].Free();
        Assert.Equal(8, allocator.PagesInUse);

        next.Free();
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void A_request_of_exactly_32768_bytes_fills_a_fresh_order3_page_and_the_next_one_refills()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);

        Assert.True(cache.TryAlloc(PageFragCache.MaxFragmentSize, out PageFragment whole));
        Assert.Equal(0, whole.PageOffset);
        Assert.Equal(FragKit.BigPage, cache.Offset);

        Assert.True(cache.TryAlloc(1, out PageFragment one));
        Assert.Equal(2, cache.PagesAllocated);
        Assert.NotEqual(whole.Page, one.Page);

        whole.Free();
        one.Free();
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void Without_order3_memory_the_cache_falls_back_to_order0_pages_with_the_same_bias()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var faults = new FaultInjection { FailOrderAtLeast = 3 };
        allocator.FaultInjection = faults;
        var cache = new PageFragCache(allocator);

        Assert.True(cache.TryAlloc(100, out PageFragment a));
        Assert.Equal(PageConstants.PageSize, cache.CurrentPageSize);
        Assert.Equal(0, cache.CurrentPage.Order);
        Assert.Equal(FragKit.FreshRefCount, cache.CurrentPage.RefCount);
        Assert.Equal(FragKit.RefBias, cache.Bias);
        Assert.Equal(1, faults.Injected);

        // A whole 4 KiB request does not fit behind the first fragment: a second order-0 page.
        Assert.True(cache.TryAlloc(PageConstants.PageSize, out PageFragment b));
        Assert.Equal(2, cache.PagesAllocated);
        Assert.Equal(0, b.PageOffset);
        Assert.Equal(2, allocator.PagesInUse);

        a.Free();
        b.Free();
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void An_over_page_request_on_an_order0_page_fails_and_keeps_the_page_as_it_was()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        allocator.FaultInjection = new FaultInjection { FailOrderAtLeast = 3 };
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(100, out PageFragment a));
        Page page = cache.CurrentPage;

        Assert.False(cache.TryAlloc(5000, out PageFragment big));
        Assert.True(big.IsEmpty);
        Assert.False(cache.TryAlloc(5000, 64, out _));
        Assert.False(cache.TryPrepare(5000, out PreparedFragment prepared));
        Assert.True(prepared.IsEmpty);

        Assert.Equal(page, cache.CurrentPage);
        Assert.Equal(100, cache.Offset);
        Assert.Equal(1, cache.PagesAllocated);
        Assert.Equal(FragKit.RefBias, cache.Bias);
        Assert.Equal(FragKit.FreshRefCount, page.RefCount);

        Assert.True(cache.TryAlloc(100, out PageFragment b));
        Assert.Equal(100, b.PageOffset);
        a.Free();
        b.Free();
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void An_over_page_request_on_an_empty_cache_with_only_order0_memory_fails_without_taking_a_page()
    {
        // The kernel would fall back to an order-0 page, keep it and fail; PageFrag asks for order 3 again (allowed
        // to grow) since an order-0 page cannot hold the request, and when that fails too it holds nothing.
        using PageAllocator allocator = FragKit.NewAllocator();
        allocator.FaultInjection = new FaultInjection { FailOrderAtLeast = 3 };
        var cache = new PageFragCache(allocator);

        Assert.False(cache.TryAlloc(5000, out PageFragment big));
        Assert.True(big.IsEmpty);
        Assert.Equal(0, cache.CurrentPageSize);
        Assert.Equal(0, cache.PagesAllocated);
        Assert.Equal(0, allocator.PagesInUse);

        Assert.True(cache.TryAlloc(4096, out PageFragment fits));
        Assert.Equal(PageConstants.PageSize, cache.CurrentPageSize);
        Assert.Equal(1, cache.PagesAllocated);
        fits.Free();
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void Over_page_requests_succeed_while_the_order3_page_has_room_and_refill_when_it_does_not()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        var held = new List<PageFragment>();
        for (int i = 0; i < 6; i++)
        {
            Assert.True(cache.TryAlloc(5000, out PageFragment f));
            Assert.Equal(i * 5000, f.PageOffset);
            held.Add(f);
        }

        Page first = cache.CurrentPage;
        Assert.Equal(30000, cache.Offset);

        // 30000 + 5000 > 32768: on an order-3 page the cache refills as for any request.
        Assert.True(cache.TryAlloc(5000, out PageFragment seventh));
        Assert.NotEqual(first, seventh.Page);
        Assert.Equal(0, seventh.PageOffset);
        Assert.Equal(FragKit.BigPage, cache.CurrentPageSize);
        Assert.Equal(2, cache.PagesAllocated);
        Assert.Equal(6, first.RefCount);
        held.Add(seventh);

        foreach (PageFragment f in held)
        {
            f.Free();
        }

        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void An_over_page_request_that_no_longer_fits_an_order3_page_reuses_it_in_place_when_everything_was_freed()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(30000, out PageFragment a));
        Page page = a.Page;
        a.Free();

        Assert.True(cache.TryAlloc(5000, out PageFragment b));
        Assert.Equal(page, b.Page);
        Assert.Equal(0, b.PageOffset);
        Assert.Equal(1, cache.PagesReused);

        b.Free();
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void A_reserve_cache_gets_pfmemalloc_pages_and_never_reuses_them_in_place()
    {
        // 16 pages, the top 4 reserved: once 12 pages are in use only MayUseReserve allocations succeed.
        using PageAllocator allocator = FragKit.NewAllocator(arenaSize: 64 * 1024, maxBytes: 64 * 1024, reserveBytes: 16 * 1024);
        Assert.True(allocator.TryAllocPages(3, AllocFlags.None, out Page big));
        Assert.True(allocator.TryAllocPages(2, AllocFlags.None, out Page medium));
        Assert.Equal(12, allocator.PagesInUse);

        var ordinary = new PageFragCache(allocator);
        Assert.False(ordinary.TryAlloc(100, out PageFragment refused));
        Assert.True(refused.IsEmpty);

        var cache = new PageFragCache(allocator, AllocFlags.MayUseReserve);
        Assert.True(cache.TryAlloc(1024, out PageFragment first));
        Assert.True(cache.CurrentPage.IsPfMemalloc);
        Assert.Equal(PageConstants.PageSize, cache.CurrentPageSize);
        Assert.Equal(1, allocator.GetStats().PfMemallocAllocations);

        var fragments = new List<PageFragment> { first };
        for (int i = 1; i < 4; i++)
        {
            Assert.True(cache.TryAlloc(1024, out PageFragment f));
            fragments.Add(f);
        }

        foreach (PageFragment f in fragments)
        {
            f.Free();
        }

        // Every fragment is free, which would reuse an ordinary page; a reserve page goes back instead.
        Assert.True(cache.TryAlloc(1024, out PageFragment next));
        Assert.Equal(0, cache.PagesReused);
        Assert.Equal(2, cache.PagesAllocated);
        Assert.True(cache.CurrentPage.IsPfMemalloc);
        Assert.Equal(2, allocator.GetStats().PfMemallocAllocations);
        Assert.Equal(13, allocator.PagesInUse);

        next.Free();
        cache.Drain();
        allocator.FreePages(big);
        allocator.FreePages(medium);
        FragKit.DrainAndAssertNoLeak(ordinary, allocator);
    }

    [Fact]
    public void An_ordinary_page_in_the_same_situation_is_reused_in_place()
    {
        // The control for the reserve test: the same sequence on an ordinary order-0 page.
        using PageAllocator allocator = FragKit.NewAllocator();
        allocator.FaultInjection = new FaultInjection { FailOrderAtLeast = 3 };
        var cache = new PageFragCache(allocator);
        var fragments = new List<PageFragment>();
        for (int i = 0; i < 4; i++)
        {
            Assert.True(cache.TryAlloc(1024, out PageFragment f));
            fragments.Add(f);
        }

        Assert.False(cache.CurrentPage.IsPfMemalloc);
        foreach (PageFragment f in fragments)
        {
            f.Free();
        }

        Assert.True(cache.TryAlloc(1024, out PageFragment next));
        Assert.Equal(1, cache.PagesReused);
        Assert.Equal(1, cache.PagesAllocated);
        next.Free();
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void Draining_an_idle_cache_returns_its_page_and_empties_it()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        cache.Drain();
        Assert.True(cache.TryAlloc(100, out PageFragment a));
        a.Free();

        cache.Drain();
        Assert.True(cache.CurrentPage.IsEmpty);
        Assert.Equal(0, cache.Offset);
        Assert.Equal(0, cache.Bias);
        Assert.Equal(0, allocator.PagesInUse);

        // A drained cache refills on demand.
        Assert.True(cache.TryAlloc(100, out PageFragment b));
        Assert.Equal(2, cache.PagesAllocated);
        b.Free();
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void Draining_with_a_fragment_out_leaves_the_page_to_that_fragment()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(100, out PageFragment a));
        Assert.True(cache.TryAlloc(100, out PageFragment b));
        Page page = cache.CurrentPage;
        a.Free();

        cache.Drain();
        Assert.Equal(1, page.RefCount);
        Assert.Equal(8, allocator.PagesInUse);

        b.Free();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void The_thread_cache_is_the_same_instance_on_one_thread_and_another_on_another_thread()
    {
        PageFragCache mine = PageFragCache.ForCurrentThread;
        Assert.Same(mine, PageFragCache.ForCurrentThread);
        Assert.Same(PageAllocator.Shared, mine.Allocator);

        PageFragCache? otherFirst = null;
        PageFragCache? otherSecond = null;
        RunOnOtherThread(() =>
        {
            otherFirst = PageFragCache.ForCurrentThread;
            otherSecond = PageFragCache.ForCurrentThread;
        });

        Assert.NotNull(otherFirst);
        Assert.Same(otherFirst, otherSecond);
        Assert.NotSame(mine, otherFirst);
    }

    [Fact]
    public void A_cache_created_without_an_allocator_takes_its_pages_from_the_shared_one()
    {
        // No allocation: page counts of the shared allocator belong to every test running in parallel.
        Assert.Same(PageAllocator.Shared, new PageFragCache().Allocator);
        Assert.Same(PageAllocator.Shared, new PageFragCache(null, AllocFlags.MayUseReserve).Allocator);
    }

    [Fact]
    public void Unknown_allocation_flags_are_rejected_when_the_cache_is_created()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        FragKit.Throws<ArgumentOutOfRangeException>(() => _ = new PageFragCache(allocator, (AllocFlags)4), "flags", "Unknown allocation flags");
        var cache = new PageFragCache(allocator, AllocFlags.Opportunistic | AllocFlags.MayUseReserve);
        FragKit.AssertStillWorks(cache);
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    internal static void RunOnOtherThread(Action action)
    {
        Exception? error = null;
        var thread = new Thread(() =>
        {
            try
            {
                action();
            }
            catch (Exception e)
            {
                error = e;
            }
        });
        thread.Start();
        Assert.True(thread.Join(TimeSpan.FromSeconds(30)), "the other thread did not finish");
        if (error is not null)
        {
            throw new InvalidOperationException("The other thread failed.", error);
        }
    }
}
