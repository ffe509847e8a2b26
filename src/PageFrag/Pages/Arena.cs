using System.Numerics;
using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace PageFrag.Pages;

/// <summary>
/// One block of pinned memory and the buddy allocator over its pages.
/// </summary>
/// <remarks>
/// <code>
///  Array (pinned, from the POH)
///  ├─ up to min(ArenaSize, 32 KiB) of slack so that page 0 starts on a BlockAlignment address
///  ├─ page 0 │ page 1 │ … │ page N-1            BaseAddress + i * 4096
///  Pages[i]   descriptor of page i (refcount, order, head index, …)
///  FragStates one byte per 8 bytes: 0, or the live tag of the fragment that starts there; the bytes of
///             granules at multiples of 2 KiB in a dense table at the end, 16 per 32 KiB block (StateIndex)
///  FreeHeads  per order, the first free block (-1 for none); blocks are linked through Next/Prev
/// </code>
/// A free block of order k starts at a page index that is a multiple of 2^k, and its buddy is the
/// block at index ^ 2^k. Since <see cref="BaseAddress"/> is a multiple of <see cref="BlockAlignment"/>, a
/// block of order k is naturally aligned in the address space (its address is a multiple of its size) for
/// every k up to <see cref="AlignedOrders"/> (3), as the kernel's pfn % 2^order == 0; larger blocks are
/// aligned to <see cref="MaxBlockAlignment"/>. docs/kernel-map.md gives the measured cost of the choice.
/// All buddy operations run under the owning allocator's lock.
/// </remarks>
internal sealed unsafe class Arena
{
    /// <summary>log2 of the fragment-state granule (8 bytes): one state byte per granule.</summary>
    public const int MarkShift = 3;

    /// <summary>The smallest number of bytes a fragment consumes, so that two fragment starts never share a granule.</summary>
    public const int MarkGranule = 1 << MarkShift;

    /// <summary>log2 of the granules per page (512).</summary>
    public const int PageGranuleShift = PageConstants.PageShift - MarkShift;

    /// <summary>
    /// log2 of the granules between two granules whose state byte is in the dense table (256: every 2 KiB of an
    /// arena, where the fragments of 2 KiB and 4 KiB start).
    /// </summary>
    public const int DenseGranuleShift = 11 - MarkShift;

    /// <summary>log2 of the granules per 32 KiB block (4096), the unit of the dense table.</summary>
    private const int BlockGranuleShift = PageConstants.PageShift + PageConstants.FragCacheMaxOrder - MarkShift;

    /// <summary>
    /// log2 of the dense table's bytes per 32 KiB block (128): the block's 16 bytes, then 112 unused, so that no
    /// cache line ever holds the bytes of two blocks, whatever the array's alignment.
    /// </summary>
    public const int DenseStrideShift = 7;

    /// <summary>
    /// The highest order whose blocks are guaranteed to be naturally aligned in the address space: 3
    /// (32 KiB), the fragment cache's page and the highest per-CPU order.
    /// </summary>
    public const int AlignedOrders = PageConstants.FragCacheMaxOrder;

    /// <summary>The alignment of an arena's first page when the arena is at least this large: 32 KiB.</summary>
    public const int MaxBlockAlignment = PageConstants.PageSize << AlignedOrders;

    // Weak, so that the registry's strong reference to the arena (needed for lookups by address) does not keep a
    // private allocator that its user dropped without Dispose alive for ever: its finalizer unregisters the arenas.
    private readonly WeakReference<PageAllocator> _owner;

    /// <summary>The allocator the arena belongs to.</summary>
    /// <exception cref="ObjectDisposedException">The allocator was dropped without <c>Dispose</c> and collected.</exception>
    public PageAllocator Owner => _owner.TryGetTarget(out PageAllocator? owner) ? owner : ThrowOwnerCollected();

