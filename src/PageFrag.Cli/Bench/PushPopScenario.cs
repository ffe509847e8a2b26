using System.Buffers;
using DotNetty.Buffers;
using PageFrag.Cli.FragTest;
using PageFrag.Frag;
using PageFrag.Pool;

namespace PageFrag.Cli.Bench;

/// <summary>
/// Scenario 1: the seed's page_frag_test, exactly as <c>pagefrag test</c> runs it (same ring, same
/// protocol, same drop rule), over each peer. PageFrag, ArrayPool, <c>new byte[]</c> and NativeMemory go
/// through <see cref="FragTestRunner"/> itself; the other peers through <see cref="Protocol"/> with their own
/// sources. The figure is million fragments pushed and freed per second.
/// </summary>
internal static class PushPopScenario
{
    public const int RingSize = 512;

    public static RunFigures Run(BenchPeer peer, int size, long ops, PeerResources peers, IRunMonitor monitor, string label, TimeSpan watchdog)
    {
        var settings = new ProtocolSettings(ops, RingSize, null, null, watchdog, label);
        return peer switch
        {
            BenchPeer.PageFrag => ViaTestRunner(AllocatorKind.PageFrag, size, ops, monitor, label, watchdog),
            BenchPeer.ArrayPool => ViaTestRunner(AllocatorKind.ArrayPool, size, ops, monitor, label, watchdog),
            BenchPeer.Gc => ViaTestRunner(AllocatorKind.Gc, size, ops, monitor, label, watchdog),
            BenchPeer.Native => ViaTestRunner(AllocatorKind.Native, size, ops, monitor, label, watchdog),
            BenchPeer.PagePool => RunPagePool(size, settings, monitor),
            BenchPeer.Slab => RunSlab(size, settings, monitor),
            BenchPeer.Kestrel => Figures(Protocol.Run<IMemoryOwner<byte>, KestrelSource>(new(peers.KestrelPool, size), new(peers.KestrelPool, size), settings, monitor), ops),
            BenchPeer.DotNettyHeap => Figures(Protocol.Run<IByteBuffer, DotNettySource>(new(peers.DotNetty, false, size), new(peers.DotNetty, false, size), settings, monitor), ops),
            BenchPeer.DotNettyDirect => Figures(Protocol.Run<IByteBuffer, DotNettySource>(new(peers.DotNetty, true, size), new(peers.DotNetty, true, size), settings, monitor), ops),
            _ => throw new ArgumentOutOfRangeException(nameof(peer), peer, "Not an allocator of scenario 1."),
        };
    }

    private static RunFigures ViaTestRunner(AllocatorKind kind, int size, long ops, IRunMonitor monitor, string label, TimeSpan watchdog)
    {
        var options = new TestOptions { Allocator = kind, AllocLen = size, NrTest = ops, Runs = 1, WarmUp = false, Watchdog = watchdog };
        AllocatorResult result = FragTestRunner.Run(options, new Relabelled(monitor, label))[0];
        if (!result.Ok)
        {
            throw new BenchFailureException(result.Failure!);
        }

        return new RunFigures
        {
            Value = result.Mops,
            GcBytes = result.GcAllocatedBytes,
            Gen0 = result.Gen0,
            Gen1 = result.Gen1,
            Gen2 = result.Gen2,
            LeakedPages = result.LeakedPages,
            Extra = [new("elapsed_s", result.ElapsedSeconds), new("dropped", result.Dropped)],
        };
    }

    private static RunFigures RunPagePool(int size, ProtocolSettings settings, IRunMonitor monitor)
    {
        using var pages = new PrivatePages();
        var pool = new PagePool(new PagePoolOptions { Allocator = pages.Allocator });
        RawRun raw;
        try
        {
            // The push thread takes the pool over on its first allocation; the pop thread frees through the
            // recycle ring (PagePool.Free off the owner thread).
            raw = Protocol.Run<PagePoolBuffer, PagePoolSource>(new(pool, size), new(pool, size), settings, monitor);
        }
        finally
        {
            // Both threads are gone: the coordinator may release the pool (page_pool_destroy).
            pool.SetOwnerThread();
            pool.Dispose();
        }

        return Figures(raw, settings.NrTest) with { LeakedPages = raw.ThreadsEnded ? pages.PagesInUse : null };
    }

    private static RunFigures RunSlab(int size, ProtocolSettings settings, IRunMonitor monitor)
    {
        using var pages = new PrivatePages();
        var cache = new SlabCache(pages.Allocator);

        // The push thread is the cache's only allocating thread; the pop thread frees with SlabCache.Free.
        RawRun raw = Protocol.Run<SlabFragment, SlabBenchSource>(new(cache, size), new(cache, size), settings, monitor);
        if (!raw.ThreadsEnded)
        {
            // The push thread may still be allocating: the cache is still its own.
            return Figures(raw, settings.NrTest);
        }

        cache.Dispose();
        return Figures(raw, settings.NrTest) with { LeakedPages = pages.PagesInUse };
    }

    private static RunFigures Figures(RawRun raw, long ops)
    {
        if (raw.Failure is not null)
        {
            throw new BenchFailureException(raw.Failure);
        }

        return new RunFigures
        {
            Value = raw.ElapsedSeconds > 0 ? ops / raw.ElapsedSeconds / 1e6 : 0,
            GcBytes = raw.GcAllocatedBytes,
            Gen0 = raw.Gen0,
            Gen1 = raw.Gen1,
            Gen2 = raw.Gen2,
            Extra = [new("elapsed_s", raw.ElapsedSeconds), new("dropped", raw.Dropped)],
        };
    }

    /// <summary>Shows the bench's label instead of the one the push/pop test runner gives its runs.</summary>
    private sealed class Relabelled(IRunMonitor inner, string label) : IRunMonitor
    {
        public void Watch(string ignored, long total, RunPoller poll) => inner.Watch(label, total, poll);
    }
}
