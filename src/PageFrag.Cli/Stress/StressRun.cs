using System.Diagnostics;
using PageFrag.Buffers;
using PageFrag.Frag;
using PageFrag.Pages;
using PageFrag.Pool;

namespace PageFrag.Cli.Stress;

/// <summary>
/// One run of <c>pagefrag stress</c>: starts the owner and freer threads over one private allocator, opens fault
/// windows and trims while they work, checks running invariants, pauses everything at each checkpoint for a full
/// accounting of every page, and at the end stops, frees and releases everything and checks that every page came
/// back.
/// </summary>
/// <remarks>
/// <para><b>Checkpoints.</b> The coordinator raises <see cref="PauseRequested"/>. Each owner hands off what it holds
/// and waits; each freer, once every owner waits, empties the queues, returns its rentals and waits. With every
/// buffer back, the pages in use must be exactly the caches' current pages plus the pools' pages in flight, each
/// cache's page count must equal its bias, and each pool's pages in flight must be its cache, ring and fragment
/// page. Then the coordinator bumps the epoch and everyone goes on.</para>
/// <para><b>Fault windows</b> (one at a time, closed before a checkpoint): orders above 0 failing, every
/// allocation failing, one in five failing, and the allocator filled up to its reserve so that only reserve
/// allocations succeed. After each window some allocation must succeed again within the watchdog time.</para>
/// </remarks>
internal sealed class StressRun
{
    private readonly List<OwnerWorker> _owners = [];
    private readonly List<FreerWorker> _freers = [];
    private readonly Violations _violations = new();
    private readonly List<Page> _hog = [];
    private readonly long _maxPages;
    private volatile bool _pauseRequested;
    private volatile bool _stopRequested;
    private volatile bool _aborted;
    private int _ownersPaused;
    private int _freersPaused;
    private int _ownersDone;
    private int _epoch;

    private FaultKind? _window;
    private long _recoveryBaseline;
    private long _recoveryDeadline;
    private bool _awaitingRecovery;
    private readonly long[] _windows = new long[4];
    private long _recoveries;
    private long _checkpoints;
    private long _trims;