    /// <summary>The allocator, or false once it was dropped without <c>Dispose</c> and collected.</summary>
    public bool TryGetOwner([System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out PageAllocator? owner) => _owner.TryGetTarget(out owner);

    [System.Diagnostics.CodeAnalysis.DoesNotReturn]
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static PageAllocator ThrowOwnerCollected() =>
        throw new ObjectDisposedException(nameof(PageAllocator), "The page's allocator was dropped without Dispose and collected.");
    public readonly byte[] Array;
    public readonly int ArrayOffset;
    public readonly nint BaseAddress;
    public readonly int PageCount;
    public readonly int ByteLength;

    /// <summary>What <see cref="BaseAddress"/> is a multiple of: min(<see cref="ByteLength"/>, <see cref="MaxBlockAlignment"/>).</summary>
    public readonly int BlockAlignment;
    public readonly int MaxOrder;
    public readonly PageDescriptor[] Pages;
    public readonly int Id;

    /// <summary>
    /// Per 32 KiB block (index = head page / 8): the recycle slots of the fragment cache that last took the block as
    /// an order-3 page, read by <see cref="PageAllocator.ReleaseBlock"/> only while the head carries
    /// <see cref="PageDescriptor.FragmentCachePage"/> (which every hand-out resets, so a stale entry is never used).
    /// Here rather than in the descriptor, which stays 64 bytes: one reference per eight pages instead of one per
    /// page, and the cache writes its entry only when it changes, so while a page cycles between one cache and
    /// another thread's frees the line is only read (session 8).
    /// </summary>
    public readonly PageRecycler?[] Recyclers;

    /// <summary>Whether the owner runs in the detection mode (<see cref="PageAllocator.DetectMisuse"/>), read by handles.</summary>
    public readonly bool DetectMisuse;

    /// <summary>
    /// Fragment states, one byte per 8 bytes of the arena: 0, or <see cref="LiveTag"/> of the live fragment
    /// (of a fragment cache or a page pool) that starts in that granule. Allocated with the arena (12.5 % of
    /// its size, on the ordinary heap) so that no fragment path ever allocates.
    /// </summary>
    public readonly byte[] FragStates;

    private readonly int[] _freeHeads;
    private int _freePages;

    private static readonly bool s_layoutFits = PageDescriptor.LayoutFitsRefAndGeneration();

    public Arena(PageAllocator owner, int id, int byteLength)
    {
        Debug.Assert(BitOperations.IsPow2(byteLength) && byteLength >= PageConstants.PageSize);
        if (!s_layoutFits)
        {
            throw new PlatformNotSupportedException("PageDescriptor's RefCount and Generation are not one aligned 64-bit word on this runtime.");
        }

        _owner = new WeakReference<PageAllocator>(owner);
        Id = id;
        ByteLength = byteLength;
        PageCount = byteLength >> PageConstants.PageShift;
        MaxOrder = BitOperations.Log2((uint)PageCount);

        // Pinned so that pointers stay valid and MemoryMarshal.TryGetArray hands sockets the real array. The
        // slack in front of page 0 is never touched, so it costs committed GC heap but no resident memory
        // (measured: docs/kernel-map.md). byteLength <= 1 GiB and the slack < 32 KiB, so every offset into the
        // array (ArrayOffset + an arena offset + a length) stays below int.MaxValue.
        BlockAlignment = Math.Min(byteLength, MaxBlockAlignment);
        Array = GC.AllocateUninitializedArray<byte>(byteLength + BlockAlignment - 1, pinned: true);
        nint start = (nint)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(Array));
        nint aligned = (start + (BlockAlignment - 1)) & ~(nint)(BlockAlignment - 1);
        ArrayOffset = (int)(aligned - start);
        BaseAddress = aligned;

        Pages = AllocateDescriptors(PageCount);
        Recyclers = new PageRecycler?[(PageCount + (1 << PageRecycler.Order) - 1) >> PageRecycler.Order];
        DetectMisuse = owner.DetectMisuse;
        // Pinned (on the POH) so that the states of free blocks can be given back to the operating system
        // with the blocks (PageAllocator.DiscardFreeMemory): an address taken under the lock stays valid.
        // Cleared by giving its whole pages back (Linux) rather than by writing them: a state byte is written only
        // where a fragment starts, so the states of pages never carved stay non-resident.
        FragStates = GC.AllocateUninitializedArray<byte>(StatesLength(byteLength), pinned: true);
        PhysicalMemory.Clear(FragStates);
        _freeHeads = new int[MaxOrder + 1];
        _freeHeads.AsSpan().Fill(-1);
        for (int i = 0; i < PageCount; i++)
        {
            Pages[i].HeadIndex = i;
            Pages[i].Next = -1;
            Pages[i].Prev = -1;
        }

        // The whole arena starts as one free block of the highest order.
        PushFree(0, MaxOrder);
        _freePages = PageCount;
    }

