namespace PageFrag.Cli.Stress;

/// <summary>What <c>pagefrag stress</c> found.</summary>
internal sealed record StressResult
{
    public required StressOptions Options { get; init; }

    public int Seed { get; init; }

    public double ElapsedSeconds { get; init; }

    public required Counters Totals { get; init; }

    public long HighOrderWindows { get; init; }

    public long AllFailingWindows { get; init; }

    public long OneInFiveWindows { get; init; }

    public long ReserveOnlyWindows { get; init; }

    public long Recoveries { get; init; }

    public long Checkpoints { get; init; }

    public long Trims { get; init; }

    public int ViolationCount { get; init; }

    public IReadOnlyList<string> Violations { get; init; } = [];

    /// <summary>The final accounting, or null when the threads could not be stopped.</summary>
    public EndAccounting? End { get; init; }

    public bool Ok => ViolationCount == 0;
}

/// <summary>The allocator and pools once everything was freed and released.</summary>
/// <param name="PagesInUse">Pages still in use: leaked.</param>
/// <param name="Consistent">Whether in use + cached + free = total.</param>
/// <param name="ArenasAfterTrim">Arenas left after a trim (0 when nothing leaked).</param>
/// <param name="Pools">Pools created during the run.</param>
/// <param name="PoolsReleased">Pools that were released (every page back).</param>
/// <param name="PfMemallocPages">Pages the allocator served from its reserve.</param>
/// <param name="AllocatorFailures">Page allocations the allocator refused (limit, reserve, injected faults).</param>
internal sealed record EndAccounting(long PagesInUse, bool Consistent, int ArenasAfterTrim, int Pools, int PoolsReleased, long PfMemallocPages, long AllocatorFailures);
