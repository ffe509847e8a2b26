using System.Diagnostics.Metrics;
using PageFrag.Diagnostics;
using PageFrag.Pages;
using PageFrag.Pool;
using PageFrag.Tests.Infrastructure;
using PageFrag.Tests.Pool;

namespace PageFrag.Tests.Diagnostics;

/// <summary>The page pool instruments of the <c>PageFrag</c> meter report what <see cref="PagePool.GetStats()"/> says.</summary>
public class PagePoolMetricsTests
{
    [Fact]
    public void The_page_pool_instruments_report_the_kernel_stats_by_kind_and_the_pages_in_flight()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        using var metrics = new PageFragMetrics();
        PagePool pool = PoolTesting.NewPool(allocator, poolSize: 64);
        metrics.Track(pool);

        var held = new List<PagePoolBuffer>();
        for (int i = 0; i < 10; i++)
        {
            Assert.True(pool.TryAllocPage(out PagePoolBuffer buffer));
            held.Add(buffer);
        }

        pool.RecycleDirect(held[0].NetMem);                                   // into the owner's cache
        PoolTesting.OnOtherThread(() => pool.PutFullPage(held[1].NetMem, allowDirect: false)); // through the ring
        Dictionary<(string, string), long> seen = Observe(metrics.Meter, pool.Id);

        PagePoolStats stats = pool.GetStats();
        Assert.Equal(stats.AllocFast, seen[("pagefrag.page_pool.alloc", "fast")]);
        Assert.Equal(stats.AllocSlow, seen[("pagefrag.page_pool.alloc", "slow")]);
        Assert.Equal(stats.AllocSlowHighOrder, seen[("pagefrag.page_pool.alloc", "slow_high_order")]);
        Assert.Equal(stats.AllocEmpty, seen[("pagefrag.page_pool.alloc", "empty")]);
        Assert.Equal(stats.AllocRefill, seen[("pagefrag.page_pool.alloc", "refill")]);
        Assert.Equal(stats.AllocWaive, seen[("pagefrag.page_pool.alloc", "waive")]);
        Assert.Equal(1, seen[("pagefrag.page_pool.recycle", "cached")]);
        Assert.Equal(1, seen[("pagefrag.page_pool.recycle", "ring")]);
        Assert.Equal(0, seen[("pagefrag.page_pool.recycle", "cache_full")]);
        Assert.Equal(0, seen[("pagefrag.page_pool.recycle", "ring_full")]);
        Assert.Equal(0, seen[("pagefrag.page_pool.recycle", "released_refcnt")]);
        Assert.True(stats.AllocFast + stats.AllocSlow > 0);
        Assert.Equal(pool.InFlight, seen[("pagefrag.page_pool.in_flight", "")]);
        Assert.True(pool.InFlight >= 10);

        // Disposed with pages still out, the pool keeps reporting; once they are back it stops.
        pool.Dispose();
        Assert.Equal(8, Observe(metrics.Meter, pool.Id)[("pagefrag.page_pool.in_flight", "")]);
        foreach (PagePoolBuffer buffer in held.Skip(2))
        {
            pool.PutFullPage(buffer.NetMem, allowDirect: false);
        }

        Assert.True(pool.IsReleased);
        Assert.Empty(Observe(metrics.Meter, pool.Id));
        Leaks.AssertNone(allocator);
    }

    /// <summary>One observation of every page pool instrument of <paramref name="meter"/> for pool <paramref name="poolId"/>, keyed by (instrument, kind).</summary>
    private static Dictionary<(string, string), long> Observe(Meter meter, int poolId)
    {
        var seen = new Dictionary<(string, string), long>();
        using var listener = new MeterListener
        {
            InstrumentPublished = (instrument, l) =>
            {
                if (ReferenceEquals(instrument.Meter, meter) && instrument.Name.StartsWith("pagefrag.page_pool.", StringComparison.Ordinal))
                {
                    l.EnableMeasurementEvents(instrument);
                }
            },
        };
        listener.SetMeasurementEventCallback<long>((instrument, value, tags, _) =>
        {
            string kind = "";
            bool ours = false;
            foreach (KeyValuePair<string, object?> tag in tags)
            {
                ours |= tag.Key == "pagefrag.page_pool.id" && (int)tag.Value! == poolId;
                if (tag.Key.EndsWith(".kind", StringComparison.Ordinal))
                {
                    kind = (string)tag.Value!;
                }
            }

            if (ours)
            {
                seen[(instrument.Name, kind)] = value;
            }
        });
        listener.Start();
        listener.RecordObservableInstruments();
        return seen;
    }
}
