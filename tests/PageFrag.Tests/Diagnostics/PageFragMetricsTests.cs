using System.Buffers;
using System.Diagnostics.Metrics;
using PageFrag.Buffers;
using PageFrag.Diagnostics;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;
using static PageFrag.Tests.Buffers.BufferTestSupport;

namespace PageFrag.Tests.Diagnostics;

public class PageFragMetricsTests
{
    /// <summary>Collects the last value of every instrument of <paramref name="meter"/>, for measurements tagged with <paramref name="owner"/> (pools) or any (allocators).</summary>
    private sealed class Collector : IDisposable
    {
        private readonly MeterListener _listener = new();
        private readonly Dictionary<string, long> _values = [];

        public Collector(Meter meter, string owner)
        {
            _listener.InstrumentPublished = (instrument, listener) =>
            {
                if (ReferenceEquals(instrument.Meter, meter))
                {
                    listener.EnableMeasurementEvents(instrument);
                }
            };
            _listener.SetMeasurementEventCallback<long>((instrument, value, tags, _) =>
            {
                bool isPool = instrument.Name.StartsWith("pagefrag.memory_pool.", StringComparison.Ordinal);
                string name = instrument.Name;
                foreach (KeyValuePair<string, object?> tag in tags)
                {
                    if (tag.Key == "pagefrag.page.state")
                    {
                        name += "/" + tag.Value;
                    }
                }

                foreach (KeyValuePair<string, object?> tag in tags)
                {
                    if (!isPool || (tag.Key == "pagefrag.memory_pool.owner" && (string?)tag.Value == owner))
                    {
                        _values[name] = value;
                        return;
                    }
                }
            });
            _listener.Start();
        }

        public long this[string name]
        {
            get
            {
                _values.Clear();
                _listener.RecordObservableInstruments();
                return _values.TryGetValue(name, out long v) ? v : -1;
            }
        }

        public void Dispose() => _listener.Dispose();
    }

    [Fact]
    public void The_pool_instruments_report_rented_buffers_truesize_pooled_refill_and_drained()
    {
        using PageAllocator allocator = WarmAllocator();
        using var metrics = new PageFragMetrics();
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator, Name = "test-pool" }))
        {
            metrics.Track(pool);
            using var collector = new Collector(metrics.Meter, "test-pool");

            IMemoryOwner<byte> a = pool.Rent(100);
            IMemoryOwner<byte> b = pool.Rent(4096);
            Assert.Equal(128 + 4096, collector["pagefrag.memory_pool.rented"]);
            Assert.Equal(2, collector["pagefrag.memory_pool.buffer.count"]);
            Assert.Equal(128 + 4096, collector["pagefrag.memory_pool.buffer.usage"]);
            Assert.Equal(32768, collector["pagefrag.memory_pool.refill"]);
            Assert.Equal(32768 - 128 - 4096, collector["pagefrag.memory_pool.pooled"]);

            a.Dispose();
            b.Dispose();
            Assert.Equal(0, collector["pagefrag.memory_pool.buffer.count"]);
            Assert.Equal(0, collector["pagefrag.memory_pool.buffer.usage"]);

            // Both came back on the renting thread, so they wait parked with their fragments for the next rent of their
            // size: pooled, and given back by the trim with the rest of the page.
            Assert.Equal(32768, collector["pagefrag.memory_pool.pooled"]);
            pool.Trim();
            Assert.Equal(32768, collector["pagefrag.memory_pool.drained"]);
            Assert.Equal(0, collector["pagefrag.memory_pool.pooled"]);
        }

        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void The_page_instruments_report_the_allocators_truth()
    {
        using PageAllocator allocator = WarmAllocator();
        using var metrics = new PageFragMetrics();
        metrics.Track(allocator);
        using var collector = new Collector(metrics.Meter, owner: "");
        Assert.True(allocator.TryAllocPages(2, AllocFlags.None, out Page page));
        Assert.Equal(4, collector["pagefrag.page.usage/used"]);
        PageAllocatorStats stats = allocator.GetStats();
        Assert.Equal(stats.TotalPages, collector["pagefrag.page.usage/used"] + collector["pagefrag.page.usage/cached"] + collector["pagefrag.page.usage/free"]);
        Assert.Equal(stats.Arenas, collector["pagefrag.arena.count"]);
        Assert.Equal(-1, collector["pagefrag.page.limit"]);
        allocator.FreePages(page);
        Assert.Equal(0, collector["pagefrag.page.usage/used"]);
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void The_page_limit_is_reported_in_pages_for_an_allocator_with_MaxBytes()
    {
        using var allocator = new PageAllocator(new PageAllocatorOptions { ArenaSize = 1 << 16, MaxBytes = 1 << 17 });
        using var metrics = new PageFragMetrics();
        metrics.Track(allocator);
        using var collector = new Collector(metrics.Meter, owner: "");
        Assert.Equal(32, collector["pagefrag.page.limit"]);
        Assert.Equal(0, collector["pagefrag.page.usage/used"]);
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Nothing_is_observed_while_no_listener_is_enabled_and_disposed_pools_stop_reporting()
    {
        using PageAllocator allocator = WarmAllocator();
        using var metrics = new PageFragMetrics();
        var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator, Name = "quiet" });
        metrics.Track(pool);
        pool.Rent(100).Dispose();
        Assert.Equal(0, metrics.Observations);

        using (var collector = new Collector(metrics.Meter, "quiet"))
        {
            Assert.Equal(128, collector["pagefrag.memory_pool.rented"]);
            Assert.NotEqual(0, metrics.Observations);
            pool.Dispose();
            Assert.Equal(-1, collector["pagefrag.memory_pool.rented"]);
        }

        Leaks.AssertNone(allocator);
    }
}
