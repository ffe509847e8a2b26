using PageFrag.Buffers;
using PageFrag.Diagnostics;
using PageFrag.Frag;
using PageFrag.Pages;

namespace PageFrag.AspNetCore;

/// <summary>
/// Settings of the <see cref="PageFragMemoryPoolFactory"/> that <c>AddPageFragMemoryPool</c> gives Kestrel;
/// checked when the factory is created.
/// </summary>
/// <remarks>
/// Defaults: one private page allocator with default options (4 MiB arenas, no limit), buffers up to
/// 32768 bytes, idle trimming every 10 seconds, no diagnostic decorator.
/// </remarks>
public sealed class PageFragMemoryPoolFactoryOptions
{
    /// <summary>The default <see cref="TrimInterval"/>: 10 seconds, Kestrel's own eviction period.</summary>
    public static readonly TimeSpan DefaultTrimInterval = TimeSpan.FromSeconds(10);

    /// <summary>
    /// Options of the page allocator the factory creates and shares among its pools (arena size, memory
    /// limit, reserve, fault injection). Null for the defaults.
    /// </summary>
    public PageAllocatorOptions? AllocatorOptions { get; set; }

    /// <summary>
    /// The pools' <see cref="System.Buffers.MemoryPool{T}.MaxBufferSize"/> (see
    /// <see cref="PageFragMemoryPoolOptions.MaxBufferSize"/>). Pipelines serve larger requests from
    /// <c>ArrayPool</c>. Default 32768.
    /// </summary>
    public int MaxBufferSize { get; set; } = PageFragCache.MaxFragmentSize;

    /// <summary>
    /// How often idle memory is given back: each tick drains the per-CPU caches that served no rent since
    /// the previous tick, then releases the allocator's entirely free arenas that served no page since the
    /// previous tick (so memory idle for one to two intervals goes back). A custom Kestrel pool gets no
    /// heartbeat, so the factory runs its own timer. <see cref="Timeout.InfiniteTimeSpan"/> turns trimming
    /// off. Default <see cref="DefaultTrimInterval"/>.
    /// </summary>
    public TimeSpan TrimInterval { get; set; } = DefaultTrimInterval;

    /// <summary>
    /// Whether each trim (the timer's and <see cref="PageFragMemoryPoolFactory.Trim"/>) also gives the physical
    /// memory of the free blocks of the arenas it keeps back to the operating system
    /// (<see cref="PageAllocator.DiscardFreeMemory"/>; Linux only, a no-op elsewhere). Default true.
    /// </summary>
    public bool DiscardFreeMemory { get; set; } = true;

    /// <summary>
    /// Wraps every pool in a <see cref="DiagnosticMemoryPool"/> (double disposal, use after disposal and
    /// writes after free are caught; one allocation per rent). For debugging. Default false.
    /// </summary>
    public bool UseDiagnosticPool { get; set; }

    /// <summary>Settings of the diagnostic decorator when <see cref="UseDiagnosticPool"/> is on; null for its defaults.</summary>
    public DiagnosticMemoryPoolOptions? DiagnosticOptions { get; set; }

    internal void Validate()
    {
        if (TrimInterval != Timeout.InfiniteTimeSpan && (TrimInterval <= TimeSpan.Zero || TrimInterval.TotalMilliseconds > uint.MaxValue - 1))
        {
            throw new ArgumentOutOfRangeException(nameof(TrimInterval), TrimInterval, "TrimInterval must be positive (at most 49 days) or Timeout.InfiniteTimeSpan.");
        }
    }
}
