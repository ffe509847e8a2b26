using System.Buffers;
using System.Diagnostics;
using System.Runtime.CompilerServices;
using DotNetty.Buffers;
using PageFrag.Cli.FragTest;
using PageFrag.Frag;
using PageFrag.Pool;

namespace PageFrag.Cli.Bench;

/// <summary>
/// Scenario 3: both cores produce and consume at once. Two threads each allocate buffers (writing both
/// ends) and push them into their own ring to the other thread, and each pops the other's buffers (reading
/// both ends) and frees them: every buffer is freed on the thread that did not allocate it. The rings are the
/// push/pop test's <see cref="SpscRing{T}"/>. The figure is million buffers allocated and freed per second,
/// both threads together.
/// </summary>
/// <remarks>
/// PageFrag's rows give each thread its own cache (or page pool), as per-CPU caches are meant to be used;
/// the frees are the any-thread <c>Free</c>: by address in the first row (the kernel's <c>page_frag_alloc</c> /
/// <c>page_frag_free(va)</c>, as scenario 1), by handle in the "Free (any thread)" row (which also refuses a stale
/// handle after its page was reused; the ring then carries a 24-byte handle instead of an 8-byte address). The peers are shared by both threads, as their libraries
/// intend (ArrayPool.Shared, one Kestrel pool, one DotNetty allocator with its per-thread caches).
/// </remarks>
internal static class BothWaysScenario
{
    public const int RingSize = 512;

    private static readonly TimeSpan s_poll = TimeSpan.FromMilliseconds(50);

    public static RunFigures Run(BenchPeer peer, int size, long ops, PeerResources peers, IRunMonitor monitor, string label, TimeSpan watchdog)
    {
        switch (peer)
        {
            case BenchPeer.PageFrag:
                return RunCaches<nint, PageFragAddressSource>(cache => new(cache, size), size, ops, monitor, label, watchdog);

            case BenchPeer.PageFragFree:
                return RunCaches<PageFragment, PageFragAnySource>(cache => new(cache, size), size, ops, monitor, label, watchdog);

            case BenchPeer.PagePool:
                {
                    using var pages = new PrivatePages();
                    var a = new PagePool(new PagePoolOptions { Allocator = pages.Allocator });
                    var b = new PagePool(new PagePoolOptions { Allocator = pages.Allocator });
                    RunFigures figures = RunPair<PagePoolBuffer, PagePoolSource>(new(a, size), new(b, size), size, ops, monitor, label, watchdog, out bool ended);
                    if (!ended)
                    {
                        return figures;
                    }

                    foreach (PagePool pool in (PagePool[])[a, b])
                    {
                        pool.SetOwnerThread();
                        pool.Dispose();
                    }

                    return figures with { LeakedPages = pages.PagesInUse };
                }

            case BenchPeer.ArrayPool:
                return RunPair<byte[], ArrayPoolBenchSource>(new(size), new(size), size, ops, monitor, label, watchdog, out _);
            case BenchPeer.Kestrel:
                return RunPair<IMemoryOwner<byte>, KestrelSource>(new(peers.KestrelPool, size), new(peers.KestrelPool, size), size, ops, monitor, label, watchdog, out _);
            case BenchPeer.DotNettyHeap:
                return RunPair<IByteBuffer, DotNettySource>(new(peers.DotNetty, false, size), new(peers.DotNetty, false, size), size, ops, monitor, label, watchdog, out _);
            case BenchPeer.DotNettyDirect:
                return RunPair<IByteBuffer, DotNettySource>(new(peers.DotNetty, true, size), new(peers.DotNetty, true, size), size, ops, monitor, label, watchdog, out _);
            case BenchPeer.Gc:
                return RunPair<byte[], GcBenchSource>(new(size), new(size), size, ops, monitor, label, watchdog, out _);
            case BenchPeer.Native:
                return RunPair<nint, NativeBenchSource>(new(size), new(size), size, ops, monitor, label, watchdog, out _);
            default:
                throw new ArgumentOutOfRangeException(nameof(peer), peer, "Not an allocator of scenario 3.");
        }
    }

    // Two fragment caches over one private allocator, one per thread; afterwards every page must be back.
    private static RunFigures RunCaches<T, TSource>(Func<PageFragCache, TSource> source, int size, long ops, IRunMonitor monitor, string label, TimeSpan watchdog)
        where TSource : struct, IBenchSource<T>
    {
        using var pages = new PrivatePages();
        var a = new PageFragCache(pages.Allocator);
        var b = new PageFragCache(pages.Allocator);
        RunFigures figures = RunPair<T, TSource>(source(a), source(b), size, ops, monitor, label, watchdog, out bool ended);
        if (!ended)
        {
            return figures;
        }

        a.Drain();
        b.Drain();
        return figures with { LeakedPages = pages.PagesInUse };
    }

