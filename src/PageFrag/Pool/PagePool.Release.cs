using System.Diagnostics;
using PageFrag.Pages;

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

    // A Dispose on another thread than the live owner's leaves the owner's side (cache, ring, fragment page) to the
    // owner: the thread it waits for, until ReleaseOwnerSide ran (once: _ownerSideReleased).
    private Thread? _ownerSidePending;
    private int _ownerSideReleased;
    private volatile bool _destroyDecided;

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
            // Disposed on another thread while the owner lived: nothing can allocate any more, so the owner's side goes back now.
            FinishOwnerSideIfSafe(finalizer: true);
            return;
        }

        // A buffer freed on the old owner thread while this runs may have passed the owner test just before
        // Dispose cleared it and land in the cache after the scrub: the retry worker scrubs the cache too for a
        // reclaimed pool (nobody else touches it any more).
        _reclaimedByGc = true;
        long before = Interlocked.Read(ref _releaseCount);
        Destroy(finalizer: true);
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
    /// <remarks>Call it on the owner thread, or once the owner thread has stopped using the pool. Called on another
    /// thread while the owner thread is alive, it cannot know that the owner is not inside an allocation at that
    /// instant (the allocation paths carry no mark, to stay cheap), so it gives back at once only what the owner
    /// does not touch; the owner's side (its cache, the ring it refills from, the fragment page it carves) goes back
    /// when the owner thread next calls the pool (which throws <see cref="ObjectDisposedException"/>) or disposes it,
    /// when the owner thread has ended (the release worker checks), or when the pool is collected.</remarks>
    /// <returns>True when the owner's side was given back; false when it waits for the owner (see the remarks).</returns>
    public bool Dispose() => Destroy(finalizer: false);

    /// <summary>Dispose, or the safety net's destroy when <paramref name="finalizer"/> (no allocation can be running:
    /// every allocation keeps the public pool reachable until it returns).</summary>
    private bool Destroy(bool finalizer)
    {
        if (Interlocked.CompareExchange(ref _state, StateDestroying, StateAlive) != StateAlive)
        {
            // Another Dispose (or the finalizer) won: once it has decided, the owner finishes what it left.
            return FinishOwnerSideIfSafe(finalizer);
        }

        // page_pool_disable_direct_recycling: from now on no thread is the owner, and an allocation that starts
        // fails its owner test.
        Thread? owner = Interlocked.Exchange(ref _owner, null);
        _destroyStart = Stopwatch.GetTimestamp();
        _nextWarning = _destroyStart + ToTicks(Options.StallWarningInterval);
        bool now = finalizer || owner is null || ReferenceEquals(owner, Thread.CurrentThread) || !owner.IsAlive;
        if (!now)
        {
            // The owner may be inside an allocation that passed its owner test just before: popping its cache,
            // refilling from the ring or carving the fragment page. Taking those now would give a page it is
            // handing out to the allocator, where a second owner gets it. They wait for the owner (see Dispose).
            Volatile.Write(ref _ownerSidePending, owner);
        }

        _destroyDecided = true;
        if (now)
        {
            ReleaseOwnerSide();
            return true;
        }

        StartRetry();
        return false;
    }

    /// <summary>
    /// Gives back the owner's side that a Dispose on another thread left (see <see cref="Dispose"/>), when it is safe:
    /// on the owner thread (the caller is outside any allocation), once the owner thread has ended, or from the
    /// finalizer. True when nothing is left to give back.
    /// </summary>
    internal bool FinishOwnerSideIfSafe(bool finalizer)
    {
        // Called once the pool is disposed: wait for the disposing thread to say whether it left the owner's side
        // (a few instructions after the state change that made this caller see the pool disposed).
        var spin = default(SpinWait);
        while (!_destroyDecided)
        {
            spin.SpinOnce();
        }

        Thread? owner = Volatile.Read(ref _ownerSidePending);
        if (owner is null)
        {
            return Volatile.Read(ref _ownerSideReleased) != 0;
        }

        if (!finalizer && !ReferenceEquals(owner, Thread.CurrentThread) && owner.IsAlive)
        {
            return false;
        }

        ReleaseOwnerSide();
        return true;
    }

    /// <summary>page_pool_destroy's own part: the fragment page's bias, the cache and the ring. Once.</summary>
    private void ReleaseOwnerSide()
    {
        if (Interlocked.Exchange(ref _ownerSideReleased, 1) != 0)
        {
            return;
        }

        Volatile.Write(ref _ownerSidePending, null);
        FreeFrag();

        // Claimed above (once): thrown from this wait, an interrupt would leave the cache's pages with a pool that
        // will never give them back. Kept for the thread's next blocking call instead.
        long inflight;
        bool interrupted = false;
        LockWait.EnterKeepingInterrupt(_releaseLock, ref interrupted);
        try
        {
            // The lock makes this the ring's only consumer, against a concurrent RetryRelease.
            inflight = Scrub(includeCache: true);
        }
        finally
        {
            _releaseLock.Exit();
            Arena.KeepInterrupt(interrupted);
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

        // The owner's side left by a Dispose on another thread goes back here too once it is safe (this caller is
        // the owner, or the owner thread has ended).
        FinishOwnerSideIfSafe(finalizer: false);
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

        long inflight;
        if (Volatile.Read(ref _ownerSidePending) is not null)
        {
            // The owner's side waits for the owner: the ring is still the owner's to refill from (one consumer), and
            // the pool holds at least what the owner may be handing out.
            inflight = Math.Max(1, Volatile.Read(ref _holdCount) - Interlocked.Read(ref _releaseCount));
        }
        else
        {
            inflight = Scrub(includeCache: _reclaimedByGc);
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
        // After Dispose decided: thrown from this wait (or the worker's), an interrupt would leave a pool that waits for
        // its owner or for pages in flight without the worker that notices the owner's end and scrubs the ring.
        bool interrupted = false;
        LockWait.EnterKeepingInterrupt(_releaseLock, ref interrupted);
        try
        {
            if (IsReleased)
            {
                return;
            }

            _nextRetry = Stopwatch.GetTimestamp() + ToTicks(Options.ReleaseRetryPeriod);
            _waiting = true;
        }
        finally
        {
            _releaseLock.Exit();
            Arena.KeepInterrupt(interrupted);
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

        if (Volatile.Read(ref _ownerSidePending) is Thread owner && !owner.IsAlive)
        {
            // The owner thread a Dispose on another thread waited for has ended: it cannot be inside an allocation.
            FinishOwnerSideIfSafe(finalizer: false);
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
        if (Volatile.Read(ref _ownerSidePending) is not null)
        {
            // The owner's side has not been given back yet (it finishes the release when it is).
            return;
        }

        if (Interlocked.CompareExchange(ref _state, StateFreed, StateDestroying) != StateDestroying)
        {
            return;
        }

        StopRetryTimer();
        if (!_releaseLock.IsHeldByCurrentThread)
        {
            PoolReleaseWorker.Remove(this);
        }

        if (_provider is not null)
        {
            PagePoolCore? outer = EnterProviderCall();
            try
            {
                _provider.Destroy(ProviderShell);
            }
            finally
            {
                t_providerCall = outer;
            }
        }
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

    /// <summary>The release's lock (for the tests that hold it).</summary>
    internal Lock ReleaseLockForTests => _releaseLock;

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
