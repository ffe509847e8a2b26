using System.Diagnostics;

namespace PageFrag.Pool;

// Release (page_pool_destroy and its deferred retry). The pool cannot vanish while pages it handed out are
// still in flight: their descriptors point back at it, and their return must be accounted. So Dispose empties
// what the pool itself holds, and the pool lives on, "destroying", until the release count catches up with the
// hold count. Whoever returns the page that closes the gap frees the pool; a timer scrubs the ring (a put that
// raced with Dispose may have pushed a page there) and warns while the gap stays open.
internal sealed partial class PagePoolCore
{
    private readonly Lock _releaseLock = new();
    private readonly HashSet<NetMemArea> _knownAreas = [];
    private NetMemArea? _lastAdmittedArea;
    private long _nextRetry;
    private volatile bool _waiting;
    private long _destroyStart;
    private long _nextWarning;
    private bool _negativeWarned;

    // The public object users hold (see PagePool): weak, so that the pages' descriptors and the retry worker,
    // which point at this state, do not keep it reachable; strong only for provider pools (see the constructor).
    private readonly WeakReference<PagePool> _shellRef;
    private readonly PagePool? _shellForProvider;
    private readonly string? _creationStack;
    private volatile bool _reclaimedByGc;

    /// <summary>The public pool, or null once it was collected.</summary>
    internal PagePool? Shell => _shellForProvider ?? (_shellRef.TryGetTarget(out PagePool? shell) ? shell : null);

    /// <summary>The public pool handed to the provider's hooks (always alive for a provider pool).</summary>
    private PagePool ProviderShell => _shellForProvider!;

    /// <summary>
    /// The safety net (issue 12 item 2): the public pool became unreachable without <see cref="Dispose"/>. Runs
    /// on the finalizer thread. Nobody can allocate any more (allocation needs the public object); frees of
    /// buffers still held go on working, through the ring once the pool is destroyed, and their pages go back
    /// as they come. Gives back the cache, the ring and the current fragment page's bias, and reports it.
    /// </summary>
    internal void ReclaimUnreachable()
    {
        if (IsDisposed)
        {
            return;
        }

        // A buffer freed on the old owner thread while this runs may have passed the owner test just before
        // Dispose cleared it and land in the cache after the scrub: the retry worker scrubs the cache too for a
        // reclaimed pool (nobody else touches it any more).
        _reclaimedByGc = true;
        long before = Interlocked.Read(ref _releaseCount);
        Dispose();
        long pages = Interlocked.Read(ref _releaseCount) - before;
        PageFragEventSource.Log.LeakReclaimed("PagePool", pages, pages * _maxSize,
            _creationStack ?? "(creation stack recorded only when the allocator's DetectMisuse is on)");
    }

    /// <summary>
    /// Raised from the release timer while a disposed pool waits for pages in flight (every
    /// <see cref="PagePoolOptions.StallWarningInterval"/>), and once if the in-flight count goes negative
    /// (a bug: more pages returned than taken). Handlers run on a thread-pool thread; their exceptions are
    /// traced and swallowed so that a diagnostic cannot kill the release.
    /// </summary>
    public event EventHandler<PagePoolWarningEventArgs>? Warning;

    /// <summary>
    /// Destroys the pool (page_pool_destroy): stops direct recycling, gives up the current fragment page, returns
    /// every page of the cache and the ring to the allocator or provider. Pages still in flight keep the pool
    /// alive; each goes back to the allocator when it is put, and the last one frees the pool. Idempotent.
    /// </summary>
    /// <remarks>Call it on the owner thread, or once the owner thread has stopped using the pool: the cache has
    /// no lock.</remarks>
    public void Dispose()
    {
        if (Interlocked.CompareExchange(ref _state, StateDestroying, StateAlive) != StateAlive)
        {
            return;
        }

        // page_pool_disable_direct_recycling: from now on no thread is the owner.
        Volatile.Write(ref _owner, null);
        _destroyStart = Stopwatch.GetTimestamp();
        _nextWarning = _destroyStart + ToTicks(Options.StallWarningInterval);
        FreeFrag();
        long inflight;
        lock (_releaseLock)
        {
            // The lock makes this the ring's only consumer, against a concurrent RetryRelease.
            inflight = Scrub(includeCache: true);
        }

        if (inflight == 0)
        {
            FinishRelease();
        }
        else if (inflight > 0)
        {
            StartRetry();
        }
        else
        {
            WarnNegative(inflight);
        }
    }