    public StressRun(StressOptions options, int seed)
    {
        Options = options;
        Seed = seed;
        Allocator = new PageAllocator(new PageAllocatorOptions { MaxBytes = options.MemoryLimit, ReserveBytes = options.ReserveBytes });
        _maxPages = Allocator.GetStats().MaxPages;
        MemoryPool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = Allocator, Name = "stress" });
        for (int i = 0; i < options.Owners; i++)
        {
            _owners.Add(new OwnerWorker(this, i, unchecked((seed * 1_000_003) + i)));
        }

        for (int i = 0; i < options.Freers; i++)
        {
            _freers.Add(new FreerWorker(this, i, unchecked((seed * 1_000_003) + 500 + i)));
        }

        Queues = [.. _owners.Select(o => o.Queue)];
    }

    /// <summary>What a fault window does.</summary>
    private enum FaultKind
    {
        HighOrderFailing,
        EveryAllocationFailing,
        OneInFiveFailing,
        OnlyReserveLeft,
    }

    public StressOptions Options { get; }

    public int Seed { get; }

    public PageAllocator Allocator { get; }

    public PageFragMemoryPool MemoryPool { get; }

    public HandoffQueue[] Queues { get; }

    public bool PauseRequested => _pauseRequested && !_aborted;

    public bool StopRequested => _stopRequested;

    public bool Aborted => _aborted;

    public bool AllOwnersPaused => Volatile.Read(ref _ownersPaused) == _owners.Count;

    public bool AllOwnersDone => Volatile.Read(ref _ownersDone) == _owners.Count;

    public bool QueuesEmpty => Queues.All(q => q.Count == 0);

    // ------------------------------------------------------------------ used by the workers

    public void Violation(string message) => _violations.Report(message);

    /// <summary>Something broke that the run cannot go on with: report it and stop.</summary>
    public void Fail(string message)
    {
        _violations.Report(message);
        _aborted = true;
        _stopRequested = true;
    }

    public void OwnerPause() => Pause(ref _ownersPaused);

    public void FreerPause() => Pause(ref _freersPaused);

    public void OwnerDone() => Interlocked.Increment(ref _ownersDone);

    /// <summary>Checks an item's stamp and frees it on the calling thread.</summary>
    public void Release(in Item item, Counters counters, bool onOwner)
    {
        string who = onOwner ? "an owner" : "a freer";
        try
        {
            switch (item.Kind)
            {
                case ItemKind.Fragment:
                {
                    PageFragment f = item.Fragment;
                    CheckStamp(Stamp.Check(f.Span, item.Id), item, who);
                    if ((item.Id & 1) == 0)
                    {
                        f.Free();
                    }
                    else
                    {
                        PageFragCache.Free(f.Address);
                    }

                    break;
                }

                case ItemKind.PoolBuffer:
                {
                    PagePoolBuffer b = item.Buffer;
                    CheckStamp(Stamp.Check(b.Span, item.Id), item, who);
                    if ((item.Id & 1) == 0)
                    {
                        b.Free();
                    }
                    else
                    {
                        b.NetMem.Pool!.PutBuffer(b, allowDirect: true);
                    }

                    break;
                }

                case ItemKind.PoolPage:
                {
                    NetMem page = item.Page;
                    CheckStamp(Stamp.Check(page.Span, item.Id), item, who);
                    if ((item.Id & 1) == 0)
                    {
                        item.Pool!.PutFullPage(page, allowDirect: true);
                    }
                    else
                    {
                        item.Pool!.PutPage(page, 0, allowDirect: false);
                    }

                    break;
                }

                default:
                {
                    FragmentChain chain = item.Chain!;
                    if (chain.Length != item.Length)
                    {
                        Violation($"{who} found {item} holding {chain.Length} bytes");
                    }
                    else if (!Stamp.CheckPattern(chain.Sequence, item.Id, out long badAt))
                    {
                        Violation($"{who} found byte {badAt} of {item} overwritten: an overlap, a use after free or a segment out of place");
                    }

                    counters.WriterCoalescedSegments += chain.SegmentCount;
                    chain.Dispose();
                    break;
                }
            }
        }
        catch (Exception e) when (e is InvalidOperationException or ArgumentException)
        {
            Violation($"{who} could not free {item}: {e.GetType().Name}: {e.Message}");
        }
    }

    private void CheckStamp(bool intact, in Item item, string who)
    {
        if (!intact)
        {
            Violation($"{who} found {item} overwritten while it was out: an overlap or a use after free");
        }
    }

    private void Pause(ref int arrived)
    {
        // Read the epoch before arriving: the coordinator bumps it only once everyone has arrived.
        int epoch = Volatile.Read(ref _epoch);
        Interlocked.Increment(ref arrived);
        while (Volatile.Read(ref _epoch) == epoch && !_aborted)
        {
            Thread.Sleep(1);
        }
    }

    // ------------------------------------------------------------------ the coordinator

    /// <summary>Runs the workload for the configured time, then the final accounting.</summary>
    public StressResult Execute()
    {
        var threads = new List<Thread>();
        for (int i = 0; i < _owners.Count; i++)
        {
            threads.Add(new Thread(_owners[i].Run) { Name = $"stress owner {i}", IsBackground = true });
        }

        for (int i = 0; i < _freers.Count; i++)
        {
            threads.Add(new Thread(_freers[i].Run) { Name = $"stress freer {i}", IsBackground = true });
        }

        var random = new Random(Seed);
        long start = Stopwatch.GetTimestamp();
        long end = start + Ticks(TimeSpan.FromSeconds(Options.Seconds));
        long nextCheckpoint = start + Ticks(Options.CheckpointInterval);
        long nextWindow = start + Ticks(TimeSpan.FromMilliseconds(random.Next(100, 300)));
        long windowEnd = 0;
        long nextTrim = start + Ticks(TimeSpan.FromMilliseconds(250));
        foreach (Thread t in threads)
        {
            t.Start();
        }

        while (!_aborted)
        {
            long now = Stopwatch.GetTimestamp();
            if (now >= end)
            {
                break;
            }

            Thread.Sleep(5);
            RunningChecks();
            now = Stopwatch.GetTimestamp();
            if (_window is not null && now >= windowEnd)
            {
                EndWindow();
                nextWindow = now + Ticks(TimeSpan.FromMilliseconds(random.Next(100, 400)));
            }
            else if (_window is null && now >= nextWindow && now < end)
            {
                StartWindow((FaultKind)random.Next(4));
                windowEnd = now + Ticks(TimeSpan.FromMilliseconds(random.Next(30, 150)));
            }

            if (now >= nextTrim)
            {
                // Trims run beside the workload: arenas whose pages are all free go back, idle pool caches drain.
                Allocator.Trim();
                MemoryPool.Trim(idleOnly: true);
                _trims++;
                nextTrim = now + Ticks(TimeSpan.FromMilliseconds(250));
            }

            if (now >= nextCheckpoint && now < end)
            {
                EndWindow();
                Checkpoint();
                nextCheckpoint = Stopwatch.GetTimestamp() + Ticks(Options.CheckpointInterval);
            }

            CheckRecovery();
        }

        EndWindow();
        double elapsed = Stopwatch.GetElapsedTime(start).TotalSeconds;
        _stopRequested = true;
        long joinDeadline = Stopwatch.GetTimestamp() + Ticks(Options.Watchdog);
        bool stopped = threads.All(t => t.Join(TimeSpan.FromTicks(Math.Max(0, (joinDeadline - Stopwatch.GetTimestamp()) * TimeSpan.TicksPerSecond / Stopwatch.Frequency))));
        if (!stopped)
        {
            // The threads still hold the caches and pools: nothing can be released safely.
            Violation($"watchdog: the worker threads did not stop within {Options.Watchdog.TotalSeconds:0} s");
            return Result(elapsed, end: null);
        }

        return Result(elapsed, FinalAccounting());
    }

    private void RunningChecks()
    {
        long inUse = Allocator.PagesInUse;
        if (inUse < 0 || inUse > _maxPages)
        {
            Violation($"the allocator reports {inUse} pages in use, outside 0 to its limit of {_maxPages}");
        }

        foreach (OwnerWorker owner in _owners)
        {
            if (owner.Pool is PagePool pool)
            {
                // Released first: a count read later can only be higher.
                long released = pool.PagesReleased;
                long held = pool.PagesHeld;
                if (released > held)
                {
                    Violation($"pool {pool.Id} released {released} pages but took only {held}");
                }
            }
        }
    }

    private void StartWindow(FaultKind kind)
    {
        _window = kind;
        _windows[(int)kind]++;
        switch (kind)
        {
            case FaultKind.HighOrderFailing:
                Allocator.FaultInjection = new FaultInjection { FailOrderAtLeast = 1 };
                break;
            case FaultKind.EveryAllocationFailing:
                Allocator.FaultInjection = new FaultInjection { FailEveryNth = 1 };
                break;
            case FaultKind.OneInFiveFailing:
                Allocator.FaultInjection = new FaultInjection { FailEveryNth = 5 };
                break;
            default:
                // Take everything down to the reserve watermark: the limit is reached, only reserve allocations
                // (the first owner's reserve cache and pool) still succeed, with pfmemalloc pages.
                for (int order = PageConstants.FragCacheMaxOrder; order >= 0; order -= PageConstants.FragCacheMaxOrder)
                {
                    while (Allocator.TryAllocPages(order, AllocFlags.None, out Page page))
                    {
                        _hog.Add(page);
                    }
                }

                break;
        }
    }

    private void EndWindow()
    {
        if (_window is null)
        {
            return;
        }

        _window = null;
        Allocator.FaultInjection = null;
        foreach (Page page in _hog)
        {
            Allocator.FreePages(page);
        }

        _hog.Clear();
        _recoveryBaseline = TotalSuccesses();
        _recoveryDeadline = Stopwatch.GetTimestamp() + Ticks(Options.Watchdog);
        _awaitingRecovery = true;
    }

    private void CheckRecovery()
    {
        if (!_awaitingRecovery)
        {
            return;
        }

        if (TotalSuccesses() > _recoveryBaseline)
        {
            _recoveries++;
            _awaitingRecovery = false;
        }
        else if (Stopwatch.GetTimestamp() > _recoveryDeadline)
        {
            Violation($"no allocation succeeded within {Options.Watchdog.TotalSeconds:0} s after a fault window closed: no recovery");
            _awaitingRecovery = false;
        }
    }

    private long TotalSuccesses() =>
        _owners.Sum(o => Volatile.Read(ref o.Counters.AllocSuccesses)) + _freers.Sum(f => Volatile.Read(ref f.Counters.AllocSuccesses));

    /// <summary>Pauses every thread, accounts for every page, and lets them go on.</summary>
    private void Checkpoint()
    {
        _pauseRequested = true;
        long deadline = Stopwatch.GetTimestamp() + Ticks(Options.Watchdog);
        while (Volatile.Read(ref _ownersPaused) < _owners.Count || Volatile.Read(ref _freersPaused) < _freers.Count)
        {
            if (_aborted)
            {
                return;
            }

            if (Stopwatch.GetTimestamp() > deadline)
            {
                Fail($"watchdog: the threads did not reach checkpoint {_checkpoints + 1} within {Options.Watchdog.TotalSeconds:0} s " +
                    $"({Volatile.Read(ref _ownersPaused)} of {_owners.Count} owners, {Volatile.Read(ref _freersPaused)} of {_freers.Count} freers)");
                return;
            }

            Thread.Sleep(1);
        }

        _checkpoints++;
        MemoryPool.Trim();
        foreach (OwnerWorker owner in _owners)
        {
            foreach (PagePool retired in owner.Retired)
            {
                // What the release timer does: scrub pages a put pushed into the ring as the pool was destroyed.
                retired.RetryRelease();
            }

            // The writer keeps the fragments of its disposed chains for reuse; free them (the owner is paused, so
            // this thread holds the writer now) so that every page in use is a cache's or a pool's again.
            owner.Writer.ReleaseKept();
        }

        AccountQuiet($"checkpoint {_checkpoints}");

        _pauseRequested = false;
        Volatile.Write(ref _ownersPaused, 0);
        Volatile.Write(ref _freersPaused, 0);
        Interlocked.Increment(ref _epoch);
    }

    /// <summary>With every buffer back: every page in use must belong to a cache's current page or a pool.</summary>
    private void AccountQuiet(string when)
    {
        long expected = 0;
        foreach (OwnerWorker owner in _owners)
        {
            expected += owner.PagesHeldWhenQuiet();
            foreach (PageFragCache cache in owner.Caches)
            {
                if (cache.CurrentPageSize > 0 && cache.CurrentPage.RefCount != cache.Bias)
                {
                    Violation($"{when}: with every fragment back, a cache's page has {cache.CurrentPage.RefCount - cache.Bias} references beyond the cache's bias: a leaked or lost fragment");
                }
            }

            if (owner.Pool is PagePool pool)
            {
                long parts = pool.CachedPages + pool.RingPages + (pool.FragmentOffset > 0 ? 1 : 0);
                if (pool.InFlight != parts)
                {
                    Violation($"{when}: pool {pool.Id} counts {pool.InFlight} pages in flight with every buffer back, but holds {parts} (cache {pool.CachedPages}, ring {pool.RingPages}, fragment page)");
                }
            }

            foreach (PagePool retired in owner.Retired)
            {
                if (!retired.IsReleased || retired.InFlight != 0)
                {
                    Violation($"{when}: the retired pool {retired.Id} is not released ({retired.InFlight} pages in flight) with every buffer back");
                }
            }
        }

        PageAllocatorStats stats = Allocator.GetStats();
        if (!stats.IsConsistent)
        {
            Violation($"{when}: the allocator's pages do not add up: in use {stats.PagesInUse} + cached {stats.CachedPages} + free {stats.FreePages} != total {stats.TotalPages}");
        }

        if (stats.PagesInUse != expected)
        {
            Violation($"{when}: {stats.PagesInUse} pages in use, but the caches and pools account for {expected}: {stats.PagesInUse - expected} pages unaccounted for");
        }
    }

    private EndAccounting FinalAccounting()
    {
        // What a failed freer may have left behind is freed here, so that one failure is not also reported as leaks.
        var leftovers = new Counters();
        foreach (HandoffQueue queue in Queues)
        {
            while (queue.TryTake(out Item item))
            {
                Release(item, leftovers, onOwner: false);
            }
        }

        MemoryPool.Dispose();
        var pools = new List<PagePool>();
        foreach (OwnerWorker owner in _owners)
        {
            if (owner.Pool is PagePool pool)
            {
                pools.Add(pool);
            }

            pools.AddRange(owner.Retired);
        }

        foreach (PagePool pool in pools)
        {
            // Disposed by its owner on the way out, unless the owner failed; the owner's thread is gone either way.
            pool.Dispose();
        }

        long deadline = Stopwatch.GetTimestamp() + Ticks(Options.Watchdog);
        while (pools.Any(p => !p.IsReleased) && Stopwatch.GetTimestamp() < deadline)
        {
            foreach (PagePool pool in pools.Where(p => !p.IsReleased))
            {
                pool.RetryRelease();
            }

            Thread.Sleep(5);
        }

        int released = pools.Count(p => p.IsReleased);
        if (released != pools.Count)
        {
            Violation($"end: {pools.Count - released} of {pools.Count} pools were never released: " +
                string.Join(", ", pools.Where(p => !p.IsReleased).Select(p => $"pool {p.Id} with {p.InFlight} pages in flight")));
        }

        PageAllocatorStats stats = Allocator.GetStats();
        if (!stats.IsConsistent)
        {
            Violation($"end: the allocator's pages do not add up: in use {stats.PagesInUse} + cached {stats.CachedPages} + free {stats.FreePages} != total {stats.TotalPages}");
        }

        if (stats.PagesInUse != 0)
        {
            Violation($"end: {stats.PagesInUse} pages still in use after every buffer was freed and every cache, writer and pool released: a leak");
        }

        Allocator.Trim();
        int arenas = Allocator.GetStats().Arenas;
        if (arenas != 0 && stats.PagesInUse == 0)
        {
            Violation($"end: {arenas} arenas are left after a trim with no page in use");
        }

        var end = new EndAccounting(stats.PagesInUse, stats.IsConsistent, arenas, pools.Count, released, stats.PfMemallocAllocations, stats.Failures);
        Allocator.Dispose();
        return end;
    }

    private StressResult Result(double elapsed, EndAccounting? end)
    {
        var totals = new Counters();
        foreach (OwnerWorker owner in _owners)
        {
            totals.Add(owner.Counters);
        }

        foreach (FreerWorker freer in _freers)
        {
            totals.Add(freer.Counters);
        }

        return new StressResult
        {
            Options = Options,
            Seed = Seed,
            ElapsedSeconds = elapsed,
            Totals = totals,
            HighOrderWindows = _windows[(int)FaultKind.HighOrderFailing],
            AllFailingWindows = _windows[(int)FaultKind.EveryAllocationFailing],
            OneInFiveWindows = _windows[(int)FaultKind.OneInFiveFailing],
            ReserveOnlyWindows = _windows[(int)FaultKind.OnlyReserveLeft],
            Recoveries = _recoveries,
            Checkpoints = _checkpoints,
            Trims = _trims,
            ViolationCount = _violations.Count,
            Violations = _violations.Messages,
            End = end,
        };
    }

    private static long Ticks(TimeSpan span) => (long)(span.TotalSeconds * Stopwatch.Frequency);
}
