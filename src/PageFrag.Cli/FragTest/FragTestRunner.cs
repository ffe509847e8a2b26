using System.Numerics;
using PageFrag.Frag;
using PageFrag.Pages;

namespace PageFrag.Cli.FragTest;

/// <summary>The figures of one allocator over all its runs.</summary>
internal sealed record AllocatorResult
{
    public required AllocatorKind Allocator { get; init; }
    public required string Mode { get; init; }
    public required int AllocLen { get; init; }
    public required long NrTest { get; init; }
    public required int Align { get; init; }
    public required bool Prepare { get; init; }
    public required int RingSize { get; init; }

    /// <summary>Median of <see cref="ElapsedRuns"/>.</summary>
    public double ElapsedSeconds { get; init; }
    public double[] ElapsedRuns { get; init; } = [];

    /// <summary>Million fragments pushed and freed per second, from the median time.</summary>
    public double Mops => ElapsedSeconds > 0 ? NrTest / ElapsedSeconds / 1e6 : 0;

    // Counters of the median run.
    public long Dropped { get; init; }

    /// <summary>Share of the median run the push thread spent waiting for room after a drop (0 to 1).</summary>
    public double PushWaitShare { get; init; }

    /// <summary>
    /// True when every drop of the median run came after a whole ring of pushes with no pop in between: the push and
    /// pop threads took turns instead of running at the same time (no two free cores), so the drop count is
    /// nr_test / ring size whatever the allocator.
    /// </summary>
    public bool ThreadsTookTurns { get; init; }

    public long FailedAllocs { get; init; }
    public int Gen0 { get; init; }
    public int Gen1 { get; init; }
    public int Gen2 { get; init; }

    /// <summary>Push loop + pop loop, of the run where they were largest, so that a single allocating run cannot hide.</summary>
    public long GcAllocatedBytes => GcAllocatedBytesPush + GcAllocatedBytesPop;
    public long GcAllocatedBytesPush { get; init; }
    public long GcAllocatedBytesPop { get; init; }

    // PageFrag only (null for the other allocators), of the median run.
    public long? PagesAllocated { get; init; }
    public long? PagesReused { get; init; }

    /// <summary>Pages still in use after the drain, summed over the runs (PageFrag only).</summary>
    public long? LeakedPages { get; init; }

    public string? Failure { get; init; }
    public bool UsageError { get; init; }
    public bool Ok => Failure is null;
}

/// <summary>Runs the protocol for each requested allocator, with a warm-up and repeated runs.</summary>
internal static class FragTestRunner
{
    // Enough for the loops to be compiled and the allocators' caches to be primed; a few milliseconds.
    private const long WarmUpCount = 100_000;

    public static IReadOnlyList<AllocatorResult> Run(TestOptions options, IRunMonitor monitor)
    {
        AllocatorKind[] kinds = options.Allocator == AllocatorKind.All
            ? [AllocatorKind.PageFrag, AllocatorKind.ArrayPool, AllocatorKind.Gc, AllocatorKind.Native]
            : [options.Allocator];
        var results = new List<AllocatorResult>(kinds.Length);
        foreach (AllocatorKind kind in kinds)
        {
            AllocatorResult result = RunAllocator(kind, options, monitor);
            results.Add(result);
            if (!result.Ok)
            {
                break;
            }
        }

        return results;
    }

    /// <summary>The mode a given allocator runs in: only PageFrag prepares; managed arrays cannot be aligned.</summary>
    public static (int Align, bool Prepare) EffectiveMode(AllocatorKind kind, TestOptions options) => kind switch
    {
        AllocatorKind.PageFrag => (options.Align, options.Prepare),
        AllocatorKind.Native => (options.Align, false),
        _ => (0, false),
    };

    public static string ModeName(int align, bool prepare) =>
        (prepare ? "prepare, " : "") + (align == 0 ? "non-aligned" : $"aligned {align}");

