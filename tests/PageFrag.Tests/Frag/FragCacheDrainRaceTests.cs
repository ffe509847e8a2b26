using System.Diagnostics;
using System.Reflection;
using PageFrag.Frag;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;

namespace PageFrag.Tests.Frag;

/// <summary>
/// Two threads leaving one cache's page at once (a shared cache misused, or the safety net's finalizer racing a
/// <c>Dispose</c>), in the default mode: the cache's remaining references on its page are given back exactly once,
/// so no page goes back to the allocator under a live fragment, none is lost for good, and no count goes negative.
/// </summary>
public class FragCacheDrainRaceTests
{
    private const int RaceMilliseconds = 1500;

    /// <summary>A way to leave the page.</summary>
    public enum Leave
    {
        Drain,
        Dispose,

        // The safety net: what the finalizer of a cache nobody disposed does, run here on purpose.
        Finalizer,
    }

    private static readonly MethodInfo s_finalize =
        typeof(PageFragCache).GetMethod("Finalize", BindingFlags.Instance | BindingFlags.NonPublic)!;

    [Theory]
    [InlineData(Leave.Drain, Leave.Drain)]
    [InlineData(Leave.Dispose, Leave.Dispose)]
    [InlineData(Leave.Drain, Leave.Dispose)]
    [InlineData(Leave.Finalizer, Leave.Dispose)]
    public void Two_racing_drains_of_one_cache_give_its_references_back_once(Leave first, Leave second)
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        Assert.False(allocator.DetectMisuse);
        PageFragCache cache = null!;

        void Run(Leave way)
        {
            switch (way)
            {
                case Leave.Drain: cache.Drain(); break;
                case Leave.Dispose: cache.Dispose(); break;
                default: s_finalize.Invoke(cache, null); break;
            }
        }

        var gate = new RaceGate(() => Run(second));

        var stop = Stopwatch.StartNew();
        int rounds = 0;
        var innocent = new PageFragCache(allocator);
        try
        {
            // The budget, but at least 20 rounds (a loaded machine ran only 7 in it), and never more than 30 s.
            while ((stop.ElapsedMilliseconds < RaceMilliseconds || rounds < 20) && stop.ElapsedMilliseconds < 30_000 && gate.Failure is null)
            {
                // Odd rounds leave one fragment live on the page; even rounds leave none, so the drain that
                // brings the count to zero returns the page and a second give-back would hit its next owner.
                bool keepOne = (rounds & 1) == 1;
                cache = new PageFragCache(allocator);
                Assert.True(cache.TryAlloc(64, out PageFragment freed));
                Assert.True(cache.TryAlloc(64, out PageFragment live));
                Page page = live.Page;
                FragKit.Fill(live, rounds);
                PageFragCache.Free(freed);
                if (!keepOne)
                {
                    PageFragCache.Free(live);
                }

                rounds++;
                gate.Race(() => Run(first));

                GC.SuppressFinalize(cache);

                // The page's count is exactly what is still out: the live fragment's reference, or none.
                Assert.Equal(keepOne ? 1 : 0, page.RefCount);
                Assert.True(allocator.PagesInUse >= 0, $"the allocator's page count went negative: {allocator.PagesInUse}");

                // Another cache now takes pages from the same allocator (likely the same page) and pattern-checks
                // its fragments while the racers' fragment is freed: nobody may hand out or return its bytes.
                Assert.True(innocent.TryAlloc(64, out PageFragment i1));
                Assert.True(innocent.TryAlloc(64, out PageFragment i2));
                FragKit.Fill(i1, rounds + 1);
                FragKit.Fill(i2, rounds + 2);
                if (keepOne)
                {
                    Assert.True(FragKit.IsIntact(live, rounds - 1), "a live fragment's bytes were handed to someone else");
                    PageFragCache.Free(live);
                    Assert.Equal(0, page.RefCount);
                }

                PageFragCache.Free(i1);
                Assert.True(FragKit.IsIntact(i2, rounds + 2), "the innocent cache's fragment was handed to someone else");
                Assert.True(i2.Page.RefCount > 0, "the innocent cache's page went back to the allocator under a live fragment");
                PageFragCache.Free(i2);
                innocent.Drain();
                Leaks.AssertNone(allocator);
            }
        }
        finally
        {
            gate.Dispose();
        }

        Assert.Null(gate.Failure);
        Assert.True(rounds > 10, $"only {rounds} rounds ran");
        FragKit.DrainAndAssertNoLeak(innocent, allocator);
    }
}
