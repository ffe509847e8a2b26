using System.Diagnostics;
using System.Runtime.CompilerServices;
using PageFrag.Cli.Infrastructure;

namespace PageFrag.Cli.FragTest;

/// <summary>What one run of the push/pop protocol needs to know.</summary>
internal sealed record ProtocolSettings(long NrTest, int RingSize, int? PushCpu, int? PopCpu, TimeSpan Watchdog, string Label);

/// <summary>What one run of the push/pop protocol measured.</summary>
internal sealed record RawRun
{
    public long ElapsedTicks { get; init; }
    public long Pushed { get; init; }
    public long Freed { get; init; }
    public long Dropped { get; init; }

    /// <summary>
    /// Time the push thread spent waiting for room after a drop (Stopwatch ticks). The drop count alone says how
    /// often the ring was full; with the producer faster than the consumer it is set by the ring's size (one drop
    /// per refill, the same for every allocator), while the waiting time is what the consumer's frees cost.
    /// </summary>
    public long PushWaitTicks { get; init; }

    public long FailedAllocs { get; init; }
    public long ProducerGcBytes { get; init; }
    public long ConsumerGcBytes { get; init; }
    public long GcAllocatedBytes => ProducerGcBytes + ConsumerGcBytes;
    public int Gen0 { get; init; }
    public int Gen1 { get; init; }
    public int Gen2 { get; init; }
    public string? Failure { get; init; }
    public bool UsageError { get; init; }

    /// <summary>Both threads ended, so the cache and the ring may be touched by the coordinator.</summary>
    public bool ThreadsEnded { get; init; }

    public double ElapsedSeconds => (double)ElapsedTicks / Stopwatch.Frequency;
}

/// <summary>Polls a running test: blocks up to a short while, reports the consumer's count, false once over.</summary>
internal delegate bool RunPoller(out long done);

/// <summary>Shows (or not) the progress of a run while the coordinator thread watches it.</summary>
internal interface IRunMonitor
{
    /// <summary>Calls <paramref name="poll"/> until it returns false.</summary>
    public void Watch(string label, long total, RunPoller poll);
}

/// <summary>A monitor that shows nothing.</summary>
internal sealed class SilentMonitor : IRunMonitor
{
    public static readonly SilentMonitor Instance = new();

    public void Watch(string label, long total, RunPoller poll)
    {
        while (poll(out _))
        {
        }
    }
}

/// <summary>
/// The kernel's page_frag_test protocol: a push thread allocates and pushes into an SPSC ring, a pop
/// thread pops and frees, the calling thread is the watchdog. Generic over the allocator so each
/// allocator gets its own compiled, fully inlined loops.
/// </summary>
internal static class Protocol
{
    private static readonly TimeSpan s_joinAfterAbort = TimeSpan.FromSeconds(2);

    // Slots the push loop asks the ring for at a time (the ring's own publishing batch), and items the pop loop
    // takes at a time: sixteen cache lines of slots, which the ring prefetches together (see SpscRing.Consumer.Peek).
    private const int RunLength = 32;
    private const int PopRunLength = 128;

