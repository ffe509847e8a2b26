using System.Diagnostics.Metrics;
using System.Runtime.CompilerServices;
using PageFrag.Buffers;
using PageFrag.Pages;
using PageFrag.Pool;

namespace PageFrag.Diagnostics;

/// <summary>
/// The <c>PageFrag</c> meter: what the memory pools, page allocators and page pools given to
/// <see cref="Track(PageFragMemoryPool)"/> hold and do, named by the OpenTelemetry rules (singular
/// namespaces, no <c>.total</c>, a state attribute rather than one instrument per state). docs/metrics.md
/// lists every instrument with its unit and meaning.
/// </summary>
/// <remarks>
/// <para>Every instrument is observable: it reads counters that the pools and allocators keep anyway
/// (the pools count rents under their per-CPU lock and returns with one interlocked add per CPU stripe),
/// and its callback runs only while a listener has enabled it. So the meter adds no branch and no work to
/// any allocation or free path, which is what guarding push instruments with <c>.Enabled</c> achieves
/// in Kestrel's <c>MemoryPoolMetrics</c>, taken one step further.</para>
/// <list type="table">
/// <listheader><term>instrument</term><description>kind, unit: meaning</description></listheader>
/// <item><term>pagefrag.memory_pool.pooled</term><description>up-down counter, By: free bytes at the end of the caches' current pages, ready for rents</description></item>
/// <item><term>pagefrag.memory_pool.refill</term><description>counter, By: bytes of pages and blocks the pool took from its allocator (pages recycle through the allocator: this is traffic, not new memory)</description></item>
/// <item><term>pagefrag.memory_pool.drained</term><description>counter, By: free page bytes the caches gave back when trimmed</description></item>
/// <item><term>pagefrag.memory_pool.rented</term><description>counter, By: bytes rented (true sizes)</description></item>
/// <item><term>pagefrag.memory_pool.buffer.count</term><description>up-down counter, {buffer}: buffers rented and not given back</description></item>
/// <item><term>pagefrag.memory_pool.buffer.usage</term><description>up-down counter, By: memory those buffers keep from reuse (truesize)</description></item>
/// <item><term>pagefrag.page.usage</term><description>up-down counter, {page}: the allocator's pages by <c>pagefrag.page.state</c>: <c>used</c> (handed out, caches and pools included), <c>cached</c> (free, on the per-CPU lists), <c>free</c> (on the buddy lists); the sum is the pages in arenas</description></item>
/// <item><term>pagefrag.page.limit</term><description>up-down counter, {page}: the allocator's page limit (only for allocators with <see cref="PageAllocatorOptions.MaxBytes"/>)</description></item>
/// <item><term>pagefrag.arena.count</term><description>up-down counter, {arena}: arenas the allocator holds</description></item>
/// <item><term>pagefrag.page_pool.alloc</term><description>counter, {page}: the page pool's allocation counters (page_pool_get_stats), one series per <c>pagefrag.page_pool.alloc.kind</c>: fast, slow, slow_high_order, empty, refill, waive</description></item>
/// <item><term>pagefrag.page_pool.recycle</term><description>counter, {page}: the recycle counters, one series per <c>pagefrag.page_pool.recycle.kind</c>: cached, cache_full, ring, ring_full, released_refcnt</description></item>
/// <item><term>pagefrag.page_pool.in_flight</term><description>up-down counter, {page}: pages the pool took and has not given back (in its cache, its ring or in use)</description></item>
/// </list>
/// <para>Pool measurements carry <c>pagefrag.memory_pool.owner</c> (the pool's name, when it has one) and
/// <c>pagefrag.memory_pool.id</c>; allocator measurements carry <c>pagefrag.allocator.id</c>; page pool
/// measurements carry <c>pagefrag.page_pool.id</c> (the pool's <see cref="PagePool.Id"/>). Memory pool and
/// allocator ids are assigned in tracking order.</para>
/// <para>Threading: any thread. Tracked objects are held weakly; disposed pools stop reporting.</para>
/// </remarks>
public sealed class PageFragMetrics : IDisposable
{
    /// <summary>The meter's name.</summary>
    public const string MeterName = "PageFrag";

    private readonly Meter _meter;
    private readonly bool _ownsMeter;
    private readonly ConditionalWeakTable<PageFragMemoryPool, Tracked> _pools = new();
    private readonly ConditionalWeakTable<PageAllocator, Tracked> _allocators = new();
    private readonly ConditionalWeakTable<PagePool, Tracked> _pagePools = new();
    private int _nextPoolId;
    private int _nextAllocatorId;
    private long _observations;

