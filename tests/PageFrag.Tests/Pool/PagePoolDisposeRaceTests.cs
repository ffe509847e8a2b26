using System.Diagnostics;
using System.Reflection;
using PageFrag.Frag;
using PageFrag.Pages;
using PageFrag.Pool;
using PageFrag.Tests.Frag;
using PageFrag.Tests.Infrastructure;

namespace PageFrag.Tests.Pool;

/// <summary>
/// Two threads destroying one page pool at once (two <c>Dispose</c> calls, or the safety net's finalizer racing a
/// <c>Dispose</c>), and a <c>Dispose</c> racing frees of buffers in flight on another thread, in the default mode:
/// every page the pool holds goes back exactly once, buffers still held keep their bytes, and the pool is
/// released when the last one comes back, with no negative in-flight count.
/// </summary>
public class PagePoolDisposeRaceTests
{
    private const int RaceMilliseconds = 1500;

    /// <summary>What the second thread does while the test thread disposes the pool.</summary>
    public enum Racer
    {
        Dispose,

        // The safety net: what the finalizer of a pool nobody disposed does, run here on purpose.
        Finalizer,

        // Frees the pool's buffers still in flight (a whole page and a fragment).
        FreeInFlight,
    }

    private static readonly MethodInfo s_finalize =
        typeof(PagePool).GetMethod("Finalize", BindingFlags.Instance | BindingFlags.NonPublic)!;

    [Theory]
    [InlineData(Racer.Dispose)]
    [InlineData(Racer.Finalizer)]
    [InlineData(Racer.FreeInFlight)]
    public void A_pool_destroyed_by_two_threads_at_once_gives_each_page_back_once(Racer racer)
    {
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 256 * 1024);
        Assert.False(allocator.DetectMisuse);
        PagePool pool = null!;
        PagePoolBuffer wholeLive = default, fragLive = default;
        int negative = 0;

        var gate = new RaceGate(() =>
        {
            switch (racer)
            {
                case Racer.Dispose: pool.Dispose(); break;
                case Racer.Finalizer: s_finalize.Invoke(pool, null); break;
                default:
                    PagePool.Free(wholeLive);
                    PagePool.Free(fragLive);
                    break;
            }
        });

        var innocent = new PageFragCache(allocator);
        var stop = Stopwatch.StartNew();
        int rounds = 0;
        try
        {
            while (stop.ElapsedMilliseconds < RaceMilliseconds && gate.Failure is null)
            {
                pool = PoolTesting.NewPool(allocator, poolSize: 16);
                pool.Warning += (_, e) =>
                {
                    if (e.Kind == PagePoolWarningKind.NegativeInFlight)
                    {
                        Interlocked.Increment(ref negative);
                    }
                };

                // What the pool holds when destroyed: a fragment page with a live and a freed fragment, a whole page
                // in flight, a page in the owner's cache and one in the ring.
                Assert.True(pool.TryAllocFrag(256, out fragLive));
                Assert.True(pool.TryAllocFrag(256, out PagePoolBuffer fragFreed));
                Assert.True(pool.TryAllocPage(out wholeLive));
                Assert.True(pool.TryAllocPage(out PagePoolBuffer cached));
                Assert.True(pool.TryAllocPage(out PagePoolBuffer ringed));
                fragLive.Span.Fill((byte)rounds);
                wholeLive.Span.Fill((byte)(rounds + 1));
                PagePool.Free(fragFreed);
                pool.PutBuffer(cached, allowDirect: true);
                pool.PutBuffer(ringed, allowDirect: false);

                rounds++;
                gate.Race(pool.Dispose);
                Assert.Null(gate.Failure);
                GC.SuppressFinalize(pool);
                Assert.True(pool.IsDisposed);
                Assert.True(allocator.PagesInUse >= 0, $"the allocator's page count went negative: {allocator.PagesInUse}");

                // Another owner takes pages from the same allocator and pattern-checks them while the pool's
                // buffers still out are checked and freed: no page may have been given away under them.
                Assert.True(innocent.TryAlloc(2048, out PageFragment i1));
                FragKit.Fill(i1, rounds);
                if (racer != Racer.FreeInFlight)
                {
                    Assert.Equal(2, pool.InFlight);
                    Assert.False(fragLive.Span.ContainsAnyExcept((byte)(rounds - 1)), "a live fragment's bytes were handed to someone else");
                    Assert.False(wholeLive.Span.ContainsAnyExcept((byte)rounds), "a live page's bytes were handed to someone else");
                    PagePool.Free(wholeLive);
                    PagePool.Free(fragLive);
                }

                Assert.True(FragKit.IsIntact(i1, rounds), "the innocent cache's fragment was handed to someone else");
                PageFragCache.Free(i1);
                innocent.Drain();
                Assert.Equal(0, pool.InFlight);
                Assert.True(pool.IsReleased, "the pool should be freed once nothing is in flight");
                Leaks.AssertNone(allocator);
            }
        }
        finally
        {
            gate.Dispose();
        }

        Assert.Null(gate.Failure);
        Assert.Equal(0, negative);
        Assert.True(rounds > 10, $"only {rounds} rounds ran");
        FragKit.DrainAndAssertNoLeak(innocent, allocator);
    }
}