    public static RawRun Run<T, TSource>(TSource producerSource, TSource consumerSource, ProtocolSettings settings, IRunMonitor monitor)
        where TSource : struct, IFragmentSource<T>
    {
        var ring = new SpscRing<T>(settings.RingSize);
        var control = new RunControl();
        var shared = new SharedCounters();
        using var ready = new CountdownEvent(2);
        using var go = new ManualResetEventSlim();

        var producer = new Thread(() =>
        {
            try
            {
                bool pinned;
                try
                {
                    pinned = Pin(settings.PushCpu, "push", control);
                }
                finally
                {
                    ready.Signal();
                }

                go.Wait();
                if (!pinned || control.Aborted)
                {
                    return;
                }

                TSource source = producerSource;
                SpscRing<T>.Producer view = ring.GetProducer();
                long before = GC.GetAllocatedBytesForCurrentThread();
                ProduceLoop<T, TSource>(ref source, ref view, settings.NrTest, control, shared);
                shared.ProducerGcBytes = GC.GetAllocatedBytesForCurrentThread() - before;
            }
            catch (Exception e)
            {
                control.Fail(Describe("push", e));
            }
            finally
            {
                Volatile.Write(ref shared.ProducerEnded, true);
            }
        })
        { IsBackground = true, Name = "pagefrag push" };

        var consumer = new Thread(() =>
        {
            try
            {
                bool pinned;
                try
                {
                    pinned = Pin(settings.PopCpu, "pop", control);
                }
                finally
                {
                    ready.Signal();
                }

                go.Wait();
                if (!pinned || control.Aborted)
                {
                    return;
                }

                TSource source = consumerSource;
                SpscRing<T>.Consumer view = ring.GetConsumer();
                long before = GC.GetAllocatedBytesForCurrentThread();
                shared.Freed = ConsumeLoop<T, TSource>(ref source, ref view, settings.NrTest, control);
                shared.EndTimestamp = Stopwatch.GetTimestamp();
                shared.ConsumerGcBytes = GC.GetAllocatedBytesForCurrentThread() - before;
            }
            catch (Exception e)
            {
                control.Fail(Describe("pop", e));
            }
        })
        { IsBackground = true, Name = "pagefrag pop" };

        producer.Start();
        consumer.Start();
        ready.Wait();

        int gen0 = GC.CollectionCount(0), gen1 = GC.CollectionCount(1), gen2 = GC.CollectionCount(2);
        long start = Stopwatch.GetTimestamp();
        go.Set();

        if (!control.Aborted)
        {
            Watchdog watchdog = new(ring, control, shared, consumer, settings, start);
            monitor.Watch(settings.Label, settings.NrTest, watchdog.Poll);
        }

        bool ended;
        if (control.Aborted)
        {
            ended = producer.Join(s_joinAfterAbort) & consumer.Join(s_joinAfterAbort);
        }
        else
        {
            consumer.Join();
            producer.Join();
            ended = true;
        }

        if (ended)
        {
            // After a failure the ring may still hold fragments: free them so that only real leaks show.
            SpscRing<T>.Consumer leftovers = ring.GetConsumer();
            while (leftovers.TryPop(out T item))
            {
                consumerSource.Free(item);
            }
        }

        return new RawRun
        {
            ElapsedTicks = control.Aborted ? Stopwatch.GetTimestamp() - start : shared.EndTimestamp - start,
            Pushed = shared.Pushed,
            Freed = shared.Freed,
            Dropped = shared.Dropped,
            PushWaitTicks = shared.PushWaitTicks,
            FailedAllocs = Volatile.Read(ref shared.FailedAllocs),
            ProducerGcBytes = shared.ProducerGcBytes,
            ConsumerGcBytes = shared.ConsumerGcBytes,
            Gen0 = GC.CollectionCount(0) - gen0,
            Gen1 = GC.CollectionCount(1) - gen1,
            Gen2 = GC.CollectionCount(2) - gen2,
            Failure = control.Failure,
            UsageError = control.IsUsageError,
            ThreadsEnded = ended,
        };
    }

    // The two hot loops. Per item they do the allocator's work, the ring's work and a local counter;
    // everything else (failed allocations, a full or empty ring, aborts) is on a slow path.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void ProduceLoop<T, TSource>(ref TSource source, ref SpscRing<T>.Producer ring, long nrTest, RunControl control, SharedCounters shared)
        where TSource : struct, IFragmentSource<T>
    {
        long pushed = 0, dropped = 0, failed = 0, waited = 0;
        while (pushed < nrTest)
        {
            // A run of free slots, filled item by item: per item only the allocator's work and the slot store.
            Span<T> run = ring.Reserve((int)Math.Min(RunLength, nrTest - pushed));
            int filled = Fill<T, TSource>(ref source, run);

            ring.Commit(filled);
            pushed += filled;
            if (filled == run.Length && run.Length != 0)
            {
                continue;
            }

            if (run.Length != 0)
            {
                // The kernel skips a failed allocation; count it so the watchdog can say why nothing moves.
                // Publish first: the pages we wait for may be held by fragments still unpublished here.
                Volatile.Write(ref shared.FailedAllocs, ++failed);
                ring.Publish();
                if (control.Aborted)
                {
                    break;
                }

                continue;
            }

            // Ring full: allocate, free our own fragment as the kernel test does, and wait for room before the
            // next try. Timed on this slow path only (once per ring refill): the share of the run the push
            // thread waited.
            if (!source.TryAlloc(out T item))
            {
                Volatile.Write(ref shared.FailedAllocs, ++failed);
            }
            else
            {
                source.Free(item);
                dropped++;
            }

            long waitStart = Stopwatch.GetTimestamp();
            ring.WaitForRoom(control);
            waited += Stopwatch.GetTimestamp() - waitStart;
            if (control.Aborted)
            {
                break;
            }
        }

        ring.Publish();
        shared.Pushed = pushed;
        shared.Dropped = dropped;
        shared.PushWaitTicks = waited;
    }