    /// <summary>Creates the meter, through <paramref name="meterFactory"/> when given (the DI way), else directly.</summary>
    public PageFragMetrics(IMeterFactory? meterFactory = null)
    {
        _ownsMeter = meterFactory is null;
        _meter = meterFactory?.Create(MeterName) ?? new Meter(MeterName);

        _meter.CreateObservableUpDownCounter("pagefrag.memory_pool.pooled", () => ObservePools(static s => s.PooledBytes), "By",
            "Free bytes at the end of the pool's cached pages, ready for the next rents.");
        _meter.CreateObservableCounter("pagefrag.memory_pool.refill", () => ObservePools(static s => s.AllocatedBytes), "By",
            "Bytes of pages and blocks the pool took from its page allocator (recycled pages included: not new memory).");
        _meter.CreateObservableCounter("pagefrag.memory_pool.drained", () => ObservePools(static s => s.EvictedBytes), "By",
            "Free page bytes the pool's caches gave back when trimmed.");
        _meter.CreateObservableCounter("pagefrag.memory_pool.rented", () => ObservePools(static s => s.RentedBytes), "By",
            "Bytes rented from the pool (true sizes).");
        _meter.CreateObservableUpDownCounter("pagefrag.memory_pool.buffer.count", () => ObservePools(static s => s.OutstandingBuffers), "{buffer}",
            "Buffers rented and not yet given back.");
        _meter.CreateObservableUpDownCounter("pagefrag.memory_pool.buffer.usage", () => ObservePools(static s => s.OutstandingBytes), "By",
            "Memory kept from reuse by the buffers rented and not yet given back (true sizes).");
        _meter.CreateObservableUpDownCounter("pagefrag.page.usage", ObservePageUsage, "{page}",
            "Pages of the page allocator's arenas, by state: used (handed out, caches and pools included), cached (free, on the per-CPU lists), free.");
        _meter.CreateObservableUpDownCounter("pagefrag.page.limit", ObservePageLimit, "{page}",
            "The page allocator's limit in pages (MaxBytes), for allocators that have one.");
        _meter.CreateObservableUpDownCounter("pagefrag.arena.count", () => ObserveAllocators(static a => a.GetStats().Arenas), "{arena}",
            "Arenas (pinned arrays) the page allocator holds.");
        _meter.CreateObservableCounter("pagefrag.page_pool.alloc", ObservePagePoolAllocs, "{page}",
            "Page pool allocations by path (page_pool_get_stats alloc_stats).");
        _meter.CreateObservableCounter("pagefrag.page_pool.recycle", ObservePagePoolRecycles, "{page}",
            "Page pool recycling by outcome (page_pool_get_stats recycle_stats).");
        _meter.CreateObservableUpDownCounter("pagefrag.page_pool.in_flight", ObservePagePoolInFlight, "{page}",
            "Pages the page pool took and has not given back.");
    }

    /// <summary>The meter (to filter on in a <see cref="MeterListener"/>).</summary>
    public Meter Meter => _meter;

    /// <summary>Observation callbacks run so far (they run only while a listener is enabled).</summary>
    internal long Observations => Interlocked.Read(ref _observations);

    /// <summary>Reports <paramref name="pool"/> and its allocator until the pool is disposed or collected.</summary>
    /// <exception cref="ArgumentNullException"><paramref name="pool"/> is null.</exception>
    public void Track(PageFragMemoryPool pool)
    {
        ArgumentNullException.ThrowIfNull(pool);
        _pools.TryAdd(pool, new Tracked(Interlocked.Increment(ref _nextPoolId)));
        Track(pool.Allocator);
    }

    /// <summary>Reports <paramref name="allocator"/>'s pages until it is collected.</summary>
    /// <exception cref="ArgumentNullException"><paramref name="allocator"/> is null.</exception>
    public void Track(PageAllocator allocator)
    {
        ArgumentNullException.ThrowIfNull(allocator);
        _allocators.TryAdd(allocator, new Tracked(Interlocked.Increment(ref _nextAllocatorId)));
    }

    /// <summary>Reports <paramref name="pool"/>'s statistics until it is released (every page back) or collected.</summary>
    /// <exception cref="ArgumentNullException"><paramref name="pool"/> is null.</exception>
    public void Track(PagePool pool)
    {
        ArgumentNullException.ThrowIfNull(pool);
        _pagePools.TryAdd(pool, new Tracked(pool.Id));
    }

    /// <summary>Disposes the meter if this object created it (a meter from an <see cref="IMeterFactory"/> belongs to the factory).</summary>
    public void Dispose()
    {
        if (_ownsMeter)
        {
            _meter.Dispose();
        }
    }

