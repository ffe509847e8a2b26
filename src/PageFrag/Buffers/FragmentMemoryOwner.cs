using System.Buffers;
using System.Diagnostics;
using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using PageFrag.Frag;
using PageFrag.Pages;

namespace PageFrag.Buffers;

/// <summary>
/// A buffer rented from a <see cref="PageFragMemoryPool"/>: a fragment, or a dedicated page block. The
/// object is recycled by its CPU slot after <see cref="Dispose()"/> (see the pool's remarks for what that
/// means for stale references).
/// </summary>
/// <remarks>
/// <para>A <see cref="MemoryManager{T}"/>, so that the <see cref="Memory{T}"/> it hands out (and every slice
/// of it, and a <see cref="ReadOnlySequence{T}"/> over it) references the owner: while someone holds the
/// memory the owner is reachable and its finalizer cannot give the bytes to the next renter. The bytes are
/// a segment of the arena's pinned array: <see cref="TryGetArray"/> gives it (as
/// <c>MemoryMarshal.TryGetArray</c> asks), <see cref="Pin"/> needs no handle, and <see cref="Unpin"/> does
/// nothing.</para>
/// <para>Used by one renter at a time; <see cref="Dispose()"/> may run on any thread. The state is a sequence
/// count, odd while rented, that every rent and every return advances. Of racing calls exactly one gives the
/// memory back, the others throw <see cref="ObjectDisposedException"/>; a call that starts after the buffer was
/// given back does nothing. Every path but one decides with one compare-and-swap of the count from the value it
/// read first: a count only grows, so a call that read one rent never frees the next one's fragment, even when
/// the owner came back with the same fragment (parking, see the pool's remarks). The exception, the renting
/// thread's return when its parked list is full, reads the fragment's fields, re-reads the count and lets the
/// fragment's release compare-and-swap decide (a call elsewhere swaps the count and then releases the fragment, so
/// the two cannot both release it). Nothing else can release a pool fragment: the pool's pages refuse a free by
/// address. <see cref="IDisposable"/>
/// is re-implemented: <see cref="MemoryManager{T}"/>'s own <c>Dispose</c> would suppress the finalizer of
/// an object that is rented again.</para>
/// <para>An owner that becomes unreachable while rented is reclaimed by its finalizer, which frees the
/// memory without stashing the object (no resurrection) and reports the leak. An owner whose finalizer
/// ran while it was not rented (the pool was collected, or a decorator's finalizer disposed it in the same
/// collection and the object went back to a stash) is re-registered for finalization when it is rented
/// again.</para>
/// </remarks>
internal sealed class FragmentMemoryOwner : MemoryManager<byte>, IMemoryOwner<byte>, IDisposable
{
    // The slot that rented the buffer (set at each rent: an idle owner object may move between slots).
    private PageFragMemoryPool.ThreadSlot _home;

    // A fragment rent: its arena (null for a block rent), offset in the arena and page generation. Left as they
    // are when the buffer is given back (every use checks _state first), and references are stored only when
    // they change, so that a steady rent pays no write barrier for them.
    private Arena? _arena;
    private int _arenaOffset;
    private int _generation;
    private int _epoch;

    // A block rent (empty for a fragment rent).
    private Page _block;

    // The rented bytes, set when rented: array[_offset.._offset + _length] at _address (pinned).
    private byte[]? _array;
    private int _offset;
    private int _length;
    private nint _address;
    private int _trueSize;

    // The sequence count: odd while rented; each rent and each return adds one (written by the renting slot and by
    // the one Dispose that won, never by two threads at once).
    private int _state;
    private bool _finalized;
    private StackTrace? _rentedAt;

    public FragmentMemoryOwner(PageFragMemoryPool.ThreadSlot home) => _home = home;

    /// <summary>The thread slot that rented the buffer and takes it back.</summary>
    internal PageFragMemoryPool.ThreadSlot Home => _home;

    /// <summary>The rented bytes; the memory keeps this owner reachable.</summary>
    /// <exception cref="ObjectDisposedException">The buffer was given back.</exception>
    public override Memory<byte> Memory
    {
        get
        {
            if ((Volatile.Read(ref _state) & 1) == 0)
            {
                ThrowDisposed();
            }

            return CreateMemory(_length);
        }
    }

    /// <summary>The rented bytes (what <c>Memory.Span</c> calls).</summary>
    /// <exception cref="ObjectDisposedException">The buffer was given back (a stale <c>Memory</c>, until the object is rented again).</exception>
    public override Span<byte> GetSpan()
    {
        if ((_state & 1) == 0)
        {
            ThrowDisposed();
        }

        return new Span<byte>(_array, _offset, _length);
    }

