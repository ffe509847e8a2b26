using PageFrag.Pages;

namespace PageFrag.Pool;

/// <summary>
/// Parameters of a <see cref="PagePool"/> (the kernel's <c>struct page_pool_params</c>), checked when the pool is
/// created.
/// </summary>
/// <remarks>
/// Set the properties before handing the object to <see cref="PagePool"/>; the pool keeps it and reads it from
/// any thread afterwards, so do not share one instance with code that could still change it (init-only
/// properties make that hard anyway). Defaults: <see cref="PageAllocator.Shared"/>, order 0, a recycle ring of 1024 entries, node -1 (the host's
/// node), no DMA flags, <see cref="MaxLen"/> 0, <see cref="Offset"/> 0, no memory provider, a
/// <see cref="HostDmaMapper"/>, <see cref="AllocFlags.None"/>, a release retry every second and a stall warning
/// every 60 seconds.
/// </remarks>
public sealed class PagePoolOptions
{
    /// <summary>The default size of the recycle ring (pool_size).</summary>
    public const int DefaultPoolSize = 1024;

    /// <summary>The largest recycle ring the kernel accepts (32768).</summary>
    public const int MaxPoolSize = 32768;

    /// <summary>Where host pages come from. Default <see cref="PageAllocator.Shared"/>.</summary>
    public PageAllocator? Allocator { get; init; }

    /// <summary>Order of the pool's pages: each is 4096 &lt;&lt; Order bytes. 0 to the allocator's
    /// <see cref="PageAllocator.MaxOrder"/>. Default 0.</summary>
    public int Order { get; init; }

    /// <summary>Entries of the recycle ring, 1 to 32768, rounded up to a power of two. Default 1024.</summary>
    public int PoolSize { get; init; } = DefaultPoolSize;

    /// <summary>
    /// Preferred memory node; -1 (NUMA_NO_NODE) means the host's node, which is 0 since PageFrag's arenas are not
    /// bound to nodes. Pages of another node found in the ring are released (waive). Default -1.
    /// </summary>
    public int Node { get; init; } = -1;

    /// <summary>DMA mapping and syncing. Default <see cref="PagePoolFlags.None"/>.</summary>
    public PagePoolFlags Flags { get; init; }

    /// <summary>Most bytes synced for the device per recycle (max_len). Required (&gt; 0) with
    /// <see cref="PagePoolFlags.DmaSyncForDevice"/>; <see cref="Offset"/> + MaxLen must fit in a page. Default 0.</summary>
    public int MaxLen { get; init; }

    /// <summary>Where the device starts writing in a page (offset, the headroom). Default 0.</summary>
    public int Offset { get; init; }

    /// <summary>Memory to use instead of the allocator's pages (mp_ops). Default none.</summary>
    public IMemoryProvider? MemoryProvider { get; init; }

    /// <summary>The device mapper used with the DMA flags. Default a new <see cref="HostDmaMapper"/>.</summary>
    public IDmaMapper? DmaMapper { get; init; }

    /// <summary>Flags of the pool's page allocations (the gfp mask). Default <see cref="AllocFlags.None"/>.</summary>
    public AllocFlags AllocFlags { get; init; }

    /// <summary>How often a disposed pool with pages still in flight retries its release (DEFER_TIME). Default 1 s.</summary>
    public TimeSpan ReleaseRetryPeriod { get; init; } = TimeSpan.FromSeconds(1);

    /// <summary>After how long, and then how often, a stalled release raises <see cref="PagePool.Warning"/>
    /// (DEFER_WARN_INTERVAL). Default 60 s.</summary>
    public TimeSpan StallWarningInterval { get; init; } = TimeSpan.FromSeconds(60);

    internal void Validate(PageAllocator allocator)
    {
        if ((uint)Order > (uint)allocator.MaxOrder)
        {
            ThrowHelper.ArgumentOutOfRange(nameof(Order), Order, $"Order must be between 0 and the allocator's MaxOrder ({allocator.MaxOrder}).");
        }

        if (PoolSize < 1 || PoolSize > MaxPoolSize)
        {
            ThrowHelper.ArgumentOutOfRange(nameof(PoolSize), PoolSize, $"PoolSize must be between 1 and {MaxPoolSize}.");
        }

        if (Node < -1)
        {
            ThrowHelper.ArgumentOutOfRange(nameof(Node), Node, "Node must be -1 (no preference) or a node number.");
        }

        if ((Flags & ~(PagePoolFlags.DmaMap | PagePoolFlags.DmaSyncForDevice)) != 0)
        {
            ThrowHelper.ArgumentOutOfRange(nameof(Flags), Flags, "Unknown page pool flags.");
        }

        int pageSize = PageConstants.PageSize << Order;
        if (Offset < 0 || MaxLen < 0 || (long)Offset + MaxLen > pageSize)
        {
            ThrowHelper.ArgumentOutOfRange(nameof(MaxLen), MaxLen, $"Offset and MaxLen must be non-negative and Offset + MaxLen at most the page size ({pageSize}).");
        }

        if ((Flags & PagePoolFlags.DmaSyncForDevice) != 0)
        {
            if ((Flags & PagePoolFlags.DmaMap) == 0)
            {
                ThrowHelper.Argument(nameof(Flags), "DmaSyncForDevice requires DmaMap: only mapped pages can be synced.");
            }

            if (MaxLen == 0)
            {
                ThrowHelper.ArgumentOutOfRange(nameof(MaxLen), MaxLen, "DmaSyncForDevice requires MaxLen > 0 (the bytes synced per recycle).");
            }
        }

        if ((AllocFlags & ~(AllocFlags.Opportunistic | AllocFlags.MayUseReserve)) != 0)
        {
            ThrowHelper.ArgumentOutOfRange(nameof(AllocFlags), AllocFlags, "Unknown allocation flags.");
        }

        if (ReleaseRetryPeriod <= TimeSpan.Zero || ReleaseRetryPeriod.TotalMilliseconds > int.MaxValue)
        {
            ThrowHelper.ArgumentOutOfRange(nameof(ReleaseRetryPeriod), ReleaseRetryPeriod, "ReleaseRetryPeriod must be positive and below 24 days.");
        }

        if (StallWarningInterval <= TimeSpan.Zero)
        {
            ThrowHelper.ArgumentOutOfRange(nameof(StallWarningInterval), StallWarningInterval, "StallWarningInterval must be positive.");
        }
    }
}
