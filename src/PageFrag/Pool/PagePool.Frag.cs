using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;
using PageFrag.Pages;

namespace PageFrag.Pool;

// Fragments: the pool's current "frag page" is carved front to back, as the fragment cache does, but the
// reference counted per fragment is the pool's pp_ref_count, so a fragment page comes back to the pool, not to
// the allocator.
//
//   frag page: [ frag 0 | frag 1 | frag 2 |            free            ]
//               0                          ^ _fragOffset               ^ PageSize
//   pp_ref_count = BiasMax - (fragments already freed)     (set once when the page starts)
//   _fragUsers   = fragments handed out, less those the owner freed itself (owner-local, no atomics)
//
// When the page is full, the pool drops its unused bias (BiasMax - _fragUsers). If that brings the count to
// zero, every fragment is already free and the page is reused in place; otherwise the last fragment freed
// recycles it.
internal sealed partial class PagePoolCore
{
    /// <summary>The bias a fresh fragment page starts with (BIAS_MAX): more than any page can have fragments.</summary>
    internal const long BiasMax = long.MaxValue >> 1;

    private NetMem _fragPage;
    private int _fragOffset;
    private int _fragLimit;
    private long _fragUsers;

    /// <summary>
    /// Carves <paramref name="size"/> bytes, rounded up to <see cref="FragmentAlignment"/>, from the pool's
    /// current fragment page (page_pool_alloc_frag). The buffer's <see cref="PagePoolBuffer.TrueSize"/> is the
    /// rounded size. Owner thread.
    /// </summary>
    /// <returns>False, with an empty buffer, when a new page was needed and none could be had.</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="size"/> is not between 1 and <see cref="PageSize"/>.</exception>
    /// <exception cref="InvalidOperationException">Not called on the owner thread.</exception>
    /// <exception cref="ObjectDisposedException">The pool was disposed.</exception>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool TryAllocFrag(int size, out PagePoolBuffer buffer)
    {
        CheckOwner();
        CheckSize(size);
        int aligned = (size + (FragmentAlignment - 1)) & ~(FragmentAlignment - 1);
        if (!TryCarve(aligned, out int offset))
        {
            buffer = default;
            return false;
        }

        buffer = new PagePoolBuffer(_fragPage, offset, size, aligned, isFragment: true);
        return true;
    }

    /// <summary>
    /// Allocates <paramref name="size"/> bytes the cheapest honest way (page_pool_alloc): a whole page when
    /// <c>size * 2 &gt; PageSize</c>, else a fragment; when that fragment leaves too little room for another of
    /// the same size, the rest of the page is added to it and to its <see cref="PagePoolBuffer.TrueSize"/>, so
    /// the holder is charged for the memory it really keeps. Owner thread.
    /// </summary>
    /// <inheritdoc cref="TryAllocFrag"/>
    public bool TryAlloc(int size, out PagePoolBuffer buffer)
    {
        CheckOwner();
        CheckSize(size);
        if (size > _maxSize >> 1)
        {
            if (TryAllocNetMemCore(out NetMem page))
            {
                buffer = new PagePoolBuffer(page, 0, size, _maxSize, isFragment: false);
                return true;
            }

            buffer = default;
            return false;
        }

        int aligned = (size + (FragmentAlignment - 1)) & ~(FragmentAlignment - 1);
        if (!TryCarve(aligned, out int offset))
        {
            buffer = default;
            return false;
        }

        int trueSize = aligned;
        if (aligned > _maxSize - _fragOffset)
        {
            // No room for another fragment of this size: the tail would sit unused while this buffer keeps the
            // page alive, so it is this buffer's cost (the truesize fix asked for in the mono-frag review).
            trueSize = _maxSize - offset;
            _fragOffset = _maxSize;
        }

        buffer = new PagePoolBuffer(_fragPage, offset, size, trueSize, isFragment: true);
        return true;
    }