    /// <summary>
    /// Runs one release attempt now (what the timer does): scrubs the ring and frees the pool if nothing is in
    /// flight. Returns the pages still in flight. For tests and for callers that want to drive the release.
    /// </summary>
    /// <exception cref="InvalidOperationException">The pool was not disposed.</exception>
    public long RetryRelease()
    {
        if (!IsDisposed)
        {
            ThrowHelper.InvalidOperation("The pool is alive: Dispose it before driving its release.");
        }

        lock (_releaseLock)
        {
            return RetryReleaseLocked();
        }
    }

    /// <summary>page_pool_scrub + page_pool_inflight.</summary>
    private long Scrub(bool includeCache)
    {
        if (includeCache)
        {
            NetMem[] cache = _cache;
            while (_cacheCount > 0)
            {
                int n = --_cacheCount;
                NetMem page = cache[n];
                cache[n] = default;
                ReturnPage(page);
            }
        }

        while (_ring.TryDequeue(out NetMem page))
        {
            ReturnPage(page);
        }

        return Volatile.Read(ref _holdCount) - Interlocked.Read(ref _releaseCount);
    }

    private long RetryReleaseLocked()
    {
        if (IsReleased)
        {
            return 0;
        }

        long inflight = Scrub(includeCache: _reclaimedByGc);
        if (inflight == 0)
        {
            FinishRelease();
            return 0;
        }

        if (inflight < 0)
        {
            WarnNegative(inflight);
            StopRetryTimer();
            return inflight;
        }

        long now = Stopwatch.GetTimestamp();
        if (now >= _nextWarning)
        {
            _nextWarning = now + ToTicks(Options.StallWarningInterval);
            TimeSpan elapsed = Stopwatch.GetElapsedTime(_destroyStart, now);
            string missing = DescribeMissing();
            PageFragEventSource.Log.PoolStalled(Id, inflight, elapsed.TotalSeconds, missing);
            Raise(new PagePoolWarningEventArgs(PagePoolWarningKind.StalledShutdown, Id, inflight, elapsed,
                $"stalled pool shutdown: id {Id}, {inflight} inflight {(long)elapsed.TotalSeconds} sec"));
        }

        return inflight;
    }

    private void StartRetry()
    {
        lock (_releaseLock)
        {
            if (IsReleased)
            {
                return;
            }

            _nextRetry = Stopwatch.GetTimestamp() + ToTicks(Options.ReleaseRetryPeriod);
            _waiting = true;
        }

        // Outside the pool's lock: the worker's lock is never taken while holding a pool's.
        PoolReleaseWorker.Add(this);
        if (IsReleased)
        {
            // The last page came back between the check and the registration.
            PoolReleaseWorker.Remove(this);
        }
    }

    /// <summary>Called by <see cref="PoolReleaseWorker"/> on each tick; retries once this pool's period passed.</summary>
    internal void OnRetryTick(long now)
    {
        if (IsReleased || !_waiting)
        {
            PoolReleaseWorker.Remove(this);
            return;
        }

        if (now < Volatile.Read(ref _nextRetry))
        {
            return;
        }

        // Skip a tick rather than queue behind a slow one.
        if (!_releaseLock.TryEnter())
        {
            return;
        }

        try
        {
            _nextRetry = now + ToTicks(Options.ReleaseRetryPeriod);
            RetryReleaseLocked();
        }
        finally
        {
            _releaseLock.Exit();
        }

        if (IsReleased || !_waiting)
        {
            PoolReleaseWorker.Remove(this);
        }
    }

    private void StopRetryTimer()
    {
        // Only flags the pool: the worker drops it on its next tick (or now, when not under the pool's lock).
        _waiting = false;
    }

