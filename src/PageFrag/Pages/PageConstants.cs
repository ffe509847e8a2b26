namespace PageFrag.Pages;

/// <summary>
/// The sizes PageFrag shares with the kernel: a page is 4 KiB and the fragment cache prefers
/// order-3 (32 KiB) pages.
/// </summary>
public static class PageConstants
{
    /// <summary>log2 of <see cref="PageSize"/>.</summary>
    public const int PageShift = 12;

    /// <summary>The size of one page: 4096 bytes (the kernel's PAGE_SIZE on x86 and most arm64 builds).</summary>
    public const int PageSize = 1 << PageShift;

    /// <summary>
    /// The order the fragment cache tries first (PAGE_FRAG_CACHE_MAX_ORDER): 3, that is 8 pages.
    /// </summary>
    public const int FragCacheMaxOrder = 3;

    /// <summary>
    /// The fragment cache's big page, 32 KiB (PAGE_FRAG_CACHE_MAX_SIZE). It is also the bias the cache
    /// adds to a fresh page's reference count, since no page can hold more fragments than bytes.
    /// </summary>
    public const int FragCacheMaxSize = PageSize << FragCacheMaxOrder;

    /// <summary>
    /// The highest order above which allocations are "costly" (PAGE_ALLOC_COSTLY_ORDER); orders
    /// 0 to 3 are kept on the per-CPU lists.
    /// </summary>
    public const int CostlyOrder = 3;
}
