using System.Diagnostics;
using System.Numerics;
using PageFrag.Pages;

namespace PageFrag.Frag;

/// <summary>
/// One size class of a <see cref="SlabCache"/>: its slot size, the page order it carves, the owner's current
/// page and lists, and the stack on which freeing threads hand back full pages that got a free slot.
/// </summary>
/// <remarks>
/// Fields marked "owner" are touched only by the thread that owns the cache's allocation side.
/// <see cref="Pending"/> is the one field freeing threads write: they push with a compare-and-swap and the owner
/// takes the whole stack with one exchange, so the stack has no ABA problem.
/// </remarks>
internal sealed class SlabClass
{
    /// <summary>The most slots one page of any class holds: 4096 / 16. Four bitmap words.</summary>
    public const int MaxSlots = 256;

    public readonly int SlotSize;
    public readonly int Order;
    public readonly int SlotsPerPage;
    public readonly int Words;

    /// <summary>The bits of the last bitmap word that name real slots.</summary>
    public readonly long LastWordMask;

    /// <summary>Freeing threads push full pages that got a free slot here (through <see cref="SlabPage.NextPending"/>).</summary>
    public SlabPage? Pending;

    // ---- owner ----
    public SlabPage? Current;
    public int CurrentWord;

    /// <summary>Free slots of <see cref="Current"/>'s word <see cref="CurrentWord"/> taken out of the shared bitmap.</summary>
    public ulong LocalMask;

    /// <summary>Pages with (probably) free slots, linked through <see cref="SlabPage.NextPartial"/>.</summary>
    public SlabPage? Partial;

    /// <summary>Unbound page objects kept for reuse, linked through <see cref="SlabPage.NextPartial"/>.</summary>
    public SlabPage? Spare;

    public SlabClass(int slotSize)
    {
        SlotSize = slotSize;
        Order = PickOrder(slotSize);
        SlotsPerPage = (PageConstants.PageSize << Order) / slotSize;
        Debug.Assert(SlotsPerPage is >= 1 and <= MaxSlots, "a page of every class holds 1 to 256 slots");
        Words = (SlotsPerPage + 63) >> 6;
        int rest = SlotsPerPage & 63;
        LastWordMask = rest == 0 ? -1L : (1L << rest) - 1;
    }

    /// <summary>
    /// The smallest order (0 to 3) whose block wastes at most 1/32 of itself at the end (a 1536-byte slot
    /// wastes 25 % of a 4 KiB page but 1.6 % of a 32 KiB one); if none does, the order that wastes least.
    /// </summary>
    private static int PickOrder(int slotSize)
    {
        int best = 0;
        long bestWaste = long.MaxValue;
        for (int order = 0; order <= PageConstants.FragCacheMaxOrder; order++)
        {
            int block = PageConstants.PageSize << order;
            int waste = block % slotSize;
            if (waste * 32 <= block && block / slotSize <= MaxSlots)
            {
                return order;
            }

            // Compared as a fraction of the block: waste / block < bestWaste / bestBlock.
            long scaled = (long)waste << (PageConstants.FragCacheMaxOrder - order);
            if (scaled < bestWaste && block / slotSize <= MaxSlots)
            {
                best = order;
                bestWaste = scaled;
            }
        }

        return best;
    }

    /// <summary>The bits of bitmap word <paramref name="word"/> that name real slots.</summary>
    public long FullMask(int word) => word == Words - 1 ? LastWordMask : -1L;
}

/// <summary>
/// A block of pages carved into equal slots, with one state word per slot and a bitmap of free slots. The
/// object outlives its block: after the block went back to the allocator it is kept (unbound) for the next one,
/// and its slot states keep counting, so a handle from an earlier block never matches again.
/// </summary>
/// <remarks>
/// <code>
///  block (2^Order pages, naturally aligned)
///  ├─ slot 0 │ slot 1 │ … │ slot SlotsPerPage-1 │ tail (&lt; 1/32 of the block, never handed out)
///  States[i]   even: slot i is free; odd: live, and the value is the live handle's identity
///  FreeBits    bit i set: slot i is free and not taken by the owner
///  ListState   who tracks the page (see the constants)
/// </code>
/// One release wins: a free is decided by one compare-and-swap of the slot's state from the handle's odd
/// value to the next even one; only the winner then sets the slot's free bit. Stale and second frees find
/// another value and throw. The owner takes free bits (one word at a time, by exchange) and makes a slot live
/// with a plain store, because no other thread writes the state of a free slot: a racing stale free compares
/// an older odd value and fails.
/// </remarks>
internal sealed class SlabPage
{
    /// <summary>Full and out of the owner's hands: the next free moves it to <see cref="Listed"/> and pushes it on the class's pending stack.</summary>
    public const int Detached = 0;