    /// <summary>The pointer to byte <paramref name="elementIndex"/>: the arena is pinned, so no handle is taken.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="elementIndex"/> is outside the buffer.</exception>
    /// <exception cref="ObjectDisposedException">The buffer was given back.</exception>
    public override unsafe MemoryHandle Pin(int elementIndex = 0)
    {
        if ((_state & 1) == 0)
        {
            ThrowDisposed();
        }

        if ((uint)elementIndex > (uint)_length)
        {
            throw new ArgumentOutOfRangeException(nameof(elementIndex), elementIndex, $"The index must be between 0 and the buffer's length ({_length}).");
        }

        // The handle references this owner (as its IPinnable), so it keeps the buffer rented while it lives.
        return new MemoryHandle((byte*)_address + elementIndex, default, this);
    }

    /// <summary>Nothing to undo: the arena is pinned for its whole life.</summary>
    public override void Unpin()
    {
    }

    /// <summary>
    /// Gives the buffer back (any thread). A call after the buffer was given back does nothing; of racing calls,
    /// exactly one gives it back and the others throw.
    /// </summary>
    /// <exception cref="ObjectDisposedException">A racing <c>Dispose</c> on another thread gave the buffer back first (or its fragment was freed by address).</exception>
    public void Dispose()
    {
        // Reads the count; every path then decides with one compare-and-swap from that count (see the remarks), which
        // fails if anything happened to the owner since, so fields read in between are this rent's when it succeeds. No
        // exception handling and no struct on the stack: the common case (a fragment given back on the thread that
        // rented it) is inlined, everything else takes one static cold call.
        int state = Volatile.Read(ref _state);
        if ((state & 1) == 0)
        {
            // Given back before this call started: nothing to do (IDisposable's contract).
            return;
        }

        PageFragMemoryPool.ThreadSlot home = _home;
        if (!home.TryReturnOnHomeThread(this, state))
        {
            DisposeSlow(this, home, state);
        }
    }

    /// <summary>Test hook: what a <c>Dispose</c> reads before it decides (the count, then the fragment's fields).</summary>
    internal (int State, Arena? Arena, int ArenaOffset, int Length, int TrueSize, int Generation) ReadForDispose() =>
        (Volatile.Read(ref _state), _arena, _arenaOffset, _length, _trueSize, _generation);

    /// <summary>
    /// Test hook: the rest of a <c>Dispose</c> that read <paramref name="read"/> and then stalled, on the calling thread
    /// (the renting thread's fast path, or the slow path, exactly as <see cref="Dispose()"/> chooses).
    /// </summary>
    internal void DisposeAfterStall((int State, Arena? Arena, int ArenaOffset, int Length, int TrueSize, int Generation) read)
    {
        if ((read.State & 1) == 0)
        {
            return;
        }

        PageFragMemoryPool.ThreadSlot home = _home;
        if (!home.TryReturnOnHomeThread(this, read.State))
        {
            DisposeSlow(this, home, read.State);
        }
    }

    /// <summary>The rented bytes as a segment of the arena's pinned array (what sockets and Kestrel ask for).</summary>
    /// <exception cref="ObjectDisposedException">The buffer was given back.</exception>
    protected override bool TryGetArray(out ArraySegment<byte> segment)
    {
        if ((_state & 1) == 0)
        {
            ThrowDisposed();
        }

        segment = new ArraySegment<byte>(_array!, _offset, _length);
        return true;
    }

    /// <summary>Reached only through <see cref="MemoryManager{T}"/>'s own paths: gives the buffer back.</summary>
    protected override void Dispose(bool disposing) => Dispose();

    /// <summary>The memory the buffer keeps from reuse.</summary>
    internal int TrueSize => (Volatile.Read(ref _state) & 1) != 0 ? _trueSize : 0;

    /// <summary>Makes the object a live rent of <paramref name="fragment"/> from <paramref name="home"/> (inside the slot).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal void SetFragment(PageFragMemoryPool.ThreadSlot home, PageFragment fragment, int epoch)
    {
        OrderAfterReturn();
        if (!ReferenceEquals(_home, home))
        {
            _home = home;
        }

        ArraySegment<byte> bytes = fragment.ArraySegment;
        Arena arena = fragment.Arena!;
        if (!ReferenceEquals(_arena, arena))
        {
            _arena = arena;
            _array = bytes.Array;
        }

        _arenaOffset = fragment.ArenaOffset;
        _generation = fragment.Generation;
        _offset = bytes.Offset;
        _length = bytes.Count;
        _address = arena.BaseAddress + fragment.ArenaOffset;
        _epoch = epoch;
        Activate(fragment.TrueSize);
    }

