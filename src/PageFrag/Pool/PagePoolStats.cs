namespace PageFrag.Pool;

/// <summary>
/// The counters of a <see cref="PagePool"/>, named as the kernel's <c>page_pool_stats</c>
/// (alloc_stats and recycle_stats). <see cref="PagePool.GetStats(ref PagePoolStats)"/> adds into one, so
/// several pools can be summed, as page_pool_get_stats does.
/// </summary>
/// <remarks>A plain value; reading a pool's counters from another thread than its owner gives a snapshot that
/// may be a few events behind, as in the kernel.</remarks>
public struct PagePoolStats
{
    /// <summary>Allocations served from the array cache (fast).</summary>
    public long AllocFast { get; set; }

    /// <summary>Order-0 allocations that went to the page allocator or the provider, one per batch (slow).</summary>
    public long AllocSlow { get; set; }

    /// <summary>High-order allocations that went to the page allocator (slow_high_order).</summary>
    public long AllocSlowHighOrder { get; set; }

    /// <summary>Times the cache and the ring were both empty (empty).</summary>
    public long AllocEmpty { get; set; }

    /// <summary>Allocations served after refilling the cache from the ring (refill).</summary>
    public long AllocRefill { get; set; }

    /// <summary>Pages of the wrong node found in the ring and released (waive).</summary>
    public long AllocWaive { get; set; }

    /// <summary>Pages recycled directly into the cache (cached).</summary>
    public long RecycleCached { get; set; }

    /// <summary>Direct recycles that found the cache full and went to the ring (cache_full).</summary>
    public long RecycleCacheFull { get; set; }

    /// <summary>Pages recycled into the ring (ring).</summary>
    public long RecycleRing { get; set; }

    /// <summary>Pages released to the allocator because the ring was full (ring_full).</summary>
    public long RecycleRingFull { get; set; }

    /// <summary>Pages released because they could not be recycled: another page reference, or pfmemalloc
    /// (released_refcnt).</summary>
    public long RecycleReleasedRefcnt { get; set; }

    /// <summary>Adds <paramref name="other"/> into this value.</summary>
    public void Add(in PagePoolStats other)
    {
        AllocFast += other.AllocFast;
        AllocSlow += other.AllocSlow;
        AllocSlowHighOrder += other.AllocSlowHighOrder;
        AllocEmpty += other.AllocEmpty;
        AllocRefill += other.AllocRefill;
        AllocWaive += other.AllocWaive;
        RecycleCached += other.RecycleCached;
        RecycleCacheFull += other.RecycleCacheFull;
        RecycleRing += other.RecycleRing;
        RecycleRingFull += other.RecycleRingFull;
        RecycleReleasedRefcnt += other.RecycleReleasedRefcnt;
    }

    /// <inheritdoc/>
    public override readonly string ToString() =>
        $"alloc fast {AllocFast}, slow {AllocSlow}, slow_high_order {AllocSlowHighOrder}, empty {AllocEmpty}, refill {AllocRefill}, waive {AllocWaive}; " +
        $"recycle cached {RecycleCached}, cache_full {RecycleCacheFull}, ring {RecycleRing}, ring_full {RecycleRingFull}, released_refcnt {RecycleReleasedRefcnt}";
}
