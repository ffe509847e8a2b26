using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;
using static PageFrag.Tests.Pages.PageTestKit;

namespace PageFrag.Tests.Pages;

public class LimitAndReserveTests
{
    [Fact]
    public void MaxBytes_caps_the_arenas_and_a_failed_allocation_changes_nothing_but_the_failure_count()
    {
        using PageAllocator allocator = Leaks.NewAllocator(SmallArena, maxBytes: 2 * SmallArena);
        Page first = Alloc(allocator, 4);
        Page second = Alloc(allocator, 4);
        PageAllocatorStats before = allocator.GetStats();
        Assert.Equal(2, before.Arenas);
        Assert.Equal(32, before.MaxPages);

        for (int order = 0; order <= 4; order++)
        {
            Assert.False(allocator.TryAllocPages(order, AllocFlags.None, out Page failed));
            Assert.True(failed.IsEmpty);
            Assert.Equal(default, failed);
        }

        AssertUnchanged(before, allocator.GetStats(), addedFailures: 5);

        // The memory comes back with the frees.
        allocator.FreePages(first);
        Page again = Alloc(allocator, 4);
        Assert.Equal(2, allocator.GetStats().Arenas);
        allocator.FreePages(again);
        allocator.FreePages(second);
        AssertClean(allocator);
    }

    [Fact]
    public void The_limit_counts_pages_in_use_so_order_0_fails_exactly_at_the_last_page()
    {
        using PageAllocator allocator = OneArena();
        var pages = new List<Page>();
        for (int i = 0; i < 16; i++)
        {
            pages.Add(Alloc(allocator, 0));
        }

        PageAllocatorStats before = allocator.GetStats();
        AssertAllocFails(allocator, 0);
        AssertUnchanged(before, allocator.GetStats(), addedFailures: 1);

        allocator.FreePages(pages[7]);
        pages[7] = Alloc(allocator, 0);
        AssertAllocFails(allocator, 0);

        foreach (Page page in pages)
        {
            allocator.FreePages(page);
        }

        AssertClean(allocator);
        Assert.Equal(2, allocator.GetStats().Failures);
    }

    [Fact]
    public void MaxBytes_is_rounded_down_to_whole_arenas()
    {
        using PageAllocator allocator = Leaks.NewAllocator(SmallArena, maxBytes: (2 * SmallArena) + 4096);
        Assert.Equal(32, allocator.GetStats().MaxPages);
        Page a = Alloc(allocator, 4);
        Page b = Alloc(allocator, 4);
        AssertAllocFails(allocator, 0);
        allocator.FreePages(a);
        allocator.FreePages(b);
        AssertClean(allocator);
    }

    [Fact]
    public void Ordinary_allocations_stop_at_the_reserve_watermark_and_MayUseReserve_ones_continue_with_pfmemalloc_pages()
    {
        using PageAllocator allocator = OneArena(reserveBytes: 4 * 4096);
        PageAllocatorStats stats = allocator.GetStats();
        Assert.Equal(16, stats.MaxPages);
        Assert.Equal(4, stats.ReservePages);

        var pages = new List<Page>();
        for (int i = 0; i < 12; i++)
        {
            Page page = Alloc(allocator, 0);
            Assert.False(page.IsPfMemalloc);
            pages.Add(page);
        }

        AssertAllocFails(allocator, 0);
        AssertAllocFails(allocator, 0, AllocFlags.Opportunistic);
        AssertAllocFails(allocator, 0, AllocFlags.Opportunistic | AllocFlags.MayUseReserve);

        for (int i = 0; i < 4; i++)
        {
            Page page = Alloc(allocator, 0, AllocFlags.MayUseReserve);
            Assert.True(page.IsPfMemalloc);
            pages.Add(page);
        }

        AssertAllocFails(allocator, 0, AllocFlags.MayUseReserve);
        stats = allocator.GetStats();
        Assert.Equal(16, stats.PagesInUse);
        Assert.Equal(4, stats.PfMemallocAllocations);
        Assert.Equal(16, stats.Allocations);
        Assert.Equal(4, stats.Failures);

        foreach (Page page in pages)
        {
            allocator.FreePages(page);
        }

        // Once the reserve is no longer needed, the same pages come back without the mark.
        for (int i = 0; i < 12; i++)
        {
            Page page = Alloc(allocator, 0, i % 2 == 0 ? AllocFlags.None : AllocFlags.MayUseReserve);
            Assert.False(page.IsPfMemalloc);
            pages[i] = page;
        }

        foreach (Page page in pages.Take(12))
        {
            allocator.FreePages(page);
        }

        AssertClean(allocator);
    }

