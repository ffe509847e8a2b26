using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;

namespace PageFrag.Tests.Pages;

/// <summary>Small helpers shared by the page allocator tests.</summary>
internal static class PageTestKit
{
    public const int SmallArena = 64 * 1024;

    /// <summary>
    /// An allocator that may hold exactly one arena. Tests that count arenas or free blocks use it: without a
    /// limit, a thread that migrates to another CPU between two calls finds that CPU's list empty and may
    /// grow a second arena instead of draining the first CPU's list, which is correct but not deterministic.
    /// </summary>
    public static PageAllocator OneArena(int arenaSize = SmallArena, long reserveBytes = 0, FaultInjection? faults = null) =>
        Leaks.NewAllocator(arenaSize, maxBytes: arenaSize, reserveBytes: reserveBytes, faults: faults);

    public static Page Alloc(PageAllocator allocator, int order, AllocFlags flags = AllocFlags.None)
    {
        Assert.True(allocator.TryAllocPages(order, flags, out Page page), $"an order-{order} allocation ({flags}) failed");
        Assert.False(page.IsEmpty);
        return page;
    }

    public static void AssertAllocFails(PageAllocator allocator, int order, AllocFlags flags = AllocFlags.None)
    {
        Assert.False(allocator.TryAllocPages(order, flags, out Page page), $"an order-{order} allocation ({flags}) succeeded");
        Assert.True(page.IsEmpty);
    }

    /// <summary>Drains the per-CPU lists, then checks that nothing leaked and every page is back on the buddy lists.</summary>
    public static void AssertClean(PageAllocator allocator)
    {
        allocator.DrainPerCpuLists();
        Leaks.AssertNone(allocator);
        PageAllocatorStats stats = allocator.GetStats();
        Assert.Equal(0, stats.CachedPages);
        Assert.Equal(stats.TotalPages, stats.FreePages);
    }

    /// <summary>
    /// Asserts that <paramref name="round"/> allocates nothing on the GC heap once warm.
    /// </summary>
    /// <remarks>
    /// The runtime itself allocates a few KiB on the calling thread while a method passes through its
    /// instrumented tier (tiered PGO; the suite passes every time with DOTNET_TieredPGO=0). That happens a
    /// bounded number of times, at moments the background tiering chooses, whereas an allocation in the code
    /// under test shows up in every round. So one clean round out of many is required, not every round.
    /// </remarks>
    public static void AssertSteadyStateAllocatesNothing(Action round, int maxRounds = 100) => ZeroAlloc.AssertSteadyState(round, maxRounds);

    public static int[] FreeBlocks(PageAllocator allocator) => [.. allocator.GetStats().FreeBlocksPerOrder];

    /// <summary>An array of <paramref name="length"/> zeros with <paramref name="count"/> at <paramref name="order"/>.</summary>
    public static int[] Blocks(int length, params (int Order, int Count)[] blocks)
    {
        var result = new int[length];
        foreach ((int order, int count) in blocks)
        {
            result[order] = count;
        }

        return result;
    }

    /// <summary>Asserts that a failed or rejected call changed nothing but the failure counter.</summary>
    public static void AssertUnchanged(PageAllocatorStats before, PageAllocatorStats after, long addedFailures = 0)
    {
        Assert.Equal(before.Arenas, after.Arenas);
        Assert.Equal(before.TotalPages, after.TotalPages);
        Assert.Equal(before.PagesInUse, after.PagesInUse);
        Assert.Equal(before.FreePages + before.CachedPages, after.FreePages + after.CachedPages);
        Assert.Equal(before.Allocations, after.Allocations);
        Assert.Equal(before.PfMemallocAllocations, after.PfMemallocAllocations);
        Assert.Equal(before.Failures + addedFailures, after.Failures);
        Assert.True(after.IsConsistent);
    }

    /// <summary>Writes <paramref name="stamp"/> at both ends of the block, so that an overlapping owner is noticed.</summary>
    public static void Stamp(Page page, long stamp)
    {
        Span<byte> span = page.Span;
        BitConverter.TryWriteBytes(span, stamp);
        BitConverter.TryWriteBytes(span[^8..], ~stamp);
    }

    public static bool HasStamp(Page page, long stamp)
    {
        Span<byte> span = page.Span;
        return BitConverter.ToInt64(span) == stamp && BitConverter.ToInt64(span[^8..]) == ~stamp;
    }
}
