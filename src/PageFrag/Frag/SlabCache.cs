using System.Numerics;
using System.Runtime.CompilerServices;
using PageFrag.Pages;

namespace PageFrag.Frag;

/// <summary>
/// A fragment allocator for buffers released in any order: pages are carved into equal slots per size class,
/// and a freed slot is handed out again while the rest of its page is still in use (a slab, as DotNetty's
/// subpages and the kernel's SLUB do). Where <see cref="PageFragCache"/> keeps a 32 KiB page until the last of
/// its ~80 fragments is freed, this cache keeps about the bytes that are live: under random release it keeps
/// about 1.05 bytes per byte held against the fragment cache's 4 (docs/random-release.md).
/// </summary>
/// <remarks>
/// <para><b>Size classes.</b> 48 classes from 16 to 4096 bytes: steps of 16 up to 256, then eight classes per
/// doubling (288, 320, … 512, 576, … 1024, 1152, … 2048, 2304, … 4096), so a request wastes at most 1/8 of
/// itself and the IMIX sizes waste about 1 %. <see cref="SlotSize"/> gives the class of a size. A class carves
/// blocks of 4 to 32 KiB, the smallest order that wastes at most 1/32 of the block.</para>
/// <para><b>Threads.</b> As for the fragment cache, the allocation side (<see cref="TryAlloc"/>,
/// <see cref="Trim"/>, <see cref="Dispose"/>) belongs to one thread at a time and takes no lock. Freeing
/// (<see cref="Free"/>) is safe from any thread and lock-free: of two racing frees of one fragment exactly one
/// wins, and the other, like any second or stale free, throws <see cref="PageFragDoubleFreeException"/>.</para>
/// <para><b>Memory returned.</b> A block goes back to the allocator when it is entirely free and the cache
/// meets it while looking for room (it keeps at most the block it is filling), on <see cref="Trim"/>, and on
/// <see cref="Dispose"/>; blocks that still hold live fragments at <see cref="Dispose"/> are released by the
/// free of their last fragment. A cache collected without <see cref="Dispose"/> is disposed by its finalizer.</para>
/// <para><b>Cost.</b> Each slot has a 4-byte state word on the GC heap (0.1 % of the bytes for 4 KiB slots,
/// 25 % for 16-byte slots), allocated when the cache first takes a block of that class; after that, allocation
/// and free allocate nothing on the GC heap.</para>
/// </remarks>
public sealed class SlabCache : IDisposable
{
    /// <summary>The largest fragment: one page (4096 bytes). Larger buffers are made of several fragments.</summary>
    public const int MaxSize = PageConstants.PageSize;

    /// <summary>Classes up to 256 bytes, in steps of 16.</summary>
    private const int SmallClasses = 16;

    /// <summary>Classes per doubling above 256 bytes (log2 8).</summary>
    private const int StepShift = 3;

    private const int ClassCount = SmallClasses + (4 << StepShift);

    private readonly PageAllocator _allocator;
    private readonly AllocFlags _flags;
    private readonly SlabClass[] _classes = new SlabClass[ClassCount];

    // Every page object this cache made (bound or not), for Dispose and statistics; grows only with the cache.
    private SlabPage[] _all = new SlabPage[16];
    private int _allCount;
    private long _pagesHeld;
    private bool _disposed;

    /// <summary>Creates a cache over <paramref name="allocator"/> (<see cref="PageAllocator.Shared"/> if null).</summary>
    /// <param name="allocator">Where the blocks come from.</param>
    /// <param name="flags">
    /// <see cref="AllocFlags.MayUseReserve"/> lets the cache dip into the allocator's reserve; other flags are
    /// refused. Blocks are taken without <see cref="AllocFlags.Opportunistic"/>: a class's order is fixed.
    /// </param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="flags"/> has bits other than <see cref="AllocFlags.MayUseReserve"/>.</exception>
    public SlabCache(PageAllocator? allocator = null, AllocFlags flags = AllocFlags.None)
    {
        if ((flags & ~AllocFlags.MayUseReserve) != 0)
        {
            ThrowHelper.ArgumentOutOfRange(nameof(flags), flags, "Unknown or unsupported allocation flags: a slab cache accepts only MayUseReserve.");
        }

        _allocator = allocator ?? PageAllocator.Shared;
        _flags = flags;
        for (int i = 0; i < ClassCount; i++)
        {
            _classes[i] = new SlabClass(ClassSlotSize(i));
        }
    }