    private static AllocatorResult RunAllocator(AllocatorKind kind, TestOptions options, IRunMonitor monitor)
    {
        (int align, bool prepare) = EffectiveMode(kind, options);
        string mode = ModeName(align, prepare);
        string label = $"{TestOptions.AllocatorName(kind)} {mode}";
        var template = new AllocatorResult
        {
            Allocator = kind,
            Mode = mode,
            AllocLen = options.AllocLen,
            NrTest = options.NrTest,
            Align = align,
            Prepare = prepare,
            RingSize = options.RingSize,
        };

        if (options.WarmUp)
        {
            OneRun warm = RunOne(kind, options with { NrTest = Math.Min(options.NrTest, WarmUpCount) }, align, prepare, label, SilentMonitor.Instance);
            if (warm.Failure is not null)
            {
                return Failed(template, warm, $"warm-up: {warm.Failure}");
            }
        }

        var runs = new List<OneRun>(options.Runs);
        long leaked = 0;
        for (int i = 0; i < options.Runs; i++)
        {
            string runLabel = options.Runs == 1 ? label : $"{label} ({i + 1}/{options.Runs})";
            OneRun run = RunOne(kind, options, align, prepare, runLabel, monitor);
            leaked += run.Leaked ?? 0;
            if (run.Failure is not null)
            {
                return Failed(template, run, run.Failure);
            }

            runs.Add(run);
        }

        List<OneRun> byTime = [.. runs.OrderBy(r => r.Raw.ElapsedTicks)];
        OneRun median = byTime[(byTime.Count - 1) / 2];
        double medianSeconds = byTime.Count % 2 == 1
            ? median.Raw.ElapsedSeconds
            : (median.Raw.ElapsedSeconds + byTime[byTime.Count / 2].Raw.ElapsedSeconds) / 2;

        return template with
        {
            ElapsedSeconds = medianSeconds,
            ElapsedRuns = [.. runs.Select(r => r.Raw.ElapsedSeconds)],
            Dropped = median.Raw.Dropped,
            PushWaitShare = WaitShare(median.Raw),
            ThreadsTookTurns = TookTurns(median.Raw.Pushed, median.Raw.Dropped, options.RingSize),
            FailedAllocs = median.Raw.FailedAllocs,
            Gen0 = median.Raw.Gen0,
            Gen1 = median.Raw.Gen1,
            Gen2 = median.Raw.Gen2,
            GcAllocatedBytesPush = runs.MaxBy(r => r.Raw.GcAllocatedBytes)!.Raw.ProducerGcBytes,
            GcAllocatedBytesPop = runs.MaxBy(r => r.Raw.GcAllocatedBytes)!.Raw.ConsumerGcBytes,
            PagesAllocated = median.PagesAllocated,
            PagesReused = median.PagesReused,
            LeakedPages = kind == AllocatorKind.PageFrag ? leaked : null,
        };
    }

    private static AllocatorResult Failed(AllocatorResult template, OneRun run, string failure) => template with
    {
        ElapsedSeconds = run.Raw.ElapsedSeconds,
        ElapsedRuns = [run.Raw.ElapsedSeconds],
        Dropped = run.Raw.Dropped,
        PushWaitShare = WaitShare(run.Raw),
        FailedAllocs = run.Raw.FailedAllocs,
        GcAllocatedBytesPush = run.Raw.ProducerGcBytes,
        GcAllocatedBytesPop = run.Raw.ConsumerGcBytes,
        PagesAllocated = run.PagesAllocated,
        PagesReused = run.PagesReused,
        LeakedPages = run.Leaked,
        Failure = failure,
        UsageError = run.Raw.UsageError,
    };

    /// <summary>The push thread's waiting time over the run's time, capped at 1 (the run's clock stops at the last free).</summary>
    internal static double WaitShare(RawRun raw) =>
        raw.ElapsedTicks <= 0 ? 0 : Math.Min(1.0, (double)raw.PushWaitTicks / raw.ElapsedTicks);

    /// <summary>
    /// Did the threads take turns? When they do, the consumer drains the whole ring while the producer is off the
    /// CPU, and the producer then fills exactly one ring before its next drop: the drops are nr_test / ring size to
    /// within one. Threads that run together refill after waiting for half the ring, with pops during the refill, so
    /// the pushes per drop vary (about half a ring with a much faster producer) and the count does not land on it.
    /// </summary>
    internal static bool TookTurns(long pushed, long dropped, int ringSize) =>
        dropped >= 8 && Math.Abs(dropped - pushed / ringSize) <= 1;

