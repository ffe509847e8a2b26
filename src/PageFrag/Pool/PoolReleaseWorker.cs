using System.Diagnostics;
using PageFrag.Pages;

namespace PageFrag.Pool;

/// <summary>
/// The one retry worker for every disposed pool that still waits for pages in flight (the kernel runs one
/// delayed work item per pool on a shared workqueue; a process-wide timer per pool cost about 34 KiB and a
/// wake-up each, for ever when a page never came back). One timer, created while some pool waits and
/// disposed when none does; it ticks at the shortest <see cref="PagePoolOptions.ReleaseRetryPeriod"/> of the
/// waiting pools and retries each pool once its own period has passed.
/// </summary>
/// <remarks>Cold path only: registration on <see cref="PagePool.Dispose"/> with pages out, removal when the
/// pool is freed. Thread-safe under one lock.</remarks>
internal static class PoolReleaseWorker
{
    private static readonly Lock s_gate = new();
    private static readonly List<PagePoolCore> s_waiting = [];
    private static Timer? s_timer;
    private static TimeSpan s_period;
    private static PagePoolCore[] s_snapshot = [];

    /// <summary>Pools waiting for pages in flight (for tests and diagnostics).</summary>
    public static int WaitingPools
    {
        get
        {
            lock (s_gate)
            {
                return s_waiting.Count;
            }
        }
    }

    /// <summary>Whether the shared timer exists (it exists exactly while a pool waits).</summary>
    public static bool TimerRunning
    {
        get
        {
            lock (s_gate)
            {
                return s_timer is not null;
            }
        }
    }

    public static void Add(PagePoolCore pool)
    {
        // A Dispose that has decided registers here: thrown from this wait, an interrupt would leave the pool
        // unwatched (see PagePoolCore.StartRetry).
        bool interrupted = false;
        LockWait.EnterKeepingInterrupt(s_gate, ref interrupted);
        try
        {
            if (s_waiting.Contains(pool))
            {
                return;
            }

            s_waiting.Add(pool);
            TimeSpan period = pool.Options.ReleaseRetryPeriod;
            if (s_timer is null)
            {
                s_period = period;

                // Suppress the execution context: the timer must not capture the disposing caller's async locals.
                using (ExecutionContext.SuppressFlow())
                {
                    s_timer = new Timer(static _ => Tick(), null, period, period);
                }
            }
            else if (period < s_period)
            {
                s_period = period;
                s_timer.Change(period, period);
            }
        }
        finally
        {
            s_gate.Exit();
            Arena.KeepInterrupt(interrupted);
        }
    }

    public static void Remove(PagePoolCore pool)
    {
        // The last page back frees the pool here, before its provider is destroyed: thrown from this wait, an
        // interrupt would end the release half-done (and the put that brought the page back would throw).
        bool interrupted = false;
        LockWait.EnterKeepingInterrupt(s_gate, ref interrupted);
        try
        {
            if (!s_waiting.Remove(pool))
            {
                return;
            }

            if (s_waiting.Count == 0)
            {
                s_timer?.Dispose();
                s_timer = null;
            }
        }
        finally
        {
            s_gate.Exit();
            Arena.KeepInterrupt(interrupted);
        }
    }

    /// <summary>The worker's lock (for the tests that hold it).</summary>
    internal static Lock GateForTests => s_gate;

    private static void Tick()
    {
        PagePoolCore[] pools;
        lock (s_gate)
        {
            if (s_snapshot.Length != s_waiting.Count)
            {
                s_snapshot = new PagePoolCore[s_waiting.Count];
            }

            s_waiting.CopyTo(s_snapshot);
            pools = s_snapshot;
        }

        long now = Stopwatch.GetTimestamp();
        foreach (PagePoolCore pool in pools)
        {
            try
            {
                pool.OnRetryTick(now);
            }
#pragma warning disable CA1031 // One pool's failure must not stop the retries of the others.
            catch (Exception ex)
#pragma warning restore CA1031
            {
                Trace.TraceError($"PagePool {pool.Id}: a release retry threw: {ex}");
            }
        }
    }
}