    /// <summary>The safety net: a cache collected without <see cref="Dispose"/> is disposed here, and the loss reported.</summary>
    ~SlabCache()
    {
        // A constructor that threw (bad flags) leaves the classes unmade: nothing was taken.
        if (!_disposed && _classes[ClassCount - 1] is not null)
        {
            long held = Volatile.Read(ref _pagesHeld);
            DisposeCore();
            PageFragEventSource.Log.LeakReclaimed(nameof(SlabCache), held, held * PageConstants.PageSize, "");
        }
    }

    /// <summary>The allocator the cache takes blocks from.</summary>
    public PageAllocator Allocator => _allocator;

    /// <summary>
    /// 4 KiB pages in the blocks this cache holds now (live slots, free slots and the block it is filling).
    /// After <see cref="Dispose"/>, the pages of the blocks that still had live fragments then (their last
    /// free gives them back without updating this figure).
    /// </summary>
    public long PagesHeld => Volatile.Read(ref _pagesHeld);

    /// <summary>The bytes a fragment of <paramref name="size"/> takes (its class's slot size): its truesize.</summary>
    /// <param name="size">1 to <see cref="MaxSize"/>.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="size"/> is not between 1 and <see cref="MaxSize"/>.</exception>
    public static int SlotSize(int size)
    {
        if ((uint)(size - 1) >= MaxSize)
        {
            ThrowSize(size);
        }

        return ClassSlotSize(ClassIndex(size));
    }

    /// <summary>GC heap bytes of the cache's slot states and bitmaps (the price of reuse in place; for the benchmark).</summary>
    internal long MetadataBytes
    {
        get
        {
            long bytes = 0;
            for (int i = 0; i < _allCount; i++)
            {
                bytes += _all[i].MetadataBytes;
            }

            return bytes;
        }
    }

    /// <summary>
    /// Allocates a fragment of <paramref name="size"/> bytes. Only the owner thread. Allocates nothing on the
    /// GC heap except the first time a class needs one more block than it ever had.
    /// </summary>
    /// <param name="size">1 to <see cref="MaxSize"/> bytes.</param>
    /// <param name="fragment">The fragment; empty when the allocation failed.</param>
    /// <returns>False when the allocator could not give a block (limit reached, fault injected).</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="size"/> is not between 1 and <see cref="MaxSize"/>.</exception>
    /// <exception cref="ObjectDisposedException">The cache was disposed.</exception>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool TryAlloc(int size, out SlabFragment fragment)
    {
        if ((uint)(size - 1) >= MaxSize)
        {
            ThrowSize(size);
        }

        SlabClass c = _classes[ClassIndex(size)];
        ulong mask = c.LocalMask;
        // Dispose empties every local mask, so a disposed cache always takes the slow path, which throws.
        if (mask != 0)
        {
            fragment = TakeSlot(c, mask, size);
            return true;
        }

        return TryAllocSlow(c, size, out fragment);
    }

    /// <summary>Frees a fragment. Any thread; exactly one of two racing frees wins.</summary>
    /// <param name="fragment">The fragment to free.</param>
    /// <exception cref="ArgumentException">The fragment is empty (default or from a failed allocation).</exception>
    /// <exception cref="PageFragDoubleFreeException">The fragment was already freed, or the handle is stale.</exception>
    public static void Free(in SlabFragment fragment)
    {
        SlabPage? page = fragment.Page;
        if (page is null)
        {
            ThrowHelper.Argument(nameof(fragment), "The slab fragment is empty: it came from a failed or default allocation.");
        }

        SlabPage.Free(page, fragment.Slot, fragment.State);
    }

