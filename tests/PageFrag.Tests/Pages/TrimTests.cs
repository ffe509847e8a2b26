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
}
