using System.Runtime.CompilerServices;
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

    /// <summary>
    /// The block was handed out by <see cref="PageAllocator.TryAllocPages"/>: its references are the caller's,
    /// so <see cref="PageAllocator.FreePages"/> accepts any of them. Blocks a fragment cache or a page pool
    /// took through the internal interface never carry it: FreePages accepts on those only the references a
    /// caller took with <see cref="Page.AddRef"/> (counted in <see cref="PageDescriptor.CallerRefs"/>).
    /// </summary>
    Caller = 32,

    /// <summary>
    /// On the head of a free block on the buddy lists: its memory (and its fragment states) was given back to
    /// the operating system by <see cref="PageAllocator.DiscardFreeMemory"/> and reads as zeros. A hint that
    /// spares the next discard pass a system call; any split or merge of the block drops it.
    /// </summary>
    Discarded = 64,

    /// <summary>
    /// On the head of a block a <c>PageFragCache</c> carves for a <c>PageFragMemoryPool</c>: a free by
    /// address refuses its fragments (they go back only through their owner object, whose count decides every
    /// return). Set by the cache's refill before it hands out a fragment of the block; every hand-out of the block
    /// resets the flags.
    /// </summary>
    RefusesFreeByAddress = 128,
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
    // RefCount and Generation must stay the first two int fields, in this order: FreePages and AddRef change
    // them together with one 64-bit compare-and-swap (see RefAndGeneration). The struct holds a reference, so
    // the runtime lays it out automatically (references, then 8-byte, then 4-byte fields in declaration
    // order); PageAllocator checks the two are adjacent and 8-aligned once, and a test pins it.
    // 64 bytes: one reference (Pool), two 8-byte fields, nine ints, four bytes. A fragment cache's recycle slots are
    // found through Arena.Recyclers, not here (a second reference made it 72 bytes in session 7: 1.75 % of every
    // arena, and descriptors no longer a whole number per cache line); a test pins the size.

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

    /// <summary>
    /// Set by a page pool while it carves the page into fragments (each with a state byte) and until the page's
    /// last fragment reference is gone; the pool's page-level puts refuse such a page. Written by the pool only.
    /// </summary>
    public bool PoolFragmentPage;

    /// <summary>The page pool that owns the page (page-&gt;pp), or null.</summary>
    public object? Pool;

    /// <summary>The page pool's fragment reference count (pp_ref_count).</summary>
    public long PpRefCount;

    /// <summary>Device address of the page when a pool maps it (page-&gt;dma_addr).</summary>
    public ulong DmaAddress;

    /// <summary>
    /// On a block without <see cref="PageFlags.Caller"/> (a fragment cache's or a page pool's), the references
    /// callers took with <see cref="Page.AddRef"/> and have not dropped yet: the only ones
    /// <see cref="PageAllocator.FreePages"/> may drop. Reset when the block is handed out.
    /// </summary>
    public int CallerRefs;

    /// <summary>
    /// 1 while a fragment cache carves the block (its current page), 0 otherwise. The cache sets it after
    /// <see cref="Generation"/> when it takes or reuses the block, and clears it with a full fence when it
    /// leaves. A free from another thread that finds it set leaves a freed mark
    /// (<see cref="Arena.FreedMark"/>) instead of dropping a reference: one atomic operation instead of two,
    /// and the cache counts the marks when it leaves.
    /// </summary>
    public int CacheHeld;

    /// <summary>
    /// The generation whose cache has finished counting the freed marks after leaving the block. A free that
    /// left a mark but then found <see cref="CacheHeld"/> cleared waits for this before it looks whether its
    /// mark was counted.
    /// </summary>
    public int MarksCounted;

    /// <summary>
    /// Set to 1 (a plain store) by a free from another thread before it swaps its freed mark in; reset when a
    /// cache takes the block. A cache leaving the block scans for marks only when it is set: the swap that
    /// follows the store is a full fence, so a cache that read it as 0 after clearing
    /// <see cref="CacheHeld"/> has no mark to count.
    /// </summary>
    public int MarksLeft;

    /// <summary>
    /// <see cref="RefCount"/> and <see cref="Generation"/> as one 64-bit word, for a compare-and-swap that
    /// decides on both at once (little-endian: the count is the low half). Mixing this 64-bit CAS with 32-bit interlocked operations on RefCount is
    /// coherent on every 64-bit platform .NET runs on.
    /// </summary>
    public static ref long RefAndGeneration(ref PageDescriptor d) => ref Unsafe.As<int, long>(ref d.RefCount);

    /// <summary>
    /// The claim mark: the sign bit of <see cref="RefCount"/>, set by a page pool's release claim together with the
    /// generation it moves on (one compare-and-swap of <see cref="RefAndGeneration(ref PageDescriptor)"/>) and cleared by
    /// the same claimer a few instructions later, once it knows the outcome: the page recycled (the new generation
    /// stays), the page leaving the pool (the callers' generation back while callers hold it), or a lost claim undone.
    /// While it is set the claimer is the only writer of the word, so it clears the mark with a plain store; every
    /// other writer (<c>FreePages</c>, <c>AddRef</c>, the pool's own drop of its reference) and the readers that make
    /// handles wait for it (<see cref="WaitUnclaimed"/>) instead of deciding on a generation that is not settled. A
    /// count never reaches the sign bit (<c>AddRef</c> stops at <see cref="int.MaxValue"/>).
    /// </summary>
    public const int ClaimMark = int.MinValue;

    /// <summary><see cref="ClaimMark"/> as it sits in the 64-bit word (the count is the low half).</summary>
    public const long ClaimMarkInWord = 0x8000_0000L;

    /// <summary>
    /// Reads the count and generation word of <paramref name="d"/> once no release claim is pending on it (see
    /// <see cref="ClaimMark"/>): a handle made from it carries the generation the claim settled on.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static long ReadUnclaimed(ref PageDescriptor d)
    {
        ref long word = ref RefAndGeneration(ref d);
        long seen = Volatile.Read(ref word);
        return (int)seen >= 0 ? seen : WaitUnclaimed(ref word);
    }

    /// <summary>
    /// Waits while the word holds a claim mark (or the transient negative count of a refused double free) and returns
    /// it. The claimer holds the mark for a few instructions without blocking, taking a lock or calling out, so the wait
    /// is that long unless the claimer's thread is descheduled. A <see cref="ThreadInterruptedException"/> raised in
    /// the wait's sleep is kept for the thread's next blocking call: the callers (a free, a reference, a handle) must
    /// not end half-done.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    public static long WaitUnclaimed(ref long word)
    {
        SpinWait spin = default;
        bool interrupted = false;
        long seen;
        while ((int)(seen = Volatile.Read(ref word)) < 0)
        {
            Arena.SpinOnceKeepingInterrupt(ref spin, ref interrupted);
        }

        Arena.KeepInterrupt(interrupted);
        return seen;
    }

    /// <summary>
    /// True when <see cref="Generation"/> directly follows <see cref="RefCount"/>, the pair starts on an
    /// 8-byte boundary of the descriptor (whose array elements are 8-aligned) and the platform is
    /// little-endian: what <see cref="RefAndGeneration(ref PageDescriptor)"/> relies on.
    /// </summary>
    public static bool LayoutFitsRefAndGeneration()
    {
        PageDescriptor d = default;
        nint refCount = Unsafe.ByteOffset(ref Unsafe.As<PageDescriptor, byte>(ref d), ref Unsafe.As<int, byte>(ref d.RefCount));
        nint generation = Unsafe.ByteOffset(ref Unsafe.As<PageDescriptor, byte>(ref d), ref Unsafe.As<int, byte>(ref d.Generation));
        return BitConverter.IsLittleEndian && generation == refCount + sizeof(int) && refCount % 8 == 0 && Unsafe.SizeOf<PageDescriptor>() % 8 == 0;
    }
}

/// <summary>The layout of <see cref="PageDescriptor.RefAndGeneration"/>: the first two fields of a descriptor.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct RefAndGeneration
{
    public int RefCount;
    public int Generation;

    public RefAndGeneration(int refCount, int generation)
    {
        RefCount = refCount;
        Generation = generation;
    }

    public static RefAndGeneration From(long word) => Unsafe.As<long, RefAndGeneration>(ref word);

    public readonly long ToWord()
    {
        RefAndGeneration copy = this;
        return Unsafe.As<RefAndGeneration, long>(ref copy);
    }
}