    private IEnumerable<Measurement<long>> ObservePools(Func<PageFragMemoryPoolStats, long> field)
    {
        Interlocked.Increment(ref _observations);
        var measurements = new List<Measurement<long>>();
        foreach (KeyValuePair<PageFragMemoryPool, Tracked> entry in _pools)
        {
            PageFragMemoryPool pool = entry.Key;
            if (pool.IsDisposed)
            {
                continue;
            }

            KeyValuePair<string, object?> id = new("pagefrag.memory_pool.id", entry.Value.Id);
            long value = field(pool.GetStats());
            measurements.Add(pool.Name is null
                ? new Measurement<long>(value, id)
                : new Measurement<long>(value, id, new KeyValuePair<string, object?>("pagefrag.memory_pool.owner", pool.Name)));
        }

        return measurements;
    }

    private IEnumerable<Measurement<long>> ObserveAllocators(Func<PageAllocator, long> field)
    {
        Interlocked.Increment(ref _observations);
        var measurements = new List<Measurement<long>>();
        foreach (KeyValuePair<PageAllocator, Tracked> entry in _allocators)
        {
            measurements.Add(new Measurement<long>(field(entry.Key), new KeyValuePair<string, object?>("pagefrag.allocator.id", entry.Value.Id)));
        }

        return measurements;
    }

    private IEnumerable<Measurement<long>> ObservePageUsage()
    {
        Interlocked.Increment(ref _observations);
        var measurements = new List<Measurement<long>>();
        foreach (KeyValuePair<PageAllocator, Tracked> entry in _allocators)
        {
            PageAllocatorStats stats = entry.Key.GetStats();
            KeyValuePair<string, object?> id = new("pagefrag.allocator.id", entry.Value.Id);
            measurements.Add(new Measurement<long>(stats.PagesInUse, id, new KeyValuePair<string, object?>("pagefrag.page.state", "used")));
            measurements.Add(new Measurement<long>(stats.CachedPages, id, new KeyValuePair<string, object?>("pagefrag.page.state", "cached")));
            measurements.Add(new Measurement<long>(stats.FreePages, id, new KeyValuePair<string, object?>("pagefrag.page.state", "free")));
        }

        return measurements;
    }

    private IEnumerable<Measurement<long>> ObservePageLimit()
    {
        Interlocked.Increment(ref _observations);
        var measurements = new List<Measurement<long>>();
        foreach (KeyValuePair<PageAllocator, Tracked> entry in _allocators)
        {
            long max = entry.Key.GetStats().MaxPages;
            if (max >= 0)
            {
                measurements.Add(new Measurement<long>(max, new KeyValuePair<string, object?>("pagefrag.allocator.id", entry.Value.Id)));
            }
        }

        return measurements;
    }

    private IEnumerable<Measurement<long>> ObservePagePoolAllocs() => ObservePagePools("pagefrag.page_pool.alloc.kind", static (in PagePoolStats s) =>
    [
        ("fast", s.AllocFast), ("slow", s.AllocSlow), ("slow_high_order", s.AllocSlowHighOrder),
        ("empty", s.AllocEmpty), ("refill", s.AllocRefill), ("waive", s.AllocWaive),
    ]);

    private IEnumerable<Measurement<long>> ObservePagePoolRecycles() => ObservePagePools("pagefrag.page_pool.recycle.kind", static (in PagePoolStats s) =>
    [
        ("cached", s.RecycleCached), ("cache_full", s.RecycleCacheFull), ("ring", s.RecycleRing),
        ("ring_full", s.RecycleRingFull), ("released_refcnt", s.RecycleReleasedRefcnt),
    ]);

    private IEnumerable<Measurement<long>> ObservePagePoolInFlight()
    {
        Interlocked.Increment(ref _observations);
        var measurements = new List<Measurement<long>>();
        foreach (KeyValuePair<PagePool, Tracked> entry in _pagePools)
        {
            if (!entry.Key.IsReleased)
            {
                measurements.Add(new Measurement<long>(entry.Key.InFlight, new KeyValuePair<string, object?>("pagefrag.page_pool.id", entry.Value.Id)));
            }
        }

        return measurements;
    }

    private delegate (string Kind, long Value)[] StatsFields(in PagePoolStats stats);

    private IEnumerable<Measurement<long>> ObservePagePools(string kindTag, StatsFields fields)
    {
        Interlocked.Increment(ref _observations);
        var measurements = new List<Measurement<long>>();
        foreach (KeyValuePair<PagePool, Tracked> entry in _pagePools)
        {
            if (entry.Key.IsReleased)
            {
                continue;
            }

            KeyValuePair<string, object?> id = new("pagefrag.page_pool.id", entry.Value.Id);
            foreach ((string kind, long value) in fields(entry.Key.GetStats()))
            {
                measurements.Add(new Measurement<long>(value, id, new KeyValuePair<string, object?>(kindTag, kind)));
            }
        }

        return measurements;
    }

    private sealed class Tracked(int id)
    {
        public int Id { get; } = id;
    }
}
