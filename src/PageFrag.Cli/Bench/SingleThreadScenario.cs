using System.Buffers;
using System.Diagnostics;
using System.Runtime.CompilerServices;
using DotNetty.Buffers;
using PageFrag.Frag;
using PageFrag.Pool;

namespace PageFrag.Cli.Bench;

/// <summary>
/// Scenario 2: one thread allocates a buffer, writes a byte at both ends, reads them back and frees it, over
/// and over. The figure is nanoseconds per alloc + free pair.
/// </summary>
internal static class SingleThreadScenario
{
    public static RunFigures Run(BenchPeer peer, int size, long ops, PeerResources peers) => peer switch
    {
        BenchPeer.PageFrag => RunPageFrag(size, ops, local: true),
        BenchPeer.PageFragFree => RunPageFrag(size, ops, local: false),
        BenchPeer.PagePool => RunPagePool(size, ops),
        BenchPeer.ArrayPool => Measure<byte[], ArrayPoolBenchSource>(new(size), size, ops),
        BenchPeer.Kestrel => Measure<IMemoryOwner<byte>, KestrelSource>(new(peers.KestrelPool, size), size, ops),
        BenchPeer.DotNettyHeap => Measure<IByteBuffer, DotNettySource>(new(peers.DotNetty, false, size), size, ops),
        BenchPeer.DotNettyDirect => Measure<IByteBuffer, DotNettySource>(new(peers.DotNetty, true, size), size, ops),
        BenchPeer.Gc => Measure<byte[], GcBenchSource>(new(size), size, ops),
        BenchPeer.Native => Measure<nint, NativeBenchSource>(new(size), size, ops),
        _ => throw new ArgumentOutOfRangeException(nameof(peer), peer, "Not an allocator of scenario 2."),
    };

    /// <summary>What <see cref="Loop"/> returns for <paramref name="ops"/> buffers: both ends hold (byte)i.</summary>
    public static long ExpectedChecksum(long ops)
    {
        long cycles = ops / 256, rest = ops % 256;
        return 2 * ((cycles * 255 * 256 / 2) + (rest * (rest - 1) / 2));
    }

    private static RunFigures RunPageFrag(int size, long ops, bool local)
    {
        using var pages = new PrivatePages();
        var cache = new PageFragCache(pages.Allocator);
        RunFigures figures = local
            ? Measure<PageFragment, PageFragLocalSource>(new(cache, size), size, ops)
            : Measure<PageFragment, PageFragAnySource>(new(cache, size), size, ops);
        cache.Drain();
        return figures with { LeakedPages = pages.PagesInUse };
    }

    private static RunFigures RunPagePool(int size, long ops)
    {
        using var pages = new PrivatePages();
        var pool = new PagePool(new PagePoolOptions { Allocator = pages.Allocator });
        RunFigures figures;
        try
        {
            figures = Measure<PagePoolBuffer, PagePoolSource>(new(pool, size), size, ops);
        }
        finally
        {
            pool.Dispose();
        }

        return figures with { LeakedPages = pages.PagesInUse };
    }

    private static RunFigures Measure<T, TSource>(TSource source, int size, long ops)
        where TSource : struct, IBenchSource<T>
    {
        // Start every peer from a collected heap, so no peer pays for garbage another one left.
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();

        GcSnapshot before = GcSnapshot.Take();
        long start = Stopwatch.GetTimestamp();
        long sum = Loop<T, TSource>(ref source, size, ops);
        long ticks = Stopwatch.GetTimestamp() - start;
        RunFigures figures = before.Since(Statistics.Seconds(ticks) * 1e9 / ops);
        if (sum != ExpectedChecksum(ops))
        {
            throw new BenchFailureException($"wrong checksum {sum}, expected {ExpectedChecksum(ops)}: a buffer was shorter than asked or shared with another.");
        }

        return figures with { Extra = [new("elapsed_s", Statistics.Seconds(ticks))] };
    }

    // The measured loop: per pair, the allocator's two calls and two bytes written and read at the ends.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static long Loop<T, TSource>(ref TSource source, int size, long ops)
        where TSource : struct, IBenchSource<T>
    {
        long sum = 0;
        int last = size - 1;
        for (long i = 0; i < ops; i++)
        {
            if (!source.TryAlloc(out T item))
            {
                ThrowAllocFailed(size);
            }

            Span<byte> span = source.GetSpan(item, size);
            span[0] = (byte)i;
            span[last] = (byte)i;
            sum += span[0] + span[last];
            source.Free(item);
        }

        return sum;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void ThrowAllocFailed(int size) => throw new BenchFailureException($"the allocator failed to allocate {size} bytes.");
}
