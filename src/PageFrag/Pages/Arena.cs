using System.Numerics;
using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

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
///  FreeMarks  one bit per 8 bytes: "the fragment that starts here was freed" (double-free check)
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
    /// <summary>log2 of the double-free granule (8 bytes).</summary>
    public const int MarkShift = 3;

    /// <summary>
    /// The highest order whose blocks are guaranteed to be naturally aligned in the address space: 3
    /// (32 KiB), the fragment cache's page and the highest per-CPU order.
    /// </summary>
    public const int AlignedOrders = PageConstants.FragCacheMaxOrder;

    /// <summary>The alignment of an arena's first page when the arena is at least this large: 32 KiB.</summary>
    public const int MaxBlockAlignment = PageConstants.PageSize << AlignedOrders;

    public readonly PageAllocator Owner;
    public readonly byte[] Array;
    public readonly int ArrayOffset;
    public readonly nint BaseAddress;
    public readonly int PageCount;
    public readonly int ByteLength;

    /// <summary>What <see cref="BaseAddress"/> is a multiple of: min(<see cref="ByteLength"/>, <see cref="MaxBlockAlignment"/>).</summary>
    public readonly int BlockAlignment;
    public readonly int MaxOrder;
    public readonly PageDescriptor[] Pages;
    public readonly long[] FreeMarks;
    public readonly int Id;

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

        Owner = owner;
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

        Pages = new PageDescriptor[PageCount];
        FreeMarks = new long[(byteLength >> MarkShift) / 64];
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

    /// <summary>Pages on this arena's buddy free lists. Read under the allocator lock for exact values.</summary>
    public int FreePages => _freePages;

    public bool IsEntirelyFree => _freePages == PageCount;

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

    /// <summary>True when <paramref name="address"/> lies inside this arena's pages.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool Contains(nint address) => (nuint)(address - BaseAddress) < (nuint)ByteLength;

    /// <summary>The bytes of the arena from <paramref name="byteOffset"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public Span<byte> GetSpan(int byteOffset, int length) =>
        MemoryMarshal.CreateSpan(ref Unsafe.Add(ref MemoryMarshal.GetArrayDataReference(Array), (nint)(uint)(ArrayOffset + byteOffset)), length);

    /// <summary>
    /// Sets the "freed" mark of the fragment that starts at <paramref name="byteOffset"/> in
    /// <paramref name="marks"/> (an arena's <see cref="FreeMarks"/>, one bit per 8 bytes); false if it was
    /// already set (a double free). Used by the fragment cache and by the page pool.
    /// </summary>
    /// <remarks>
    /// A plain read-modify-write, not an interlocked one: an atomic here cost a third of the cross-thread
    /// free rate. The only writers of a mark word are freeing threads (the owner clears a page's words only
    /// after the page's count reached zero, which happens after every mark of that page was written), so a
    /// race between two threads freeing neighbours in the same 512 bytes can only lose a mark: a missed
    /// detection, never a false one.
    /// </remarks>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static bool TrySetFreeMark(long[] marks, int byteOffset)
    {
        int granule = byteOffset >> MarkShift;
        long bit = 1L << (granule & 63);
        ref long word = ref marks[granule >> 6];
        long old = Volatile.Read(ref word);
        if ((old & bit) != 0)
        {
            return false;
        }

        word = old | bit;
        return true;
    }

    /// <summary>Clears the double-free marks of the bytes [byteOffset, byteOffset + length).</summary>
    public void ClearFreeMarks(int byteOffset, int length)
    {
        // Pages are 4 KiB aligned and one mark word covers 512 bytes, so a page never shares a word.
        int first = byteOffset >> (MarkShift + 6);
        int count = length >> (MarkShift + 6);
        System.Array.Clear(FreeMarks, first, Math.Max(count, 1));
    }
}