    /// <summary>
    /// Gives back every entirely free block the cache holds, the one it is filling included. Only the owner thread.
    /// </summary>
    /// <returns>The 4 KiB pages given back.</returns>
    /// <exception cref="ObjectDisposedException">The cache was disposed.</exception>
    public long Trim()
    {
        if (_disposed)
        {
            ThrowHelper.ObjectDisposed(nameof(SlabCache));
        }

        long before = Volatile.Read(ref _pagesHeld);
        foreach (SlabClass c in _classes)
        {
            LeaveCurrent(c);
            TakePending(c);
            SlabPage? keep = null;
            SlabPage? p = c.Partial;
            c.Partial = null;
            while (p is not null)
            {
                SlabPage? next = p.NextPartial;
                if (p.AllFree())
                {
                    Release(c, p);
                }
                else
                {
                    p.NextPartial = keep;
                    keep = p;
                }

                p = next;
            }

            c.Partial = keep;
        }

        return before - Volatile.Read(ref _pagesHeld);
    }

    /// <summary>
    /// Gives back every entirely free block and retires the cache; blocks with live fragments go back when their
    /// last fragment is freed (from any thread). Fragments stay valid until freed. A second call does nothing.
    /// </summary>
    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }

        DisposeCore();
        GC.SuppressFinalize(this);
    }

    private void DisposeCore()
    {
        _disposed = true;
        foreach (SlabClass c in _classes)
        {
            LeaveCurrent(c);
            c.Partial = null;
            c.Pending = null;
        }

        for (int i = 0; i < _allCount; i++)
        {
            SlabPage p = _all[i];

            // Released (unbound) objects change only in the owner's hands, and the owner is here.
            if (Volatile.Read(ref p.ListState) == SlabPage.Released)
            {
                continue;
            }

            long pages = 1L << p.Class.Order;
            Interlocked.Exchange(ref p.ListState, SlabPage.Orphan);
            if (SlabPage.TryReleaseOrphan(p))
            {
                Interlocked.Add(ref _pagesHeld, -pages);
            }
        }
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private bool TryAllocSlow(SlabClass c, int size, out SlabFragment fragment)
    {
        if (_disposed)
        {
            ThrowHelper.ObjectDisposed(nameof(SlabCache));
        }

        while (true)
        {
            SlabPage? page = c.Current;
            if (page is not null && TakeWord(c, page))
            {
                break;
            }

            if (page is not null)
            {
                // Full: out of the owner's hands, unless a free set a bit meanwhile and the owner wins it back.
                c.Current = null;
                Interlocked.Exchange(ref page.ListState, SlabPage.Detached);
                if (page.AnyFree() && Interlocked.CompareExchange(ref page.ListState, SlabPage.Listed, SlabPage.Detached) == SlabPage.Detached)
                {
                    c.Current = page;
                    continue;
                }
            }

            if (c.Partial is null)
            {
                TakePending(c);
            }

            // The next page with room: entirely free ones are released while another page is on hand.
            SlabPage? next = c.Partial;
            while (next is not null && next.NextPartial is not null && next.AllFree())
            {
                c.Partial = next.NextPartial;
                Release(c, next);
                next = c.Partial;
            }

            if (next is not null)
            {
                c.Partial = next.NextPartial;
                next.NextPartial = null;
                c.Current = next;
                c.CurrentWord = 0;
                continue;
            }

            if (!TryBind(c))
            {
                fragment = default;
                return false;
            }
        }

        fragment = TakeSlot(c, c.LocalMask, size);
        return true;
    }

    /// <summary>
    /// Hands out the lowest slot of the non-empty local <paramref name="mask"/> of the class's current page: clears
    /// its bit and makes its state the next live value, which the handle carries.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static SlabFragment TakeSlot(SlabClass c, ulong mask, int size)
    {
        c.LocalMask = mask & (mask - 1);
        int slot = (c.CurrentWord << 6) + BitOperations.TrailingZeroCount(mask);
        SlabPage page = c.Current!;
        ref int state = ref page.States[slot];
        int live = state + 1;
        Volatile.Write(ref state, live);
        return new SlabFragment(page, slot, live, size);
    }

    /// <summary>Takes the next word of free bits of <paramref name="page"/> into the owner's local mask.</summary>
    private static bool TakeWord(SlabClass c, SlabPage page)
    {
        long[] bits = page.FreeBits;
        for (int i = 0; i < bits.Length; i++)
        {
            int w = (c.CurrentWord + i) % bits.Length;
            if (Volatile.Read(ref bits[w]) != 0)
            {
                long taken = Interlocked.Exchange(ref bits[w], 0);
                if (taken != 0)
                {
                    c.CurrentWord = w;
                    c.LocalMask = (ulong)taken;
                    return true;
                }
            }
        }

        return false;
    }

    /// <summary>Puts the owner's local free bits back and the current page on the partial list.</summary>
    private static void LeaveCurrent(SlabClass c)
    {
        SlabPage? page = c.Current;
        if (page is null)
        {
            return;
        }

        if (c.LocalMask != 0)
        {
            Interlocked.Or(ref page.FreeBits[c.CurrentWord], (long)c.LocalMask);
            c.LocalMask = 0;
        }

        c.Current = null;
        page.NextPartial = c.Partial;
        c.Partial = page;
    }

    /// <summary>Moves the pages freeing threads handed back onto the owner's partial list.</summary>
    private static void TakePending(SlabClass c)
    {
        SlabPage? p = Interlocked.Exchange(ref c.Pending, null);
        while (p is not null)
        {
            SlabPage? next = p.NextPending;
            p.NextPending = null;
            p.NextPartial = c.Partial;
            c.Partial = p;
            p = next;
        }
    }

    private bool TryBind(SlabClass c)
    {
        if (!_allocator.TryAllocBlock(c.Order, _flags, out Arena? arena, out int head))
        {
            return false;
        }

        SlabPage? page = c.Spare;
        if (page is not null)
        {
            c.Spare = page.NextPartial;
            page.NextPartial = null;
        }
        else
        {
            page = new SlabPage(c);
            if (_allCount == _all.Length)
            {
                Array.Resize(ref _all, _all.Length * 2);
            }

            _all[_allCount++] = page;
        }

        page.Bind(arena, head);
        Interlocked.Add(ref _pagesHeld, 1L << c.Order);
        c.Current = page;
        c.CurrentWord = 0;
        c.LocalMask = 0;
        return true;
    }

    /// <summary>Gives an entirely free block the owner tracks back to the allocator and keeps its page object.</summary>
    private void Release(SlabClass c, SlabPage page)
    {
        // Listed, so no freeing thread changes ListState; every bit is set, so no winner has a bit left to set.
        Volatile.Write(ref page.ListState, SlabPage.Released);
        PageAllocator.PutBlockRef(page.Arena!, page.Head);
        Interlocked.Add(ref _pagesHeld, -(1L << c.Order));
        page.NextPartial = c.Spare;
        c.Spare = page;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int ClassIndex(int size)
    {
        if (size <= 256)
        {
            return (size - 1) >> 4;
        }

        int d = BitOperations.Log2((uint)(size - 1));
        return SmallClasses + ((d - 8) << StepShift) + ((size - 1 - (1 << d)) >> (d - StepShift));
    }

    private static int ClassSlotSize(int index)
    {
        if (index < SmallClasses)
        {
            return (index + 1) << 4;
        }

        int d = 8 + ((index - SmallClasses) >> StepShift);
        int k = (index - SmallClasses) & ((1 << StepShift) - 1);
        return (1 << d) + ((k + 1) << (d - StepShift));
    }

    [System.Diagnostics.CodeAnalysis.DoesNotReturn]
    private static void ThrowSize(int size) =>
        ThrowHelper.ArgumentOutOfRange(nameof(size), size, $"A slab fragment is 1 to {MaxSize} bytes; split larger buffers into several fragments.");
}