    /// <summary>The addresses of up to 16 pages this pool handed out that are not back (cold: stall warnings).</summary>
    private string DescribeMissing()
    {
        var missing = new System.Text.StringBuilder();
        int found = 0;
        NetMemArea[] areas;
        lock (_knownAreas)
        {
            areas = [.. _knownAreas];
        }

        foreach (NetMemArea area in areas)
        {
            Pages.PageDescriptor[] descriptors = area.Descriptors;
            for (int i = 0; i < descriptors.Length && found < 16; i++)
            {
                if (ReferenceEquals(Volatile.Read(ref descriptors[i].Pool), this))
                {
                    if (found++ > 0)
                    {
                        missing.Append(", ");
                    }

                    missing.Append("0x").Append(((long)area.BaseAddress + ((long)i << area.ChunkShift)).ToString("x", System.Globalization.CultureInfo.InvariantCulture));
                }
            }
        }

        if (found == 0)
        {
            return "none found in the pool's areas (pages on their way back)";
        }

        // Allocation stacks are not recorded: a stack per admitted page would cost the slow allocation path a
        // StackTrace capture (tens of microseconds) in every mode; the addresses let a caller find the holder.
        return missing.ToString();
    }

    /// <summary>__page_pool_destroy: the last page is back; unbind the provider and stop the timer.</summary>
    private void FinishRelease()
    {
        if (Interlocked.CompareExchange(ref _state, StateFreed, StateDestroying) != StateDestroying)
        {
            return;
        }

        StopRetryTimer();
        if (!_releaseLock.IsHeldByCurrentThread)
        {
            PoolReleaseWorker.Remove(this);
        }

        _provider?.Destroy(ProviderShell);
    }

    private void WarnNegative(long inflight)
    {
        if (_negativeWarned)
        {
            return;
        }

        _negativeWarned = true;
        Raise(new PagePoolWarningEventArgs(PagePoolWarningKind.NegativeInFlight, Id, inflight,
            Stopwatch.GetElapsedTime(_destroyStart),
            $"Negative({inflight}) inflight packet-pages in pool {Id}: more pages were returned than taken; release retries stop."));
    }

    private void Raise(PagePoolWarningEventArgs args)
    {
        Trace.TraceWarning(args.Message);
        try
        {
            Warning?.Invoke(Shell, args);
        }
#pragma warning disable CA1031 // A diagnostic handler must not be able to stop the release.
        catch (Exception ex)
#pragma warning restore CA1031
        {
            Trace.TraceError($"PagePool {Id}: a Warning handler threw: {ex}");
        }
    }

    private static long ToTicks(TimeSpan span) => (long)Math.Min(long.MaxValue / 2, span.TotalSeconds * Stopwatch.Frequency);

    /// <summary>Test hook: what a put that raced with <see cref="Dispose"/> does (recycle into the ring after the scrub).</summary>
    internal void RecycleIntoRingForTest(NetMem netmem)
    {
        ref Pages.PageDescriptor d = ref netmem.Descriptor;
        d.Generation++;
        RecycleInRing(new NetMem(netmem.Area!, netmem.Index, d.Generation));
    }

    /// <summary>Test hook: pretends <paramref name="extra"/> more pages were returned, to reach the negative case.</summary>
    internal void CorruptReleaseCountForTest(long extra) => Interlocked.Add(ref _releaseCount, extra);
}

/// <summary>What a <see cref="PagePoolWarningEventArgs"/> reports.</summary>
public enum PagePoolWarningKind
{
    /// <summary>A disposed pool still waits for pages in flight ("stalled pool shutdown").</summary>
    StalledShutdown,

    /// <summary>More pages came back than the pool handed out (a bug; retries stop).</summary>
    NegativeInFlight,
}

/// <summary>A warning from a disposed <see cref="PagePool"/>'s release. Immutable, any thread.</summary>
public sealed class PagePoolWarningEventArgs : EventArgs
{
    /// <summary>Creates the arguments.</summary>
    public PagePoolWarningEventArgs(PagePoolWarningKind kind, int poolId, long inFlight, TimeSpan elapsed, string message)
    {
        Kind = kind;
        PoolId = poolId;
        InFlight = inFlight;
        Elapsed = elapsed;
        Message = message;
    }

    /// <summary>What happened.</summary>
    public PagePoolWarningKind Kind { get; }

    /// <summary>The pool's <see cref="PagePool.Id"/>.</summary>
    public int PoolId { get; }

    /// <summary>Pages in flight (negative for <see cref="PagePoolWarningKind.NegativeInFlight"/>).</summary>
    public long InFlight { get; }

    /// <summary>Time since <see cref="PagePool.Dispose"/>.</summary>
    public TimeSpan Elapsed { get; }

    /// <summary>The message, worded as the kernel's.</summary>
    public string Message { get; }
}
