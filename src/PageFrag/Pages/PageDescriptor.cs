using System.Runtime.InteropServices;

namespace PageFrag.Pages;

/// <summary>State bits of a page descriptor.</summary>
[Flags]
internal enum PageFlags : byte
{
    None = 0,

    /// <summary>First page of an allocated block (compound head, or a plain order-0 page).</summary>
    Head = 1,

    /// <summary>A page inside an allocated block of order &gt; 0; <see cref="PageDescriptor.HeadIndex"/> names the head.</summary>
    Tail = 2,

    /// <summary>First page of a free block on an arena's buddy free list.</summary>
    BuddyFree = 4,

    /// <summary>First page of a free block parked on a per-CPU list.</summary>
    PerCpu = 8,

    /// <summary>The block was taken from the emergency reserve (page_is_pfmemalloc).</summary>
    PfMemalloc = 16,
}

/// <summary>
/// The <c>struct page</c> analogue. One per 4 KiB page, in one array per arena, so the descriptor of
/// an address is found by arithmetic. Only the head page of a block carries meaningful counts.
/// </summary>
/// <remarks>
/// Who writes what: <see cref="RefCount"/> is changed with interlocked operations by any thread;
/// the other fields are written by the allocator (under its lock or while it owns the free block) or
/// by the single owner of the block (a fragment cache resetting a page it reuses in place), and read
/// by freeing threads only after the block was published to them.
/// </remarks>
[StructLayout(LayoutKind.Sequential)]
internal struct PageDescriptor
{
    /// <summary>References held on the block (page-&gt;_refcount). 0 while the block is free.</summary>
    public int RefCount;

    /// <summary>
    /// Changes every time the block is handed out or reused in place. A fragment handle remembers the
    /// generation it was carved in, so a handle freed after its page moved on is caught.
    /// </summary>
    public int Generation;

    /// <summary>Index of the head page of the block this page belongs to (compound_head).</summary>
    public int HeadIndex;

    /// <summary>Buddy free-list links (page indexes, -1 for none); used only while free.</summary>
    public int Next;

    /// <inheritdoc cref="Next"/>
    public int Prev;

    /// <summary>Order of the block this head page starts.</summary>
    public byte Order;

    /// <summary>State bits, see <see cref="PageFlags"/>.</summary>
    public PageFlags Flags;

    /// <summary>
    /// Set by a fragment cache when it takes the block to carve fragments from it; reset by the allocator
    /// on every handout. A free by address accepts only addresses on such blocks.
    /// </summary>
    public bool FragmentCachePage;

    /// <summary>The page pool that owns the page (page-&gt;pp), or null.</summary>
    public object? Pool;

    /// <summary>The page pool's fragment reference count (pp_ref_count).</summary>
    public long PpRefCount;

    /// <summary>Device address of the page when a pool maps it (page-&gt;dma_addr).</summary>
    public ulong DmaAddress;
}