    /// <summary>Makes the object a live rent of <paramref name="block"/> from <paramref name="home"/> (inside the slot).</summary>
    internal void SetBlock(PageFragMemoryPool.ThreadSlot home, Page block)
    {
        OrderAfterReturn();
        _home = home;
        _arena = null;
        _epoch = 0;
        _block = block;
        MemoryMarshal.TryGetArray(block.Memory, out ArraySegment<byte> bytes);
        _array = bytes.Array;
        _offset = bytes.Offset;
        _length = bytes.Count;
        _address = block.Address;

        // Read now: once the block is freed its descriptor may describe a merged buddy.
        Activate(block.Length);
    }

    // Dispose off its common case (a block, another thread, a nested call, a trim under way, a fragment that is not on
    // the cache's current page, a full stash). Static with values (see the comment in Dispose).
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void DisposeSlow(FragmentMemoryOwner owner, PageFragMemoryPool.ThreadSlot home, int state)
    {
        if (owner._arena is null)
        {
            // Read after the count: if it is a later rent's, the block's swap from the count fails.
            owner.ReleaseBlock(state);
            return;
        }

        // The fragment is read before the decision, after the count: when the swap from that count wins, no rent came in
        // between (a count only grows), so it is rent `state`'s. Read after the decision it could be the next rent's: the
        // count decides against every other path but the renting thread's stash path, which decides on the fragment's
        // release and only then advances the count with a plain store (see TryFreeOnCurrentPage). When that path's
        // re-read of the count came before this swap, both go on; that path releases the fragment, stashes the owner,
        // and a rent on its thread may set the owner to a new fragment before this call looks at it, which this call
        // would then free from under its renter (and stash the rented owner). Read here, this call frees the old
        // fragment, finds it released, and loses (ParkingReviewTests).
        PageFragment fragment = owner.ParkedFragment;
        if (!owner.TryDecide(state))
        {
            ThrowLostRace(null);
        }

        AfterDecideForTests?.Invoke(owner);
        try
        {
            home.ReturnFragment(owner, fragment);
        }
        catch (PageFragDoubleFreeException e)
        {
            // The renting thread's stash path released the fragment first: that call gave the buffer back.
            ThrowLostRace(e);
        }
    }

    /// <summary>
    /// Test hook: runs on a thread whose <c>Dispose</c> took the slow path, right after its count's swap won and before
    /// the fragment is given back (a stall there, as a descheduled thread has). Null outside the tests that set it.
    /// </summary>
    internal static Action<FragmentMemoryOwner>? AfterDecideForTests;

    /// <summary>
    /// The one decision of a return: advances the count from the rent's odd <paramref name="state"/> with one
    /// compare-and-swap. True for the call that wins; the owner is then given back (even) and its fragment is this
    /// call's to release. False, with nothing changed, when a racing return (or a rent since) moved the count on.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal bool TryDecide(int state)
    {
        if (Interlocked.CompareExchange(ref _state, state + 1, state) != state)
        {
            return false;
        }

        if (_rentedAt is not null)
        {
            _rentedAt = null;
        }

        return true;
    }

    /// <summary>The rented length (parked owners: the size a rent must ask for to take it back; its slot only).</summary>
    internal int Length => _length;

    /// <summary>The true size of the last rent (parked owners; its slot only).</summary>
    internal int LastTrueSize => _trueSize;

    /// <summary>The slot's page epoch at the fragment's rent (0 for a block): see <c>ThreadSlot</c>'s page epoch.</summary>
    internal int Epoch => _epoch;

    /// <summary>
    /// The renting thread's return when the parked list is full (its slot, inside it, when <see cref="Epoch"/> says the
    /// fragment is on the cache's current page): the fragment's fields are read, then the count again, so they are rent
    /// <paramref name="state"/>'s; the fragment's release compare-and-swap then decides, and the count advances with a
    /// plain store. 1: given back; 0: not that case, nothing changed; -1: lost (a racing <c>Dispose</c> advanced the
    /// count or released the fragment), nothing changed.
    /// </summary>
    /// <remarks>
    /// Safe beside the paths that decide on the count: a <c>Dispose</c> on another thread swaps the count first and then
    /// releases the fragment, so of it and this call exactly one releases the fragment, and the one whose release fails
    /// throws. A fragment with this one's tag cannot come back between the count's re-read and the release: only this
    /// thread parks and rents this slot's fragments, and a re-carve at the same offset has a newer page generation.
    /// </remarks>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal int TryFreeOnCurrentPage(PageFragCache cache, int state)
    {
        Arena? arena = _arena;
        int arenaOffset = _arenaOffset, generation = _generation;

        // The field reads above before the count's re-read (x86 keeps loads in order; Arm64 needs the fence).
        MemoryOrder.FullFenceUnlessX86();
        if (arena is null || Volatile.Read(ref _state) != state)
        {
            return -1;
        }

        int freed = cache.TryFreeLocalOnCurrentPage(arena, arenaOffset, generation);
        if (freed > 0)
        {
            if (_rentedAt is not null)
            {
                _rentedAt = null;
            }

            Volatile.Write(ref _state, state + 1);
        }

        return freed;
    }