    private static OneRun RunOne(AllocatorKind kind, TestOptions options, int align, bool prepare, string label, IRunMonitor monitor)
    {
        var settings = new ProtocolSettings(options.NrTest, options.RingSize, options.PushCpu, options.PopCpu, options.Watchdog, label);
        int len = options.AllocLen;
        return kind switch
        {
            AllocatorKind.PageFrag => RunPageFrag(options, align, prepare, settings, monitor),
            AllocatorKind.ArrayPool => new OneRun(Protocol.Run<byte[], ArrayPoolSource>(new(len), new(len), settings, monitor)),
            AllocatorKind.Gc => new OneRun(Protocol.Run<byte[], GcSource>(new(len), new(len), settings, monitor)),
            AllocatorKind.Native => new OneRun(Protocol.Run<nint, NativeSource>(new(len, align), new(len, align), settings, monitor)),
            _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, "Not a single allocator."),
        };
    }

    private static OneRun RunPageFrag(TestOptions options, int align, bool prepare, ProtocolSettings settings, IRunMonitor monitor)
    {
        // A private allocator per run: its page counts are this run's alone, and a leak cannot hide.
        using var allocator = new PageAllocator(AllocatorOptions(options));
        // Grow the allocator's first arena now: creating it (a 4 MiB pinned array) is set-up, not the
        // per-fragment work being measured, and would otherwise show up as GC bytes in the push loop.
        if (allocator.TryAllocPages(PageConstants.FragCacheMaxOrder, AllocFlags.None, out Page first))
        {
            allocator.FreePages(first);
        }

        var cache = new PageFragCache(allocator);
        int len = options.AllocLen;
        RawRun raw;
        if (prepare)
        {
            var source = new PreparePageFragSource(cache, len, Math.Max(align, 1));
            raw = Protocol.Run<nint, PreparePageFragSource>(source, source, settings, monitor);
        }
        else if (align != 0)
        {
            var source = new AlignedPageFragSource(cache, len, align);
            raw = Protocol.Run<nint, AlignedPageFragSource>(source, source, settings, monitor);
        }
        else
        {
            var source = new PageFragSource(cache, len);
            raw = Protocol.Run<nint, PageFragSource>(source, source, settings, monitor);
        }

        if (!raw.ThreadsEnded)
        {
            // A thread is stuck inside the cache: it still owns it, so neither drain nor count.
            return new OneRun(raw, cache.PagesAllocated, cache.PagesReused, null);
        }

        // Both threads are gone, so the cache's owner is now this thread (the kernel's page_frag_cache_drain
        // at module exit). With every fragment freed, no page may stay in use.
        cache.Drain();
        long leaked = allocator.PagesInUse;
        if (leaked != 0 && raw.Failure is null)
        {
            raw = raw with { Failure = $"{leaked} page(s) leaked: the allocator still has pages in use after every fragment was freed and the cache drained." };
        }

        return new OneRun(raw, cache.PagesAllocated, cache.PagesReused, leaked);
    }

    private static PageAllocatorOptions AllocatorOptions(TestOptions options)
    {
        FaultInjection? faults = options.FailEvery > 0 ? new FaultInjection { FailEveryNth = options.FailEvery } : null;
        if (options.MemoryLimit == 0)
        {
            return new PageAllocatorOptions { FaultInjection = faults };
        }

        // The allocator counts whole arenas against its limit, so the arena must not be bigger than the limit.
        int arenaSize = (int)Math.Min(PageAllocatorOptions.DefaultArenaSize, 1L << BitOperations.Log2((ulong)options.MemoryLimit));
        return new PageAllocatorOptions
        {
            ArenaSize = arenaSize,
            MaxBytes = options.MemoryLimit,
            FaultInjection = faults,
        };
    }

    private sealed record OneRun(RawRun Raw, long? PagesAllocated = null, long? PagesReused = null, long? Leaked = null)
    {
        public string? Failure => Raw.Failure;
    }
}