    [Fact]
    public void A_MayUseReserve_block_is_marked_when_it_ends_above_the_watermark()
    {
        using PageAllocator allocator = OneArena(reserveBytes: 4 * 4096);
        Page low = Alloc(allocator, 3);
        Page middle = Alloc(allocator, 1);
        Assert.False(low.IsPfMemalloc);
        Assert.False(middle.IsPfMemalloc);

        // 10 pages in use, watermark 12: an order-2 block needs pages 11-14, two of them from the reserve.
        AssertAllocFails(allocator, 2);
        Page high = Alloc(allocator, 2, AllocFlags.MayUseReserve);
        Assert.True(high.IsPfMemalloc);
        Assert.False(low.IsPfMemalloc);

        allocator.FreePages(low);
        allocator.FreePages(middle);
        allocator.FreePages(high);
        AssertClean(allocator);
        Assert.Equal(1, allocator.GetStats().PfMemallocAllocations);
    }

    [Fact]
    public void ReserveBytes_has_no_effect_without_a_limit()
    {
        using var allocator = new PageAllocator(new PageAllocatorOptions { ArenaSize = SmallArena, ReserveBytes = 8 * 4096 });
        PageAllocatorStats stats = allocator.GetStats();
        Assert.Equal(-1, stats.MaxPages);
        Assert.Equal(0, stats.ReservePages);
        Page page = Alloc(allocator, 4, AllocFlags.MayUseReserve);
        Assert.False(page.IsPfMemalloc);
        allocator.FreePages(page);
        AssertClean(allocator);
    }

    [Fact]
    public void An_opportunistic_allocation_on_a_fresh_allocator_creates_only_the_first_arena()
    {
        // An allocator without arenas is memory that has not been set up yet, not memory pressure: the
        // fragment cache's first order-3 attempt must find a page, so the first arena may come from it.
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 64 * 1024);
        Page first = Alloc(allocator, 4, AllocFlags.Opportunistic);
        Assert.Equal(1, allocator.GetStats().Arenas);

        // The arena is full now; a second opportunistic attempt does not add another.
        AssertAllocFails(allocator, 0, AllocFlags.Opportunistic);
        Assert.Equal(1, allocator.GetStats().Arenas);

        allocator.FreePages(first);
        AssertClean(allocator);
    }

    [Fact]
    public void An_opportunistic_allocation_succeeds_from_an_existing_arena_with_room_and_fails_when_only_growth_would_help()
    {
        using PageAllocator allocator = Leaks.NewAllocator(128 * 1024);
        Page first = Alloc(allocator, 4);
        Page second = Alloc(allocator, 4, AllocFlags.Opportunistic);
        Assert.Equal(1, allocator.GetStats().Arenas);

        // No limit is set, yet the opportunistic attempt does not add an arena.
        AssertAllocFails(allocator, 4, AllocFlags.Opportunistic);
        Assert.Equal(1, allocator.GetStats().Arenas);
        Page third = Alloc(allocator, 4);
        Assert.Equal(2, allocator.GetStats().Arenas);

        // Order 0 from the buddy lists once the per-CPU lists were drained.
        allocator.DrainPerCpuLists();
        Page small = Alloc(allocator, 0, AllocFlags.Opportunistic);
        Assert.Equal(2, allocator.GetStats().Arenas);

        foreach (Page page in (Page[])[first, second, third, small])
        {
            allocator.FreePages(page);
        }

        AssertClean(allocator);
    }
}