    /// <summary>Tracked by the owner: in exactly one of current page, partial list, pending stack.</summary>
    public const int Listed = 1;

    /// <summary>The cache was disposed while the block held live slots: whoever sees it entirely free releases it.</summary>
    public const int Orphan = 2;

    /// <summary>Unbound: the block went back to the allocator.</summary>
    public const int Released = 3;

    public readonly SlabClass Class;
    public readonly int[] States;
    public readonly long[] FreeBits;

    // The bound block; written by the owner before the page is published to anyone.
    public Arena? Arena;
    public int Head;
    public int ArrayOffset;
    public nint Address;

    public int ListState = Released;
    public SlabPage? NextPending;
    public SlabPage? NextPartial;

    public SlabPage(SlabClass slabClass)
    {
        Class = slabClass;
        States = new int[slabClass.SlotsPerPage];
        FreeBits = new long[slabClass.Words];
    }

    /// <summary>Bytes of GC heap this object takes: its fields plus its two arrays (header and length each).</summary>
    public long MetadataBytes => 88 + 24 + ((States.Length * 4L + 7) & ~7L) + 24 + (FreeBits.Length * 8L);

    /// <summary>Binds a fresh block: every slot free, tracked by the owner.</summary>
    public void Bind(Arena arena, int head)
    {
        Arena = arena;
        Head = head;
        ArrayOffset = arena.ArrayOffset + (head << PageConstants.PageShift);
        Address = arena.BaseAddress + (head << PageConstants.PageShift);
        for (int w = 0; w < FreeBits.Length; w++)
        {
            Volatile.Write(ref FreeBits[w], Class.FullMask(w));
        }

        Volatile.Write(ref ListState, Listed);
    }

    /// <summary>True when every slot's bit is set: no slot is live and the owner holds none.</summary>
    public bool AllFree()
    {
        for (int w = 0; w < FreeBits.Length; w++)
        {
            if (Volatile.Read(ref FreeBits[w]) != Class.FullMask(w))
            {
                return false;
            }
        }

        return true;
    }

    /// <summary>True when at least one slot's bit is set.</summary>
    public bool AnyFree()
    {
        for (int w = 0; w < FreeBits.Length; w++)
        {
            if (Volatile.Read(ref FreeBits[w]) != 0)
            {
                return true;
            }
        }

        return false;
    }

    /// <summary>Free slots in the shared bitmap (for statistics and tests).</summary>
    public int FreeCount()
    {
        int n = 0;
        for (int w = 0; w < FreeBits.Length; w++)
        {
            n += BitOperations.PopCount((ulong)Volatile.Read(ref FreeBits[w]));
        }

        return n;
    }

    /// <summary>
    /// Releases a freed slot, from any thread: one compare-and-swap of its state decides, then its free bit is
    /// set, then the page is handed back to the owner if it was full, or released if its cache is gone and
    /// this was its last live slot.
    /// </summary>
    public static void Free(SlabPage page, int slot, int state)
    {
        int[] states = page.States;
        if ((uint)slot >= (uint)states.Length || (state & 1) == 0 ||
            Interlocked.CompareExchange(ref states[slot], state + 1, state) != state)
        {
            ThrowHelper.DoubleFree("The slab fragment was already freed, or its slot was reused since (a stale handle).");
        }

        Interlocked.Or(ref page.FreeBits[slot >> 6], 1L << (slot & 63));

        // After the bit is set, the page is read only to decide who tracks it. The owner releases a page only
        // once every bit is set, so a block is never released while a winner has yet to set its bit.
        while (true)
        {
            int list = Volatile.Read(ref page.ListState);
            if (list == Detached)
            {
                if (Interlocked.CompareExchange(ref page.ListState, Listed, Detached) != Detached)
                {
                    continue;
                }

                SlabClass c = page.Class;
                SlabPage? head;
                do
                {
                    head = Volatile.Read(ref c.Pending);
                    page.NextPending = head;
                }
                while (Interlocked.CompareExchange(ref c.Pending, page, head) != head);
                return;
            }

            if (list == Orphan)
            {
                TryReleaseOrphan(page);
            }

            return;
        }
    }

    /// <summary>Releases an orphan's block if no slot is live; of two callers that both see it free, one compare-and-swap picks one.</summary>
    public static bool TryReleaseOrphan(SlabPage page)
    {
        if (page.AllFree() && Interlocked.CompareExchange(ref page.ListState, Released, Orphan) == Orphan)
        {
            PageAllocator.PutBlockRef(page.Arena!, page.Head);
            return true;
        }

        return false;
    }
}
