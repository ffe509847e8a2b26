namespace PageFrag.Pages;

/// <summary>
/// Settings of a <see cref="PageAllocator"/>, checked when the allocator is created.
/// </summary>
/// <remarks>
/// Defaults: 4 MiB arenas, no memory limit, no emergency reserve, no fault injection, the detection mode
/// off (on in Debug builds of PageFrag). The double-free check of fragments and pages is always on: of two
/// racing releases exactly one wins, and the other throws <see cref="PageFragDoubleFreeException"/>.
/// </remarks>
public sealed class PageAllocatorOptions
{
    /// <summary>The default arena size: 4 MiB (1024 pages, so blocks up to order 10).</summary>
    public const int DefaultArenaSize = 4 << 20;

    /// <summary>
    /// Bytes per arena: a power of two from 32 KiB (one order-3 block) to 1 GiB. The highest block
    /// order is log2(ArenaSize / 4096). Default <see cref="DefaultArenaSize"/>.
    /// </summary>
    public int ArenaSize { get; init; } = DefaultArenaSize;

    /// <summary>
    /// The most memory the allocator may hold in arenas. Only whole arenas count, so the effective
    /// limit is rounded down to a multiple of <see cref="ArenaSize"/>; it must be at least one arena.
    /// Default <see cref="long.MaxValue"/> (no limit).
    /// </summary>
    public long MaxBytes { get; init; } = long.MaxValue;

    /// <summary>
    /// Bytes at the top of <see cref="MaxBytes"/> that only <see cref="AllocFlags.MayUseReserve"/>
    /// allocations may use (the kernel's min watermark). Pages handed out from it are marked pfmemalloc.
    /// A multiple of 4096, below the effective limit. Has no effect without a limit. Default 0.
    /// </summary>
    public long ReserveBytes { get; init; }

    /// <summary>Optional fault injection; see <see cref="FaultInjection"/>. Default none.</summary>
    public FaultInjection? FaultInjection { get; init; }

    /// <summary>
    /// The detection mode: handles (fragments, pool buffers) check on every access (<c>Span</c>,
    /// <c>Memory</c>, <c>ArraySegment</c>, pointer) that their memory is still theirs, and throw
    /// <see cref="InvalidOperationException"/> after a free or once their page moved on (Netty's
    /// <c>ensureAccessible</c>); owner-thread rules of caches and pools are checked on every call. It costs
    /// a few nanoseconds per access, so it is meant for tests, debugging and staging. Default false, and
    /// true in Debug builds of PageFrag.
    /// </summary>
    public bool DetectMisuse { get; init; } =
#if DEBUG
        true;
#else
        false;
#endif

    internal void Validate()
    {
        if (ArenaSize < PageConstants.FragCacheMaxSize || ArenaSize > (1 << 30) || !int.IsPow2(ArenaSize))
        {
            ThrowHelper.ArgumentOutOfRange(nameof(ArenaSize), ArenaSize, "ArenaSize must be a power of two from 32768 (one order-3 block) to 1073741824 bytes.");
        }

        if (MaxBytes < ArenaSize)
        {
            ThrowHelper.ArgumentOutOfRange(nameof(MaxBytes), MaxBytes, $"MaxBytes must be at least one arena ({ArenaSize} bytes).");
        }

        long effective = MaxBytes == long.MaxValue ? long.MaxValue : MaxBytes / ArenaSize * ArenaSize;
        if (ReserveBytes < 0 || ReserveBytes % PageConstants.PageSize != 0 || (effective != long.MaxValue && ReserveBytes >= effective))
        {
            ThrowHelper.ArgumentOutOfRange(nameof(ReserveBytes), ReserveBytes, "ReserveBytes must be a non-negative multiple of 4096 below the effective memory limit.");
        }
    }
}