    /// <summary>The fragment a decided or parked owner keeps (its slot only, or quiesced, or the call that decided).</summary>
    internal PageFragment ParkedFragment => new(_arena!, _arenaOffset, _length, _trueSize, _generation);

    /// <summary>
    /// Rents a parked owner again with the fragment it kept (its slot only): the fragment stayed live and its fields
    /// are unchanged, so only the count advances.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal void Unpark()
    {
        OrderAfterReturn();
        Advance();
    }

    /// <summary>A racing <c>Dispose</c> won: this one gives nothing back.</summary>
    [DoesNotReturn]
    [MethodImpl(MethodImplOptions.NoInlining)]
    internal static void ThrowLostRace(Exception? inner) =>
        throw new ObjectDisposedException(
            "A Dispose racing on another thread gave this " + nameof(PageFragMemoryPool) + " buffer back first; this call gave nothing back.", inner);

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void ReleaseBlock(int state)
    {
        // Blocks have no fragment state to decide on: one compare-and-swap of the count does.
        if (Interlocked.CompareExchange(ref _state, state + 1, state) != state)
        {
            ThrowLostRace(null);
        }

        _rentedAt = null;
        Page block = _block;
        _block = default;

        // The owner's reference (the block carries no PageFlags.Caller, so FreePages never takes it): one atomic drop.
        PageAllocator.PutBlockRef(block.Arena!, block.Index);
        _home.ReturnedBlock(this, _trueSize);
    }

    // A rent's field writes must not become visible before the count's advance by the return that preceded it, or a
    // Dispose still reading the previous rent could pair new fields with the old count. x86 keeps stores in order.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void OrderAfterReturn() => MemoryOrder.FullFenceUnlessX86();

    /// <summary>Where the buffer was rented (detection mode only), reported if it leaks.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    internal void CaptureRentStack() => _rentedAt = new StackTrace(1, fNeedFileInfo: true);

    /// <summary>The object leaves the pool for good (a full stash): it has nothing left to reclaim.</summary>
    internal void Drop() => GC.SuppressFinalize(this);

    private void Activate(int trueSize)
    {
        _trueSize = trueSize;
        Advance();
    }

    // Idle to rented: the finalizer armed again if it ran while idle, then the count made odd.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void Advance()
    {
        if (_finalized)
        {
            // Finalized while idle and then reached again through a stash: arm the safety net anew.
            _finalized = false;
            GC.ReRegisterForFinalize(this);
        }

        // Idle (even) until now, and only this slot's thread holds the object: the plain advance is enough.
        Volatile.Write(ref _state, _state + 1);
    }

    [DoesNotReturn]
    private static void ThrowDisposed() => BufferThrowHelper.Disposed(nameof(PageFragMemoryPool) + " buffer");

    /// <summary>The renter forgot <see cref="Dispose()"/>: give the memory back and report it, never stash the object.</summary>
    /// <remarks>
    /// CA2015 warns that a <see cref="Span{T}"/> does not keep a memory manager reachable. The safety net is
    /// issue 12's choice; a <see cref="Memory{T}"/>, a slice, a sequence or a pin handle do keep the owner,
    /// and the pool's docs say that a span alone does not (keep the owner or its memory while a span is used).
    /// </remarks>
#pragma warning disable CA2015 // Adding a finalizer to a type derived from MemoryManager<T>: see the remarks.
    ~FragmentMemoryOwner()
#pragma warning restore CA2015
    {
        int state = Volatile.Read(ref _state);
        if ((state & 1) == 0 || Interlocked.CompareExchange(ref _state, state + 1, state) != state)
        {
            _finalized = true;
            return;
        }

        _finalized = true;
        PageFragment fragment = _arena is null ? default : new PageFragment(_arena, _arenaOffset, _length, _trueSize, _generation);
        Page block = _block;
        _block = default;
        try
        {
            _home.Reclaim(in fragment, block, _trueSize, _rentedAt);
        }
        catch (Exception e)
        {
            // An exception here would end the process; the memory is lost for good, which is what it was.
            Debug.WriteLine("Reclaiming a leaked PageFragMemoryPool buffer failed: " + e);
        }

        _rentedAt = null;
    }
}