    /// <summary>The cache line size the descriptor array is placed for (x64 and arm64 servers).</summary>
    internal const int LineSize = 64;

    /// <summary>
    /// The descriptor array, on the pinned object heap with descriptor 0 on a cache-line boundary, so that every
    /// descriptor (64 bytes) fills exactly one line: a head's fields never share a line with a neighbour's, and the
    /// few times per page that a head's fields move between the carving thread and a freeing thread (the cache
    /// leaving and taking the block, the last free parking it) move one line, not two (session 9, bench/README.md:
    /// the kernel test's time depended on where the ordinary heap happened to put the array). Where it lands is only
    /// a matter of speed: if the heap does not place the array as asked, the last try is used as it is.
    /// </summary>
    /// <remarks>
    /// The heap keeps objects 8-aligned, not 64: the pinned heap places a new object right after the previous one
    /// as a rule, so a small pinned probe says where the next object would start, and a filler of the right length
    /// in front moves the array's first element onto a line. An array that still missed (another thread took the
    /// spot) tells where the next one would start, for a second try.
    /// </remarks>
    internal static PageDescriptor[] AllocateDescriptors(int count)
    {
        // An array takes 24 bytes (header, type, length) before its elements, and its elements rounded up to 8:
        // the first element of an array placed right after one whose elements end at E is at E + 24.
        byte[] probe = GC.AllocateUninitializedArray<byte>(0, pinned: true);
        nint nextElement = DataAddress(probe) + 24;
        PageDescriptor[] pages = null!;
        // A second try only for arrays up to 1 MiB (arenas up to 64 MiB): the missed array stays on the pinned heap,
        // unused, until the next full collection. Once collections have left gaps where dead arenas were, the heap
        // fills them and may put the probe, the filler and the array in different gaps: then the array may stay off
        // a line (measured: 1 to 4 arenas in 13 after a process's first collections; more tries did not help).
        int attempts = (long)count * Unsafe.SizeOf<PageDescriptor>() <= 1 << 20 ? 2 : 1;
        for (int attempt = 0; attempt < attempts; attempt++)
        {
            int fillerLength = FillerLength(nextElement);
            byte[]? filler = fillerLength < 0 ? null : GC.AllocateUninitializedArray<byte>(fillerLength, pinned: true);
            pages = GC.AllocateArray<PageDescriptor>(count, pinned: true);
            GC.KeepAlive(filler);
            nint first = DataAddress(pages);
            if ((first & (LineSize - 1)) == 0)
            {
                break;
            }

            nextElement = first + ((nint)count * Unsafe.SizeOf<PageDescriptor>()) + 24;
        }

        GC.KeepAlive(probe);
        return pages;
    }

    /// <summary>
    /// The length of the byte array to allocate so that an array allocated right after it has its first element on a
    /// line, when an array allocated now would have it at <paramref name="nextElement"/>; -1 when it already would.
    /// A byte array of n elements takes 24 + n bytes rounded up to 8, so it moves the next element by that much
    /// (24 to 80 bytes here); addresses are 8-aligned.
    /// </summary>
    internal static int FillerLength(nint nextElement)
    {
        int gap = (int)((LineSize - (nextElement & (LineSize - 1))) & (LineSize - 1));
        return gap == 0 ? -1 : (gap < 24 ? gap + LineSize : gap) - 24;
    }