    private static RunFigures RunPair<T, TSource>(TSource first, TSource second, int size, long ops, IRunMonitor monitor, string label, TimeSpan watchdog, out bool ended)
        where TSource : struct, IBenchSource<T>
    {
        var ab = new SpscRing<T>(RingSize);
        var ba = new SpscRing<T>(RingSize);
        var control = new RunControl();
        var sides = new Side[2];
        using var ready = new CountdownEvent(2);
        using var go = new ManualResetEventSlim();

        Thread Start(int index, TSource source, SpscRing<T> output, SpscRing<T> input)
        {
            var side = new Side();
            sides[index] = side;
            var thread = new Thread(() =>
            {
                try
                {
                    ready.Signal();
                    go.Wait();
                    TSource local = source;
                    SpscRing<T>.Producer producer = output.GetProducer();
                    SpscRing<T>.Consumer consumer = input.GetConsumer();
                    long before = GC.GetAllocatedBytesForCurrentThread();
                    side.Sum = Work<T, TSource>(ref local, ref producer, ref consumer, size, ops, control);
                    side.GcBytes = GC.GetAllocatedBytesForCurrentThread() - before;
                }
                catch (Exception e)
                {
                    control.Fail(e is BenchFailureException ? e.Message : $"a thread failed: {e.GetType().Name}: {e.Message}");
                }
            })
            { IsBackground = true, Name = $"pagefrag bench {index}" };
            thread.Start();
            return thread;
        }

        Thread ta = Start(0, first, ab, ba);
        Thread tb = Start(1, second, ba, ab);
        ready.Wait();

        var gc = GcSnapshot.Take();
        long start = Stopwatch.GetTimestamp();
        go.Set();

        long lastProgress = -1;
        long progressAt = start;
        long limit = (long)(watchdog.TotalSeconds * Stopwatch.Frequency);
        monitor.Watch(label, 2 * ops, (out long done) =>
        {
            bool finished = ta.Join(s_poll) & tb.Join(0);
            done = ab.Consumed + ba.Consumed;
            if (finished || control.Aborted)
            {
                return false;
            }

            long progress = done + ab.Published + ba.Published;
            long now = Stopwatch.GetTimestamp();
            if (progress != lastProgress)
            {
                (lastProgress, progressAt) = (progress, now);
            }
            else if (now - progressAt > limit)
            {
                control.Fail($"watchdog: no thread made progress for {watchdog.TotalSeconds:0.###} s (freed {done} of {2 * ops}).");
            }

            return !control.Aborted;
        });

        ended = ta.Join(TimeSpan.FromSeconds(2)) & tb.Join(TimeSpan.FromSeconds(2));
        long ticks = Stopwatch.GetTimestamp() - start;
        if (ended)
        {
            // After a failure the rings may still hold buffers: free them, so that only real leaks show.
            FreeLeftovers<T, TSource>(ab, second);
            FreeLeftovers<T, TSource>(ba, first);
        }

        if (control.Failure is string failure)
        {
            throw new BenchFailureException(failure);
        }

        long expected = SingleThreadScenario.ExpectedChecksum(ops);
        if (sides[0].Sum != expected || sides[1].Sum != expected)
        {
            throw new BenchFailureException($"wrong checksum {sides[0].Sum}/{sides[1].Sum}, expected {expected}: a buffer was shorter than asked or shared with another.");
        }

        double seconds = Statistics.Seconds(ticks);
        return gc.Since(2 * ops / seconds / 1e6, sides[0].GcBytes + sides[1].GcBytes) with { Extra = [new("elapsed_s", seconds)] };
    }

    private static void FreeLeftovers<T, TSource>(SpscRing<T> ring, TSource source)
        where TSource : struct, IBenchSource<T>
    {
        SpscRing<T>.Consumer leftovers = ring.GetConsumer();
        while (leftovers.TryPop(out T item))
        {
            source.Free(item);
        }
    }

    // One side: allocate + stamp + push one, then pop + check + free one, until it has pushed and freed its
    // count. When it can do neither it waits: for items while the other side still owes some (its ring is full
    // or it has pushed everything), else for room (the other side is still popping). A side waiting for items
    // has published its pushes, so the two never wait for each other.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static long Work<T, TSource>(ref TSource source, ref SpscRing<T>.Producer output, ref SpscRing<T>.Consumer input, int size, long ops, RunControl control)
        where TSource : struct, IBenchSource<T>
    {
        long pushed = 0, freed = 0, sum = 0;
        int last = size - 1;
        T pending = default!;
        bool hasPending = false;
        while (freed < ops || pushed < ops)
        {
            if (pushed < ops)
            {
                if (!hasPending)
                {
                    if (!source.TryAlloc(out pending))
                    {
                        ThrowAllocFailed(size);
                    }

                    Span<byte> span = source.GetSpan(pending, size);
                    span[0] = (byte)pushed;
                    span[last] = (byte)pushed;
                    hasPending = true;
                }

                if (output.TryPush(pending))
                {
                    hasPending = false;
                    pending = default!;
                    if (++pushed == ops)
                    {
                        output.Publish();
                    }
                }
            }

            if (input.TryPop(out T item))
            {
                Span<byte> span = source.GetSpan(item, size);
                sum += span[0] + span[last];
                source.Free(item);
                freed++;
                continue;
            }

            if (freed == ops)
            {
                // Everything from the other side is freed; only our own pushes are left, and the other side
                // is still popping them.
                if (hasPending)
                {
                    output.WaitForRoom(control);
                    if (control.Aborted)
                    {
                        break;
                    }
                }
            }
            else if (pushed == ops || hasPending)
            {
                input.WaitForItems(control);
                if (control.Aborted)
                {
                    break;
                }
            }
        }

        if (hasPending)
        {
            source.Free(pending);
        }

        output.Publish();
        input.Publish();
        return sum;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void ThrowAllocFailed(int size) => throw new BenchFailureException($"the allocator failed to allocate {size} bytes.");

    private sealed class Side
    {
        public long Sum;
        public long GcBytes;
    }
}
