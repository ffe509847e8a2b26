namespace PageFrag.Pages;

/// <summary>
/// What an allocation may do to succeed, the kernel's gfp_t reduced to what matters in a process.
/// </summary>
[Flags]
public enum AllocFlags
{
    /// <summary>
    /// An ordinary allocation (GFP_KERNEL): may grow the arenas up to the memory limit, but not into the
    /// emergency reserve.
    /// </summary>
    None = 0,

    /// <summary>
    /// An opportunistic attempt (__GFP_NORETRY | __GFP_NOWARN | __GFP_NOMEMALLOC without direct reclaim):
    /// succeeds only from memory the arenas already have, never adds an arena (except the very first one
    /// of an allocator that has none), never drains the per-CPU lists and never touches the reserve. The
    /// fragment cache's order-3 try uses it.
    /// </summary>
    Opportunistic = 1,

    /// <summary>
    /// The allocation may dip into the emergency reserve (__GFP_MEMALLOC). Pages taken from the reserve
    /// come back marked pfmemalloc, and caches must not keep them.
    /// </summary>
    MayUseReserve = 2,
}