    /// <summary>Bytes of the current fragment page already handed out (0 without one). Owner thread.</summary>
    public int FragmentOffset => _fragOffset;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private bool TryCarve(int aligned, out int offset)
    {
        offset = _fragOffset;

        // Room left first, then the comparison: offset + aligned can pass int.MaxValue on a 1 GiB page, the
        // difference of two values in [0, _fragLimit] cannot.
        if (aligned <= _fragLimit - offset)
        {
            _fragOffset = offset + aligned;
            _fragUsers++;
            MarkFragmentLive(offset);
            return true;
        }

        return TryCarveSlow(aligned, out offset);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private bool TryCarveSlow(int aligned, out int offset)
    {
        offset = 0;
        NetMem page = default;
        if (_fragLimit != 0)
        {
            page = DrainFrag();
        }

        _fragPage = default;
        _fragLimit = 0;
        _fragOffset = 0;
        _fragUsers = 0;
        if (page.IsEmpty && !TryAllocNetMemCore(out page))
        {
            return false;
        }

        NetMemArea area = page.Area!;
        ref PageDescriptor d = ref area.Descriptors[page.Index];

        // page_pool_fragment_netmem(BIAS_MAX): the page is ours alone, one store is enough. The page-level puts
        // refuse it from now on, until its last fragment reference is gone.
        d.PoolFragmentPage = true;
        Volatile.Write(ref d.PpRefCount, BiasMax);

        // Every fragment release clears its state before it drops its reference, so a page that starts (fresh
        // or reused in place) has no live fragment state left: nothing to clear.
        System.Diagnostics.Debug.Assert(area.NoLiveFragments(page.AreaOffset, _maxSize));

        _fragPage = page;
        _fragLimit = _maxSize;
        _fragUsers = 1;
        _fragOffset = aligned;
        MarkFragmentLive(0);
        return true;
    }

    /// <summary>
    /// page_pool_drain_frag: drop the unused bias of the full fragment page. Returns the page, under a new
    /// generation, when every fragment was already free and it can be reused in place; else an empty handle.
    /// </summary>
    private NetMem DrainFrag()
    {
        NetMem page = _fragPage;
        ref PageDescriptor d = ref page.Descriptor;
        if (Unref(ref d, BiasMax - _fragUsers) != 0)
        {
            // Fragments are still out; the last one freed recycles the page.
            return default;
        }

        if (Volatile.Read(ref d.RefCount) == 1 && (d.Flags & PageFlags.PfMemalloc) == 0)
        {
            if (_dmaSync)
            {
                SyncForDevice(page, ref d, -1);
            }

            // The claim's count decides (see PutUnrefed): a caller may have taken a reference since the read above.
            int count = ClaimRelease(page, ref d);
            if (count == 1)
            {
                EndClaimKept(ref d);
                _recycleCached++;
                _allocFast++;
                return new NetMem(page.Area!, page.Index, page.Generation + 1);
            }

            ReturnClaimedPage(page, count);
            Interlocked.Increment(ref Stripe.ReleasedRefcnt);
            return default;
        }

        Interlocked.Increment(ref Stripe.ReleasedRefcnt);
        ReturnPage(page);
        return default;
    }

    /// <summary>page_pool_free_frag: on destroy, give up the bias of the current fragment page.</summary>
    private void FreeFrag()
    {
        if (_fragLimit == 0)
        {
            return;
        }

        NetMem page = _fragPage;
        long drain = BiasMax - _fragUsers;
        _fragPage = default;
        _fragLimit = 0;
        _fragOffset = 0;
        _fragUsers = 0;
        if (Unref(ref page.Descriptor, drain) == 0)
        {
            ReturnPage(page);
        }
    }

    /// <summary>Writes the live state of the fragment carved at <paramref name="offset"/> (owner; a plain byte store).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void MarkFragmentLive(int offset)
    {
        NetMemArea area = _fragPage.Area!;
        int start = _fragPage.AreaOffset + offset;
        area.FragStates[area.StateIndex(start)] = Arena.LiveTag(_fragPage.Generation, start);
    }

    /// <summary>
    /// The release of a fragment: one compare-and-swap of its state decides which of racing puts wins. The state's
    /// tag holds only 4 bits of the page's generation, so the swap goes through <see cref="Arena.Releasing"/> and
    /// the page is checked again before the byte is cleared: a put whose handle check came before the page was
    /// recycled until the 4 bits came round (or went back to the allocator and came back under another head)
    /// would otherwise clear a later fragment's byte at the same start. The check reads the page's pool, then its
    /// generation: this pool at the first read and the handle's generation at the second mean the page stayed in
    /// this pool all the while, unrecycled (admission and recycling raise the generation, a release clears the
    /// pool), so the byte was this fragment's.
    /// The head of the start's page is checked too (<see cref="NetMemArea.HeadOf"/>): a pool page of order 1 or
    /// more has fragments on pages other than its head, and once it went back to the allocator such a page can be
    /// carved by another block while the old head stays free (review7's case; the pool check alone refuses it as
    /// well, the head check keeps the argument local to the start).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal void MarkFragmentFreed(in PagePoolBuffer buffer, ref PageDescriptor d)
    {
        NetMemArea area = buffer.NetMem.Area!;
        int start = buffer.NetMem.AreaOffset + buffer.Offset;
        byte[] states = area.FragStates;
        int index = area.StateIndex(start);
        byte live = Arena.LiveTag(buffer.NetMem.Generation, start);
        if (!Arena.TryBeginRelease(states, index, live) && !Arena.TryBeginReleaseSettled(states, index, live))
        {
            ThrowHelper.DoubleFree("The fragment was already freed.");
        }

        if (!ReferenceEquals(Volatile.Read(ref d.Pool), this) || Volatile.Read(ref d.Generation) != buffer.NetMem.Generation ||
            area.HeadOf(start) != buffer.NetMem.Index)
        {
            UndoStaleRelease(states, index, live);
        }

        Arena.EndRelease(states, index, 0);
    }

    [DoesNotReturn]
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void UndoStaleRelease(byte[] states, int index, byte live)
    {
        Arena.EndRelease(states, index, live);
        PoolThrowHelper.StaleHandle();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void CheckSize(int size)
    {
        if ((uint)(size - 1) >= (uint)_maxSize)
        {
            ThrowHelper.ArgumentOutOfRange(nameof(size), size, $"The size must be between 1 and the pool's page size ({_maxSize} bytes).");
        }
    }
}