    // The innermost loops on their own, so that the few values they keep across the allocator's cold call fit in
    // registers the call preserves (nothing spilled to the stack per item).
    [MethodImpl(MethodImplOptions.AggressiveOptimization | MethodImplOptions.NoInlining)]
    private static int Fill<T, TSource>(ref TSource source, Span<T> run)
        where TSource : struct, IFragmentSource<T>
    {
        int filled = 0;
        while (filled < run.Length && source.TryAlloc(out run[filled]))
        {
            filled++;
        }

        return filled;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization | MethodImplOptions.NoInlining)]
    private static void Drain<T, TSource>(ref TSource source, ReadOnlySpan<T> run)
        where TSource : struct, IFragmentSource<T>
    {
        foreach (T item in run)
        {
            source.Free(item);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static long ConsumeLoop<T, TSource>(ref TSource source, ref SpscRing<T>.Consumer ring, long nrTest, RunControl control)
        where TSource : struct, IFragmentSource<T>
    {
        long freed = 0;
        while (freed < nrTest)
        {
            // A run of items, freed one by one, then given back to the ring at once.
            ReadOnlySpan<T> run = ring.Peek((int)Math.Min(PopRunLength, nrTest - freed));
            if (run.Length != 0)
            {
                Drain<T, TSource>(ref source, run);
                ring.Release(run.Length);
                freed += run.Length;
                continue;
            }

            ring.WaitForItems(control);
            if (control.Aborted)
            {
                break;
            }
        }

        ring.Publish();
        return freed;
    }

    private static bool Pin(int? cpu, string side, RunControl control)
    {
        if (cpu is not int n || !ThreadAffinity.IsSupported)
        {
            return true;
        }

        if (ThreadAffinity.TryPinCurrentThread(n, out string? error))
        {
            return true;
        }

        control.Fail($"cannot pin the {side} thread to CPU {n}: {error}", usageError: true);
        return false;
    }

    private static string Describe(string side, Exception e) => e is FragTestFailureException
        ? e.Message
        : $"the {side} thread failed: {e.GetType().Name}: {e.Message}";

    /// <summary>Fields the threads write once (at their end) or on slow paths only.</summary>
    private sealed class SharedCounters
    {
        public long Pushed;
        public long Dropped;
        public long PushWaitTicks;
        public long FailedAllocs;
        public long Freed;
        public long EndTimestamp;
        public long ProducerGcBytes;
        public long ConsumerGcBytes;
        public bool ProducerEnded;
    }

    /// <summary>Fails the run when a side makes no progress for the watchdog's time.</summary>
    private sealed class Watchdog(IRingCounters ring, RunControl control, SharedCounters shared, Thread consumer, ProtocolSettings settings, long start)
    {
        private static readonly TimeSpan s_pollInterval = TimeSpan.FromMilliseconds(50);

        private readonly long _limitTicks = (long)(settings.Watchdog.TotalSeconds * Stopwatch.Frequency);
        private long _lastPushed = -1;
        private long _lastFreed = -1;
        private long _pushedAt = start;
        private long _freedAt = start;

        public bool Poll(out long done)
        {
            bool finished = consumer.Join(s_pollInterval);
            long pushed = ring.Published;
            long freed = ring.Consumed;
            done = freed;
            if (finished || control.Aborted)
            {
                return false;
            }

            long now = Stopwatch.GetTimestamp();
            if (pushed != _lastPushed)
            {
                (_lastPushed, _pushedAt) = (pushed, now);
            }

            if (freed != _lastFreed)
            {
                (_lastFreed, _freedAt) = (freed, now);
            }

            string seconds = settings.Watchdog.TotalSeconds.ToString("0.###", System.Globalization.CultureInfo.InvariantCulture);
            if (!Volatile.Read(ref shared.ProducerEnded) && now - _pushedAt > _limitTicks)
            {
                control.Fail($"watchdog: the push thread made no progress for {seconds} s (pushed {pushed} of {settings.NrTest}, {Volatile.Read(ref shared.FailedAllocs)} failed allocations).");
            }
            else if (now - _freedAt > _limitTicks)
            {
                control.Fail($"watchdog: the pop thread made no progress for {seconds} s (freed {freed} of {settings.NrTest}).");
            }

            return !control.Aborted;
        }
    }
}
