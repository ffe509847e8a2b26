namespace PageFrag.Cli.Stress;

/// <summary>The options of <c>pagefrag stress</c>.</summary>
/// <remarks>
/// Defaults: 10 seconds, 4 threads (half allocate, half free), a random seed, a private allocator limited to
/// 64 MiB with a 4 MiB reserve, a full accounting checkpoint every second, a 10-second watchdog.
/// </remarks>
internal sealed record StressOptions
{
    public const int MinThreads = 2;
    public const int MaxThreads = 256;
    public const double MaxSeconds = 7 * 24 * 3600;

    /// <summary>How long the mixed workload runs before the final accounting.</summary>
    public double Seconds { get; init; } = 10;

    /// <summary>Worker threads: <see cref="Owners"/> allocate (each owns a cache, a pool and a writer), the rest free.</summary>
    public int Threads { get; init; } = 4;

    /// <summary>Seeds each thread's random choices; null picks one (reported, so a run can be repeated).</summary>
    public int? Seed { get; init; }

    public bool Json { get; init; }

    /// <summary>The private allocator's limit (MaxBytes).</summary>
    public long MemoryLimit { get; init; } = 64L << 20;

    /// <summary>The top of the limit only reserve allocations may use (ReserveBytes).</summary>
    public long ReserveBytes { get; init; } = 4L << 20;

    /// <summary>How often every thread is paused for a full accounting of every page.</summary>
    public TimeSpan CheckpointInterval { get; init; } = TimeSpan.FromSeconds(1);

    /// <summary>How long a pause, a recovery or the final stop may take before the run fails.</summary>
    public TimeSpan Watchdog { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>Test hook: after this many cache allocations, the first owner overwrites the last byte of one
    /// fragment after stamping it (a simulated overlap), once. Negative: never.</summary>
    public long CorruptStampAfter { get; init; } = -1;

    /// <summary>Test hook: the first owner allocates one fragment and never frees it (a simulated leak).</summary>
    public bool LeakOneFragment { get; init; }

    public int Owners => Math.Max(1, Threads / 2);

    public int Freers => Threads - Owners;

    /// <summary>The reason these options cannot run, or null when they can.</summary>
    public string? Validate()
    {
        if (double.IsNaN(Seconds) || Seconds <= 0 || Seconds > MaxSeconds)
        {
            return $"--seconds must be positive and at most {MaxSeconds:0} (a week), got {Seconds}.";
        }

        if (Threads is < MinThreads or > MaxThreads)
        {
            return $"--threads must be from {MinThreads} (one allocating, one freeing) to {MaxThreads}, got {Threads}.";
        }

        if (MemoryLimit < 8L << 20)
        {
            return $"The memory limit must be at least 8 MiB, got {MemoryLimit}.";
        }

        if (ReserveBytes < 0 || ReserveBytes % 4096 != 0 || ReserveBytes >= MemoryLimit / 2)
        {
            return $"The reserve must be a multiple of 4096 below half the memory limit, got {ReserveBytes}.";
        }

        if (CheckpointInterval <= TimeSpan.Zero || Watchdog <= TimeSpan.Zero)
        {
            return "The checkpoint interval and the watchdog must be positive.";
        }

        return null;
    }
}
