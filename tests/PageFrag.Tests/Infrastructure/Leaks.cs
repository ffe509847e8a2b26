using PageFrag.Pages;

namespace PageFrag.Tests.Infrastructure;

/// <summary>Every test ends here: all pages accounted for, none leaked.</summary>
internal static class Leaks
{
    /// <summary>Asserts that no page is in use and that the allocator's pages add up.</summary>
    public static void AssertNone(PageAllocator allocator)
    {
        PageAllocatorStats stats = allocator.GetStats();
        Assert.True(stats.IsConsistent, $"pages do not add up: in use {stats.PagesInUse} + cached {stats.CachedPages} + free {stats.FreePages} != total {stats.TotalPages}");
        Assert.Equal(0, stats.PagesInUse);
    }

    /// <summary>A small private allocator for one test (64 KiB arenas unless said otherwise).</summary>
    public static PageAllocator NewAllocator(int arenaSize = 64 * 1024, long maxBytes = long.MaxValue, long reserveBytes = 0, FaultInjection? faults = null) =>
        new(new PageAllocatorOptions { ArenaSize = arenaSize, MaxBytes = maxBytes, ReserveBytes = reserveBytes, FaultInjection = faults });
}
