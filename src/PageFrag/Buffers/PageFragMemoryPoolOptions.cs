using PageFrag.Frag;
using PageFrag.Pages;

namespace PageFrag.Buffers;

/// <summary>Settings of a <see cref="PageFragMemoryPool"/>, checked when the pool is created.</summary>
/// <remarks>
/// Defaults: pages from <see cref="PageAllocator.Shared"/>; <see cref="MaxBufferSize"/> 32768; 16 owner
/// objects kept ready per thread slot.
/// </remarks>
public sealed class PageFragMemoryPoolOptions
{
    /// <summary>The default <see cref="MaxBufferSize"/>: 32768 bytes, the fragment cache's big page.</summary>
    public const int DefaultMaxBufferSize = PageFragCache.MaxFragmentSize;

    /// <summary>
    /// Where pages come from. Null (the default) is <see cref="PageAllocator.Shared"/>: every such pool
    /// carves its buffers from the same arenas, so a pool per pipe or per connection costs the fragments it
    /// holds, not an arena each, and <see cref="PageFragMemoryPool.Trim"/> releases the shared allocator's
    /// entirely free arenas. A given allocator stays the caller's: the pool neither trims nor disposes it.
    /// A private allocator is worth it for a memory limit or a reserve of its own
    /// (<see cref="PageAllocatorOptions.MaxBytes"/>), fault injection, the detection mode, separate
    /// statistics, or to give a whole arena back to the GC at once by disposing it.
    /// </summary>
    public PageAllocator? Allocator { get; init; }

    /// <summary>
    /// The largest <c>Rent</c> accepted, reported as <see cref="System.Buffers.MemoryPool{T}.MaxBufferSize"/>:
    /// from 4096 to the allocator's largest block (<c>4096 &lt;&lt; MaxOrder</c>, 4 MiB with default
    /// arenas). Requests above 4096 bytes that the fragment cache cannot serve get a page block of their
    /// own. <c>System.IO.Pipelines</c> serves larger requests from <c>ArrayPool</c> by itself.
    /// Default <see cref="DefaultMaxBufferSize"/>.
    /// </summary>
    public int MaxBufferSize { get; init; } = DefaultMaxBufferSize;

    /// <summary>
    /// Who uses the pool (Kestrel passes "sockets", "kestrel", …): reported as the owner tag of the
    /// pool's metrics. Default null (no owner).
    /// </summary>
    public string? Name { get; init; }

    /// <summary>
    /// Owner objects created up front for each thread slot (the pool keeps one per thread that rents or
    /// returns; the name is kept from when slots were per CPU), so that renting stays allocation-free from
    /// the first call on a thread while at most this many of its buffers are out. From 0 to 1024. Default 16.
    /// </summary>
    public int OwnersPerCpu { get; init; } = 16;

    internal void Validate(PageAllocator allocator)
    {
        int largest = PageConstants.PageSize << allocator.MaxOrder;
        if (MaxBufferSize < PageConstants.PageSize || MaxBufferSize > largest)
        {
            ThrowHelper.ArgumentOutOfRange(nameof(MaxBufferSize), MaxBufferSize, $"MaxBufferSize must be between 4096 and the allocator's largest block ({largest} bytes).");
        }

        if (OwnersPerCpu < 0 || OwnersPerCpu > 1024)
        {
            ThrowHelper.ArgumentOutOfRange(nameof(OwnersPerCpu), OwnersPerCpu, "OwnersPerCpu must be between 0 and 1024.");
        }
    }
}
