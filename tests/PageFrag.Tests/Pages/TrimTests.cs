using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;
using static PageFrag.Tests.Pages.PageTestKit;

namespace PageFrag.Tests.Pages;

public class TrimTests
{
    [Fact]
    public void Trim_gives_back_fully_free_arenas_and_keeps_arenas_with_pages_in_use()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        Page first = Alloc(allocator, 4);
        Page second = Alloc(allocator, 4);
        second.Span.Fill(9);
        Assert.Equal(2, allocator.GetStats().Arenas);

        allocator.FreePages(first);
        Assert.Equal(1, allocator.Trim());
        PageAllocatorStats stats = allocator.GetStats();
        Assert.Equal(1, stats.Arenas);
        Assert.Equal(1, stats.ArenasTrimmed);
        Assert.Equal(16, stats.TotalPages);
        Assert.Equal([16], stats.PagesPerArena);
        Assert.True(stats.IsConsistent);

        // The surviving arena is untouched: its page still resolves and holds its bytes.
        Assert.True(PageAllocator.TryGetPage(second.Address + 100, out Page found));
        Assert.Equal(second, found);
        Assert.True(second.Span.IndexOfAnyExcept((byte)9) < 0);
        Assert.Equal(0, allocator.Trim());

        allocator.FreePages(second);
        Assert.Equal(1, allocator.Trim());
        stats = allocator.GetStats();
        Assert.Equal(0, stats.Arenas);
        Assert.Equal(2, stats.ArenasTrimmed);
        Assert.Equal(0, stats.TotalPages);
        AssertClean(allocator);
    }

    [Fact]
    public void Trim_first_drains_the_per_CPU_lists_so_parked_pages_do_not_pin_an_arena()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        allocator.FreePages(Alloc(allocator, 0));
        Assert.Equal(16, allocator.GetStats().CachedPages);

        Assert.Equal(1, allocator.Trim());
        PageAllocatorStats stats = allocator.GetStats();
        Assert.Equal(0, stats.Arenas);
        Assert.Equal(0, stats.CachedPages);
        AssertClean(allocator);
    }

    [Fact]
    public void One_page_in_use_keeps_its_arena_and_the_parked_rest_returns_to_the_buddy_lists()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        Page page = Alloc(allocator, 0);
        Assert.Equal(0, allocator.Trim());
        PageAllocatorStats stats = allocator.GetStats();
        Assert.Equal(1, stats.Arenas);
        Assert.Equal(0, stats.ArenasTrimmed);
        Assert.Equal(0, stats.CachedPages);
        Assert.Equal(15, stats.FreePages);
        allocator.FreePages(page);
        AssertClean(allocator);
    }

    [Fact]
    public void The_allocator_grows_again_after_a_trim()
    {
        using PageAllocator allocator = OneArena();
        Assert.Equal(0, allocator.Trim());
        allocator.FreePages(Alloc(allocator, 2));
        Assert.Equal(1, allocator.Trim());

        // The limit counts arenas held now, not arenas ever created.
        Page page = Alloc(allocator, 4);
        Assert.Equal(1, allocator.GetStats().Arenas);
        AssertAllocFails(allocator, 0);
        allocator.FreePages(page);
        AssertClean(allocator);
        Assert.Equal(1, allocator.GetStats().ArenasTrimmed);
    }

    [Fact]
    public void An_idle_trim_keeps_an_arena_that_served_a_block_since_the_previous_trim_and_releases_it_after_an_idle_interval()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        allocator.FreePages(Alloc(allocator, 4));
        Assert.Equal(1, allocator.GetStats().Arenas);

        // Free, but used during this interval: kept, and marked.
        Assert.Equal(0, allocator.Trim(idleOnly: true));
        Assert.Equal(1, allocator.GetStats().Arenas);
        Assert.Equal(0, allocator.GetStats().ArenasTrimmed);

        // Nothing taken from it for a whole interval: released.
        Assert.Equal(1, allocator.Trim(idleOnly: true));
        PageAllocatorStats stats = allocator.GetStats();
        Assert.Equal(0, stats.Arenas);
        Assert.Equal(1, stats.ArenasTrimmed);
        AssertClean(allocator);
    }

    [Fact]
    public void An_arena_used_and_freed_again_between_two_idle_trims_is_kept_and_no_new_arena_is_needed()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        Page held = Alloc(allocator, 4);
        Page burst = Alloc(allocator, 4);
        allocator.FreePages(burst);
        Assert.Equal(2, allocator.GetStats().Arenas);
        Assert.Equal(0, allocator.Trim(idleOnly: true));

        // A lull at the tick, a burst between ticks: the second arena is free at every tick but never idle.
        for (int tick = 0; tick < 3; tick++)
        {
            burst = Alloc(allocator, 4);
            allocator.FreePages(burst);
            Assert.Equal(0, allocator.Trim(idleOnly: true));
            Assert.Equal(2, allocator.GetStats().Arenas);
        }

        Assert.Equal(0, allocator.GetStats().ArenasTrimmed);

        // The arena with a page in use is never released; the idle one goes after one quiet interval.
        Assert.Equal(1, allocator.Trim(idleOnly: true));
        Assert.Equal(1, allocator.GetStats().Arenas);
        Assert.True(PageAllocator.TryGetPage(held.Address, out Page found));
        Assert.Equal(held, found);

        // Its page was taken before the previous trim and nothing since: free now, it goes at this one.
        allocator.FreePages(held);
        Assert.Equal(1, allocator.Trim(idleOnly: true));
        Assert.Equal(2, allocator.GetStats().ArenasTrimmed);
        AssertClean(allocator);
    }

    [Fact]
    public void A_full_trim_releases_a_free_arena_at_once_even_if_it_was_just_used()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        allocator.FreePages(Alloc(allocator, 0));
        Assert.Equal(0, allocator.Trim(idleOnly: true));
        allocator.FreePages(Alloc(allocator, 0));
        Assert.Equal(1, allocator.Trim(idleOnly: false));
        Assert.Equal(0, allocator.GetStats().Arenas);
        AssertClean(allocator);
    }
}
