namespace PageFrag.Pages;

/// <summary>
/// A snapshot of a <see cref="PageAllocator"/>'s state. At a quiescent point
/// <c>PagesInUse + CachedPages + FreePages == TotalPages</c>.
/// </summary>
public sealed record PageAllocatorStats
{
    /// <summary>Arenas currently held.</summary>
    public int Arenas { get; init; }

    /// <summary>Pages in each arena, in arena order.</summary>
    public IReadOnlyList<int> PagesPerArena { get; init; } = [];

    /// <summary>Pages in all arenas.</summary>
    public long TotalPages { get; init; }

    /// <summary>Pages on the buddy free lists.</summary>
    public long FreePages { get; init; }

    /// <summary>Free pages parked on the per-CPU lists.</summary>
    public long CachedPages { get; init; }

    /// <summary>Pages handed out and not yet returned (including pages held by fragment caches and pools).</summary>
    public long PagesInUse { get; init; }

    /// <summary>Free blocks on the buddy lists, per order (index = order).</summary>
    public IReadOnlyList<int> FreeBlocksPerOrder { get; init; } = [];

    /// <summary>Successful block allocations since creation.</summary>
    public long Allocations { get; init; }

    /// <summary>Failed block allocations (limit, reserve, fragmentation, injected faults).</summary>
    public long Failures { get; init; }

    /// <summary>Allocations served from the emergency reserve.</summary>
    public long PfMemallocAllocations { get; init; }

    /// <summary>Arenas given back to the garbage collector by <see cref="PageAllocator.Trim(bool)"/>.</summary>
    public long ArenasTrimmed { get; init; }

    /// <summary>The effective page limit, or -1 without a limit.</summary>
    public long MaxPages { get; init; }

    /// <summary>Pages kept for <see cref="AllocFlags.MayUseReserve"/> allocations.</summary>
    public long ReservePages { get; init; }

    /// <summary>True when the pages add up: in use + cached + free = total.</summary>
    public bool IsConsistent => PagesInUse + CachedPages + FreePages == TotalPages;
}