    private static nint DataAddress<T>(T[] pinnedArray) => (nint)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(pinnedArray));

    /// <summary>Pages on this arena's buddy free lists. Read under the allocator lock for exact values.</summary>
    public int FreePages => _freePages;

    public bool IsEntirelyFree => _freePages == PageCount;

    /// <summary>
    /// Set whenever a block is taken from this arena, cleared by each trim of the allocator: an idle trim
    /// releases only arenas that served nothing since the previous trim. Read and written under the lock.
    /// </summary>
    public bool UsedSinceTrim;

    /// <summary>Number of free blocks of <paramref name="order"/>. Caller holds the allocator lock.</summary>
    public int CountFreeBlocks(int order)
    {
        int n = 0;
        for (int i = _freeHeads[order]; i >= 0; i = Pages[i].Next)
        {
            n++;
        }

        return n;
    }

    /// <summary>Takes a free block of exactly <paramref name="order"/>, splitting a larger one if needed. Caller holds the lock.</summary>
    public bool TryTake(int order, out int index)
    {
        int o = order;
        while (o <= MaxOrder && _freeHeads[o] < 0)
        {
            o++;
        }

        if (o > MaxOrder)
        {
            index = -1;
            return false;
        }

        index = _freeHeads[o];
        Unlink(index, o);

        // Split: keep the lower half, give the upper halves back one order at a time.
        while (o > order)
        {
            o--;
            PushFree(index + (1 << o), o);
        }

        _freePages -= 1 << order;
        UsedSinceTrim = true;
        return true;
    }

    /// <summary>Returns a block to the free lists, merging it with its free buddies. Caller holds the lock.</summary>
    public void Give(int index, int order)
    {
        Debug.Assert((index & ((1 << order) - 1)) == 0, "a block starts on a multiple of its size");
        _freePages += 1 << order;
        while (order < MaxOrder)
        {
            int buddy = index ^ (1 << order);
            ref PageDescriptor b = ref Pages[buddy];
            if ((b.Flags & PageFlags.BuddyFree) == 0 || b.Order != order)
            {
                break;
            }

            Unlink(buddy, order);
            index = Math.Min(index, buddy);
            order++;
        }

        PushFree(index, order);
    }

    private void PushFree(int index, int order)
    {
        ref PageDescriptor d = ref Pages[index];
        d.Flags = PageFlags.BuddyFree;
        d.Order = (byte)order;
        d.RefCount = 0;
        d.HeadIndex = index;
        d.Prev = -1;
        d.Next = _freeHeads[order];
        if (d.Next >= 0)
        {
            Pages[d.Next].Prev = index;
        }

        _freeHeads[order] = index;
    }

    private void Unlink(int index, int order)
    {
        ref PageDescriptor d = ref Pages[index];
        Debug.Assert((d.Flags & PageFlags.BuddyFree) != 0 && d.Order == order);
        if (d.Prev >= 0)
        {
            Pages[d.Prev].Next = d.Next;
        }
        else
        {
            _freeHeads[order] = d.Next;
        }

        if (d.Next >= 0)
        {
            Pages[d.Next].Prev = d.Prev;
        }

        d.Next = -1;
        d.Prev = -1;
        d.Flags = PageFlags.None;
    }

    /// <summary>
    /// Finds up to <paramref name="indexes"/>.Length free blocks of order <paramref name="minOrder"/> or more
    /// that do not carry <see cref="PageFlags.Discarded"/>, largest orders first; their indexes and orders go to
    /// the two spans. The blocks stay on the free lists: the caller holds the lock until it has given their
    /// memory back and marked them (<see cref="MarkDiscarded"/>), so nothing can take them meanwhile.
    /// </summary>
    public int FindUndiscarded(int minOrder, Span<int> indexes, Span<byte> orders)
    {
        int n = 0;
        for (int o = MaxOrder; o >= minOrder && n < indexes.Length; o--)
        {
            for (int i = _freeHeads[o]; i >= 0 && n < indexes.Length; i = Pages[i].Next)
            {
                if ((Pages[i].Flags & PageFlags.Discarded) == 0)
                {
                    indexes[n] = i;
                    orders[n] = (byte)o;
                    n++;
                }
            }
        }

        return n;
    }

    /// <summary>Marks the free block at <paramref name="index"/> as given back to the operating system. Caller holds the lock.</summary>
    public void MarkDiscarded(int index)
    {
        Debug.Assert((Pages[index].Flags & PageFlags.BuddyFree) != 0);
        Pages[index].Flags |= PageFlags.Discarded;
    }

    /// <summary>The length of the fragment-state array of an arena of <paramref name="byteLength"/> bytes: one byte per granule, laid out by <see cref="StateIndex"/>.</summary>
    /// <remarks>
    /// A whole number of 4-byte words: the .NET 8 swap (<see cref="TrySwap"/>) works on the aligned 4-byte word around a
    /// byte, and the dense table's last byte must not put that word past the array's end. The main table has one byte
    /// per granule (a multiple of 4 for any whole number of pages) and the dense table 128 bytes per started 32 KiB.
    /// </remarks>
    public static int StatesLength(int byteLength) =>
        (((byteLength >> MarkShift) + 3) & ~3) + (((byteLength + (1 << (BlockGranuleShift + MarkShift)) - 1) >> (BlockGranuleShift + MarkShift)) << DenseStrideShift);

    /// <summary>
    /// The index in <paramref name="states"/> (an arena's <see cref="FragStates"/>) of the state byte of the
    /// granule that holds <paramref name="arenaOffset"/>: the one place that knows the layout. Every reader and
    /// writer of a state byte goes through it (or <see cref="GranuleStateIndex"/>).
    /// </summary>
    /// <remarks>
    /// The bytes of the granules at multiples of 2 KiB (every 256th) sit in a dense table at the end: those of 32 KiB
    /// block b in the 16 bytes from <c>Length - 128 * (b + 1)</c>, in page order; every other granule g at index g (so
    /// the main table's bytes at multiples of 256 are never used and stay 0). A fragment cache's page is such a block,
    /// so the states of its 2 KiB and 4 KiB fragments share one line that no other block's share: the thread that frees
    /// them waits for that line once per page instead of once per fragment (issue 14, aim 4; bench/README.md,
    /// "Session 7"), and a small fragment at such a granule costs what a page start cost before. Fragments of 4 KiB
    /// and more start at page starts, so their bytes share a few state pages (one per 4,096 arena pages) instead
    /// of making one state page resident per 8 arena pages (12.5 % of the arena's bytes; bench/README.md,
    /// "Session 6"). Small fragments still walk the main table, one cache line per 512 bytes of the page.
    /// </remarks>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int StateIndex(byte[] states, int arenaOffset) => GranuleStateIndex(states, arenaOffset >> MarkShift);

    /// <summary><see cref="StateIndex"/> for a granule number (arena offset / 8).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static int GranuleStateIndex(byte[] states, int granule) =>
        (granule & ((1 << DenseGranuleShift) - 1)) == 0
            ? states.Length - (((granule >> BlockGranuleShift) + 1) << DenseStrideShift) + ((granule >> DenseGranuleShift) & ((1 << (BlockGranuleShift - DenseGranuleShift)) - 1))
            : granule;

    /// <summary>
    /// How many of the states of the <paramref name="count"/> granules from <paramref name="first"/> on equal
    /// <paramref name="value"/> (not 0).
    /// </summary>
    public static int CountStates(byte[] states, int first, int count, byte value)
    {
        Debug.Assert(value != 0);
        int n = states.AsSpan(first, count).Count(value);
        for (int g = FirstDenseGranule(first); g < first + count; g += 1 << DenseGranuleShift)
        {
            if (states[GranuleStateIndex(states, g)] == value)
            {
                n++;
            }
        }

        return n;
    }

    // The first granule at or after granule whose byte is in the dense table.
    private static int FirstDenseGranule(int granule) =>
        (granule + (1 << DenseGranuleShift) - 1) & ~((1 << DenseGranuleShift) - 1);

    /// <summary>The address of <see cref="FragStates"/>' first byte (the array is pinned).</summary>
    public nint FragStatesAddress => (nint)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(FragStates));

    /// <summary>True when <paramref name="address"/> lies inside this arena's pages.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool Contains(nint address) => (nuint)(address - BaseAddress) < (nuint)ByteLength;

    /// <summary>The bytes of the arena from <paramref name="byteOffset"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public Span<byte> GetSpan(int byteOffset, int length) =>
        MemoryMarshal.CreateSpan(ref Unsafe.Add(ref MemoryMarshal.GetArrayDataReference(Array), (nint)(uint)(ArrayOffset + byteOffset)), length);

    /// <summary>
    /// The state byte of a live fragment that starts at <paramref name="start"/> (any offset with the same
    /// low 3 bits) on a page of generation <paramref name="generation"/>: bit 7 set, bits 6-4 the start's
    /// offset within its 8-byte granule (so that a free by address can tell a start from an interior
    /// address), bits 3-0 the low bits of the generation (so that a stale handle cannot release a newer
    /// fragment even when the page is reused between its checks).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static byte LiveTag(int generation, int start) => (byte)(0x80 | ((start & 7) << 4) | (generation & 0x0F));

    /// <summary>
    /// Releases the fragment whose state byte is <paramref name="states"/>[<paramref name="granule"/>]: one
    /// compare-and-swap from <paramref name="live"/> to 0. True for the one caller that wins; false when the
    /// byte is not <paramref name="live"/> (already freed, never a fragment start, or a newer fragment of a
    /// reused page), or holds <see cref="Releasing"/> (see <see cref="TrySwapSettled"/>). The releases of a page
    /// whose generation cannot change meanwhile use it (a cache's owner on its current page); every other release
    /// goes through <see cref="TryBeginRelease"/>.
    /// </summary>
    /// <remarks>
    /// On .NET 9 and later, one compare-and-swap of the byte itself. .NET 8 has no interlocked operation on a
    /// byte, so there the containing aligned int is swapped; the loop only retries when a neighbouring byte of
    /// the same int changed between the read and the swap. (The int's read right after the owner's byte store
    /// costs a store-forwarding stall, about 3 ns, which the byte swap does not pay.)
    /// </remarks>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static bool TryRelease(byte[] states, int granule, byte live) => TrySwap(states, granule, live, 0);

    /// <summary>
    /// One compare-and-swap of the state byte <paramref name="states"/>[<paramref name="granule"/>] from
    /// <paramref name="expected"/> to <paramref name="value"/>; true for the one caller that wins. False too when the
    /// byte holds <see cref="Releasing"/>: a caller whose swap failed must not conclude before it looked again with
    /// <see cref="TrySwapSettled"/> (every release does, on its cold path).
    /// </summary>
    /// <remarks>See <see cref="TryRelease"/> for the .NET 8 fallback.</remarks>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static bool TrySwap(byte[] states, int granule, byte expected, byte value)
    {
#if NET9_0_OR_GREATER
        return Interlocked.CompareExchange(ref states[granule], value, expected) == expected;
#else
        ref int word = ref Unsafe.As<byte, int>(ref states[granule & ~3]);
        int shift = BitConverter.IsLittleEndian ? (granule & 3) << 3 : (3 - (granule & 3)) << 3;
        int mask = 0xFF << shift;
        int expectedBits = expected << shift;
        int valueBits = value << shift;
        while (true)
        {
            int old = Volatile.Read(ref word);
            if ((old & mask) != expectedBits)
            {
                return false;
            }

            if (Interlocked.CompareExchange(ref word, (old & ~mask) | valueBits, old) == old)
            {
                return true;
            }
        }
#endif
    }

    /// <summary>
    /// <see cref="TrySwap"/> that waits out a release in progress: while the byte holds <see cref="Releasing"/>
    /// (another release's decision, a few instructions long) it waits for the outcome and tries again, so that a
    /// live fragment's owner never loses its free to a stale release that is about to be undone. False only when
    /// the settled byte is not <paramref name="expected"/>.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    public static bool TrySwapSettled(byte[] states, int granule, byte expected, byte value)
    {
        while (!TrySwap(states, granule, expected, value))
        {
            if (ReadSettled(states, granule) != expected)
            {
                return false;
            }
        }

        return true;
    }

    /// <summary>
    /// The transient state of a fragment whose release is being decided: a release by handle or by address swaps
    /// the live tag for this value, checks again that the page is still in the generation it checked before (the
    /// tag holds only 4 bits of it), and then stores the outcome: the freed mark or 0 when the page is the one it
    /// checked, the live tag back when the page moved on meanwhile (the byte belongs to a later fragment at the same
    /// start). Only the release that stored it changes it. Never 0, never a <see cref="LiveTag"/> and never a
    /// <see cref="FreedMark"/>.
    /// </summary>
    public const byte Releasing = 0x20;

    /// <summary>
    /// The first half of a release: swaps <paramref name="live"/> for <see cref="Releasing"/> (a full fence).
    /// False when the byte is not <paramref name="live"/>, including while another release is in progress on it:
    /// then <see cref="TryBeginReleaseSettled"/> decides. The caller then checks the page again and ends with
    /// <see cref="EndRelease"/>.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static bool TryBeginRelease(byte[] states, int granule, byte live)
    {
        bool won = TrySwap(states, granule, live, Releasing);

        // The caller's loads that check the page stay after the locked swap (on x86 the swap is a full fence).
        MemoryOrder.FullFenceUnlessX86();
        return won;
    }

    /// <summary><see cref="TryBeginRelease"/> that waits out a release in progress (see <see cref="TrySwapSettled"/>).</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    public static bool TryBeginReleaseSettled(byte[] states, int granule, byte live)
    {
        bool won = TrySwapSettled(states, granule, live, Releasing);
        MemoryOrder.FullFenceUnlessX86();
        return won;
    }

    /// <summary>
    /// The second half of a release begun by <see cref="TryBeginRelease"/>: stores its outcome (0, a freed mark,
    /// or the live tag back). A plain byte store: nobody else writes a byte that holds <see cref="Releasing"/>.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void EndRelease(byte[] states, int granule, byte value) => Volatile.Write(ref states[granule], value);

    /// <summary>
    /// The state byte <paramref name="states"/>[<paramref name="granule"/>] once no release is being decided on it:
    /// waits while it holds <see cref="Releasing"/>. For readers that must not take a fragment in the middle of a
    /// stale release (which will be undone) for a freed one.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static byte ReadSettled(byte[] states, int granule)
    {
        byte state = Volatile.Read(ref states[granule]);
        return state != Releasing ? state : WaitSettled(states, granule);
    }

    // SpinWait sleeps after a few spins, and a sleep is where Thread.Interrupt strikes: thrown out of the cache's
    // leaving scan, it would leave the page claimed but uncounted (leaked) and MarksCounted unset, so that a free
    // settling its mark would wait for ever. The interrupt is kept for the thread's next blocking call instead.
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static byte WaitSettled(byte[] states, int granule)
    {
        SpinWait spin = default;
        bool interrupted = false;
        byte state;
        while ((state = Volatile.Read(ref states[granule])) == Releasing)
        {
            SpinOnceKeepingInterrupt(ref spin, ref interrupted);
        }

        KeepInterrupt(interrupted);
        return state;
    }

    /// <summary>
    /// One step of a wait that must not end in the middle (the leaving scan, a free settling its mark): a
    /// <see cref="ThreadInterruptedException"/> thrown by the step's sleep is noted in <paramref name="interrupted"/>
    /// instead of thrown; <see cref="KeepInterrupt"/> raises it again for the thread's next blocking call.
    /// </summary>
    internal static void SpinOnceKeepingInterrupt(ref SpinWait spin, ref bool interrupted)
    {
        try
        {
            spin.SpinOnce();
        }
        catch (ThreadInterruptedException)
        {
            interrupted = true;
        }
    }

    /// <summary>Interrupts the current thread again if a wait noted an interrupt (see <see cref="SpinOnceKeepingInterrupt"/>).</summary>
    internal static void KeepInterrupt(bool interrupted)
    {
        if (interrupted)
        {
            Thread.CurrentThread.Interrupt();
        }
    }

    /// <summary>
    /// The state byte of a fragment that another thread freed while its fragment cache still held the page
    /// (generation <paramref name="generation"/>): bit 7 clear, bit 6 set, bits 3-0 the generation's low bits.
    /// The free gave no reference back yet; the cache counts such marks when it leaves the page (see
    /// <see cref="ClaimFreedMarks"/>). Never 0 and never a <see cref="LiveTag"/>, so a second free of the
    /// fragment is refused as for a cleared state.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static byte FreedMark(int generation) => (byte)(0x40 | (generation & 0x0F));

    /// <summary>
    /// Clears every <paramref name="mark"/> byte among the <paramref name="count"/> states from
    /// <paramref name="first"/> on and returns how many it cleared. Only the cache that leaves the page calls
    /// it, after it published its leaving with a full fence: from then on no free leaves a mark for it to count
    /// without also waiting for this scan to end (see <c>PageFragCache.Free</c>), and nothing else writes a
    /// byte that holds a mark, so plain byte stores suffice (never a wider store: other threads swap the
    /// neighbouring bytes at the same time).
    /// </summary>
    public static int ClaimFreedMarks(byte[] states, int first, int count, byte mark)
    {
        Span<byte> span = states.AsSpan(first, count);
        ref byte start = ref MemoryMarshal.GetReference(span);
        int claimed = 0;
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            Vector256<byte> marks = Vector256.Create(mark);
            Vector256<byte> releasing = Vector256.Create(Releasing);
            for (; i <= span.Length - Vector256<byte>.Count; i += Vector256<byte>.Count)
            {
                Vector256<byte> chunk = Vector256.LoadUnsafe(ref start, (nuint)i);
                if (Vector256.EqualsAny(chunk, releasing))
                {
                    // A release in progress: its outcome may be a mark of ours, so wait for it (see Releasing).
                    for (int j = 0; j < Vector256<byte>.Count; j++)
                    {
                        ReadSettled(states, first + i + j);
                    }

                    chunk = Vector256.LoadUnsafe(ref start, (nuint)i);
                }

                uint hits = Vector256.Equals(chunk, marks).ExtractMostSignificantBits();
                while (hits != 0)
                {
                    Unsafe.Add(ref start, i + BitOperations.TrailingZeroCount(hits)) = 0;
                    claimed++;
                    hits &= hits - 1;
                }
            }
        }

        for (; i < span.Length; i++)
        {
            claimed += ClaimMark(states, first + i, mark);
        }

        // The dense table's bytes (their main-table bytes above are always 0).
        for (int g = FirstDenseGranule(first); g < first + count; g += 1 << DenseGranuleShift)
        {
            claimed += ClaimMark(states, GranuleStateIndex(states, g), mark);
        }

        return claimed;
    }

    /// <summary>
    /// <see cref="ClaimFreedMarks"/> for the states at <paramref name="first"/> + each of <paramref name="starts"/>
    /// only: the start granules of a page's fragments, when the cache kept them.
    /// </summary>
    public static int ClaimFreedMarksAt(byte[] states, int first, ReadOnlySpan<ushort> starts, byte mark)
    {
        int claimed = 0;
        foreach (ushort start in starts)
        {
            claimed += ClaimMark(states, GranuleStateIndex(states, first + start), mark);
        }

        return claimed;
    }

    // One state of a leaving scan: 1 and cleared when it holds the mark (once any release in progress on it ended).
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int ClaimMark(byte[] states, int index, byte mark)
    {
        if (ReadSettled(states, index) != mark)
        {
            return 0;
        }

        states[index] = 0;
        return 1;
    }

    /// <summary>
    /// <see cref="TryRelease"/> for the fragment of a cache page that starts at <paramref name="arenaOffset"/>
    /// and was handed out under <paramref name="generation"/>: the one decision of every free by handle.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static bool TryReleaseFragment(byte[] states, int arenaOffset, int generation) =>
        TryRelease(states, StateIndex(states, arenaOffset), LiveTag(generation, arenaOffset));

    /// <summary><see cref="TryReleaseFragment"/> that waits out a release in progress (see <see cref="TrySwapSettled"/>).</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    public static bool TryReleaseFragmentSettled(byte[] states, int arenaOffset, int generation) =>
        TrySwapSettled(states, StateIndex(states, arenaOffset), LiveTag(generation, arenaOffset), 0);

    /// <summary>
    /// True when no fragment starts in [<paramref name="byteOffset"/>, +<paramref name="length"/>) of an arena
    /// (the state a page must have when its carving starts).
    /// </summary>
    public static bool NoLiveFragments(byte[] states, int byteOffset, int length)
    {
        int first = byteOffset >> MarkShift;
        int count = Math.Max(1, length >> MarkShift);
        if (states.AsSpan(first, count).ContainsAnyExcept((byte)0))
        {
            return false;
        }

        for (int g = FirstDenseGranule(first); g < first + count; g += 1 << DenseGranuleShift)
        {
            if (states[GranuleStateIndex(states, g)] != 0)
            {
                return false;
            }
        }

        return true;
    }
}
