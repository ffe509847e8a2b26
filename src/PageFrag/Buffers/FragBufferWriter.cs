using System.Buffers;
using System.Diagnostics;
using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.ExceptionServices;
using System.Runtime.InteropServices;
using PageFrag.Frag;
using PageFrag.Pages;

namespace PageFrag.Buffers;

/// <summary>
/// An <see cref="IBufferWriter{T}"/> that writes straight into the pages of a <see cref="PageFragCache"/>.
/// The writer reserves a fragment of the cache's page ahead of its writes (prepare, then commit), hands out
/// its free part, and grows it in place while nothing else takes from the cache (commit_noref); an
/// <see cref="Advance"/> only moves the writer's own offset. The written bytes are handed over as an owned
/// <see cref="FragmentChain"/> by <see cref="Detach"/>.
/// </summary>
/// <remarks>
/// <para><b>Contract.</b> As <see cref="IBufferWriter{T}"/> demands: <c>GetMemory(n)</c> returns at least
/// <c>n</c> bytes (at least one byte when <c>n</c> is 0) and never an empty buffer; <c>Advance</c> beyond
/// the buffer last returned throws <see cref="InvalidOperationException"/> and a negative count throws
/// <see cref="ArgumentException"/>, with the types and message of <see cref="ArrayBufferWriter{T}"/>; a
/// buffer must not be written after <c>Advance</c> (a new <c>GetMemory</c> is needed).</para>
/// <para><b>Where the memory comes from.</b> Hints up to 4096 bytes, and up to 32768 while the cache holds
/// an order-3 page, are served from the cache's page: the writer reserves at least 1 KiB and the hint, and
/// grows the reservation in place four times more each time, up to the rest of the page, so that a writer
/// alone on its cache makes about four cache calls per 32 KiB page. <c>GetMemory</c> returns what is left
/// of the reservation. A larger hint, or one the cache cannot serve because it fell back to an order-0 page,
/// gets a dedicated page block of the smallest sufficient order from the cache's <see cref="PageAllocator"/>;
/// its unused tail serves the following writes until it runs out, and the whole block counts in
/// <see cref="FragmentChain.TrueSize"/>. A hint above the allocator's largest block (<c>4096 &lt;&lt; MaxOrder</c>)
/// gets a pinned array, which the allocator's memory limit does not cover. When the allocator refuses a page
/// (limit reached, fault injected), <c>GetMemory</c> throws <see cref="InsufficientMemoryException"/> and the
/// writer keeps what it wrote.</para>
/// <para><b>Sharing the cache.</b> The reserved bytes are the writer's (committed, with a page reference), so
/// other allocations from the cache between writes never get them: they take the bytes after the reservation,
/// and the writer's next reservation starts after theirs, in a new buffer of the chain. <see cref="Detach"/>,
/// <see cref="Reset"/> and <see cref="Dispose"/> give the unwritten rest of the reservation back to the cache
/// when it is still the cache's most recent allocation; otherwise the chain keeps it until it is freed (at most
/// the last reservation, and counted in <see cref="FragmentChain.TrueSize"/>).</para>
/// <para><b>Chains come back with their pages.</b> A detached chain disposed while the writer is open gives its
/// fragments of 1 KiB or more back to the writer, still live, instead of freeing them, and the writer's next
/// chain is written into those on 32 KiB pages first (oldest first): no cache call, no atomic operation, no page taken from or
/// given back to the allocator. A chain disposed on another thread hands them over through the writer's own
/// small stash (one compare-and-swap), never through the cache, which only the writer's thread touches. The
/// writer keeps at most what its chains last held: fragments the next chain does not need are freed at its
/// <see cref="Detach"/>, and <see cref="Dispose"/> frees the rest (a chain disposed after its writer frees its
/// own). Each kept fragment is checked to be still live before it is written into again.</para>
/// <para><b>Threading.</b> Single owner: the writer and its cache belong to one thread at a time. The
/// detached chain may be freed on any thread.</para>
/// <para><b>Allocation.</b> <c>GetMemory</c>/<c>Advance</c> allocate nothing on the GC heap once warm,
/// and neither does <see cref="Detach"/> followed by disposing the chain (chains and their segment objects
/// are recycled).</para>
/// </remarks>
public sealed class FragBufferWriter : IBufferWriter<byte>, IDisposable
{
    // The first reservation of a run of writes: small enough that a writer sharing its cache with others keeps
    // little unwritten memory in a detached chain, large enough that the next few messages need no cache call.
    private const int FirstReservation = 1024;

    // Each in-place growth takes this many times the previous one (1, 4, 16 KiB, then the rest of a 32 KiB page:
    // four cache calls per page for a writer alone on its cache).
    private const int GrowthFactor = 4;

    // Chains detached from this writer come back here when disposed, with the fragments they kept for the writer;
    // four cover a writer whose chains are freed a little later than the next one is written (a send in flight).
    private readonly ChainStash _chains = new(4);
    private readonly PageFragCache _cache;

    // The chain being written; null after Detach until the next write needs one (Chain), so that a chain disposed
    // before the next write comes back as the next chain, with its fragments, and one chain object serves.
    private FragmentChain? _chain;

    // The open region, in the coordinates of the pinned array that backs it: bytes [_segmentStart, _position)
    // are written, [_position, _end) are free. _end == _position when there is no region, after Dispose, and
    // while a dedicated block or array waits for its first Advance, so that the fast paths fall through.
    private byte[]? _buffer;
    private int _segmentStart;
    private int _position;
    private int _end;

    // What the buffer last returned allows Advance to commit; 0 after an Advance.
    private int _available;

    // A dedicated block or array just returned by GetMemory, not yet advanced into: its length, else 0.
    private int _pendingLength;

    // The chain's segment the region belongs to (reserved until its first bytes are synced, then linked last).
    private FragmentSegment? _open;
    private bool _openLinked;

    // The open region is a fragment a disposed chain kept for this writer, not the cache's most recent allocation.
    private bool _openKept;

    // The next in-place growth of a fragment reservation.
    private int _growth;

    // The cache as it was right after the writer's last reservation or growth: if it is unchanged, the
    // reservation is still the cache's most recent allocation and its unwritten tail can go back.
    private int _cacheOffset;
    private long _cacheRefills;

    private bool _disposed;

    /// <summary>Creates a writer over <paramref name="cache"/>, which the caller keeps owning (and draining).</summary>
    /// <exception cref="ArgumentNullException"><paramref name="cache"/> is null.</exception>
    public FragBufferWriter(PageFragCache cache)
    {
        ArgumentNullException.ThrowIfNull(cache);
        _cache = cache;
    }

    /// <summary>
    /// The largest size hint <see cref="GetMemory"/> accepts: <see cref="Array.MaxLength"/>, the largest
    /// buffer .NET can allocate (a hint above the allocator's largest block is served by a pinned array).
    /// </summary>
    public static int MaxSizeHint => Array.MaxLength;

    /// <summary>The cache the writer takes its pages from.</summary>
    public PageFragCache Cache => _cache;

    /// <summary>Bytes written (advanced) since the last <see cref="Detach"/> or <see cref="Reset"/>.</summary>
    public long WrittenCount
    {
        get
        {
            ThrowIfDisposed();
            SyncOpen();
            return Chain.Length;
        }
    }

    /// <summary>Buffers the written bytes occupy; writes that follow each other in a page share one.</summary>
    public int SegmentCount
    {
        get
        {
            ThrowIfDisposed();
            SyncOpen();
            return Chain.SegmentCount;
        }
    }

    /// <summary>
    /// A view of the bytes written so far. The writer keeps owning them: the view is valid until
    /// <see cref="Reset"/> or <see cref="Dispose"/>, and stays valid (and unchanged) across later writes.
    /// </summary>
    public ReadOnlySequence<byte> WrittenSequence
    {
        get
        {
            ThrowIfDisposed();
            SyncOpen();
            return Chain.Sequence;
        }
    }

    /// <summary>
    /// Returns a buffer of at least <paramref name="sizeHint"/> bytes (at least one when it is 0): the free
    /// part of the writer's reservation in the cache's page, or the tail of the last dedicated block.
    /// </summary>
    /// <exception cref="ArgumentException"><paramref name="sizeHint"/> is negative.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="sizeHint"/> is above <see cref="MaxSizeHint"/>.</exception>
    /// <exception cref="InsufficientMemoryException">The allocator could not supply a page.</exception>
    /// <exception cref="ObjectDisposedException">The writer was disposed.</exception>
    public Memory<byte> GetMemory(int sizeHint = 0)
    {
        // Hot path: the open region has room (a negative hint wraps to a large unsigned and falls through;
        // the room is never negative, and one byte more than the hint also covers a hint of 0).
        int room = _end - _position;
        if ((uint)sizeHint < (uint)room)
        {
            _available = room;
            return new Memory<byte>(_buffer, _position, room);
        }

        return GetMemorySlow(sizeHint);
    }

    /// <summary>The span of <see cref="GetMemory"/>: same contract, same exceptions.</summary>
    /// <exception cref="ArgumentException"><paramref name="sizeHint"/> is negative.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="sizeHint"/> is above <see cref="MaxSizeHint"/>.</exception>
    /// <exception cref="InsufficientMemoryException">The allocator could not supply a page.</exception>
    /// <exception cref="ObjectDisposedException">The writer was disposed.</exception>
    public Span<byte> GetSpan(int sizeHint = 0)
    {
        int room = _end - _position;
        if ((uint)sizeHint < (uint)room)
        {
            _available = room;
            return new Span<byte>(_buffer, _position, room);
        }

        return GetSpanSlow(sizeHint);
    }

    // Separate from GetSpan so that the Memory of the slow path (turned into a span here) does not give the hot
    // path a stack frame that zeroes it on every call.
    [MethodImpl(MethodImplOptions.NoInlining)]
    private Span<byte> GetSpanSlow(int sizeHint) => GetMemorySlow(sizeHint).Span;

    /// <summary>
    /// Commits <paramref name="count"/> bytes of the buffer last returned: they follow the bytes written
    /// before in the same buffer of the chain, or start the next one. The returned buffer must not be
    /// written afterwards.
    /// </summary>
    /// <exception cref="ArgumentException"><paramref name="count"/> is negative.</exception>
    /// <exception cref="InvalidOperationException">
    /// <paramref name="count"/> is larger than the buffer last returned (or no buffer was requested).
    /// </exception>
    /// <exception cref="ObjectDisposedException">The writer was disposed.</exception>
    public void Advance(int count)
    {
        // Hot path: 1 to _available bytes of the open region. The bytes are the writer's already (reserved),
        // so no cache call is needed; the chain learns the count when someone looks (SyncOpen).
        if ((uint)(count - 1) < (uint)_available)
        {
            _position += count;
            _available = 0;
            return;
        }

        AdvanceSlow(count);
    }

    /// <summary>
    /// Hands the written bytes over as an owned chain (dispose it to free them) and starts empty again.
    /// Fragments that an earlier chain gave back to the writer and this one did not need are freed here.
    /// </summary>
    /// <exception cref="ObjectDisposedException">The writer was disposed.</exception>
    /// <exception cref="PageFragDoubleFreeException">
    /// A fragment kept for reuse had been freed by someone else meanwhile; the others are freed all the same,
    /// and the writer keeps its bytes (call <see cref="Detach"/> again).
    /// </exception>
    public FragmentChain Detach()
    {
        ThrowIfDisposed();
        FragmentChain written = Chain;
        CloseRegion(giveBackTail: true);
        written.ReleaseKept()?.Throw();
        _chain = null;
        return written;
    }

    /// <summary>
    /// Frees the bytes written so far and any buffer handed out but not committed. Fragments of 1 KiB or more
    /// stay with the writer, which writes into them again before it takes new memory (<see cref="Detach"/> and
    /// <see cref="Dispose"/> free those it did not need).
    /// </summary>
    /// <exception cref="ObjectDisposedException">The writer was disposed.</exception>
    /// <exception cref="PageFragDoubleFreeException">
    /// A written block had already been freed by someone else (a kept fragment is checked when the writer takes it again).
    /// </exception>
    public void Reset()
    {
        ThrowIfDisposed();
        CloseRegion(giveBackTail: true);
        Chain.ReleaseAll(keep: true)?.Throw();
    }

    /// <summary>
    /// Frees what <see cref="Reset"/> frees, and the fragments that disposed chains gave back for reuse, and
    /// retires the writer: chains it handed out and disposed later free their own bytes. The cache is not
    /// drained: it belongs to the caller. A second call does nothing.
    /// </summary>
    /// <exception cref="PageFragDoubleFreeException">A fragment had already been freed by someone else; the rest is freed all the same.</exception>
    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }

        _disposed = true;
        CloseRegion(giveBackTail: true);
        ExceptionDispatchInfo? failure = _chains.Close();
        FragmentChain? chain = _chain;
        _chain = null;
        chain?.Dispose();
        failure?.Throw();
    }

    /// <summary>
    /// Frees the fragments disposed chains gave back for reuse: those of the chains waiting in the stash and those
    /// the current chain has not written into. For a quiet point that must find every page with a cache or a pool
    /// (the stress run's checkpoint). The writer's thread, or whoever holds the writer while its owner is paused.
    /// </summary>
    /// <exception cref="PageFragDoubleFreeException">A kept fragment had been freed by someone else; the rest is freed all the same.</exception>
    internal void ReleaseKept()
    {
        ExceptionDispatchInfo? failure = _chains.ReleaseKept();
        ExceptionDispatchInfo? current = _chain?.ReleaseKept();
        (failure ?? current)?.Throw();
    }

    /// <summary>The chain being written, rented when the writer has none (after <see cref="Detach"/>).</summary>
    private FragmentChain Chain => _chain ??= FragmentChain.RentEmpty(_chains);

    [MethodImpl(MethodImplOptions.NoInlining)]
    private Memory<byte> GetMemorySlow(int sizeHint)
    {
        ThrowIfDisposed();
        if (sizeHint < 0)
        {
            BufferThrowHelper.NegativeSizeHint(sizeHint);
        }

        if (sizeHint > MaxSizeHint)
        {
            BufferThrowHelper.SizeHintTooLarge(sizeHint, MaxSizeHint);
        }

        int need = Math.Max(sizeHint, 1);
        int room = _end - _position;
        if (room >= need)
        {
            // The hot path's test is one byte conservative: a hint of exactly the room lands here.
            _available = room;
            return new Memory<byte>(_buffer, _position, room);
        }

        FragmentSegment? open = _open;
        if (open is not null && open.Kind != SegmentKind.Fragment && _position == _segmentStart)
        {
            // A dedicated block or array handed out by an earlier call and not written yet serves another large
            // request; a small one goes to the cache instead, rather than pin a whole block for a few bytes.
            int length = open.Capacity;
            if (need > PageConstants.PageSize && length >= need)
            {
                return Pending(length);
            }

            CloseRegion(giveBackTail: true);
            open = null;
        }

        if (need <= PageFragCache.MaxFragmentSize)
        {
            if (open is not null && open.Kind == SegmentKind.Fragment && !_openKept && TryGrowInPlace(open, need - room))
            {
                _available = _end - _position;
                return new Memory<byte>(_buffer, _position, _available);
            }

            // The rest of the region is too short and cannot grow (the page is full, or someone else took the
            // bytes after it): the region ends here. Its unwritten tail is not given back: the cache is about to
            // leave the page, or it is no longer the cache's most recent allocation.
            CloseRegion(giveBackTail: false);
            FragmentChain chain = Chain;

            // A fragment a disposed chain gave back: the whole of it is the writer's already, so it is written
            // into with no cache call, no atomic operation and no page taken from the allocator.
            if (chain.HasKept && chain.ReserveKept(need) is FragmentSegment kept)
            {
                Open(kept, kept.Fragment.ArraySegment);
                _openKept = true;
                _end = _position + kept.Fragment.Length;
                _available = _end - _position;
                return new Memory<byte>(_buffer, _position, _available);
            }

            if (_cache.TryPrepare(need, out PreparedFragment prepared))
            {
                int size = Math.Min(Math.Max(need, FirstReservation), prepared.Size);
                PageFragment fragment = _cache.Commit(in prepared, size);
                Open(chain.ReserveFragment(fragment), fragment.ArraySegment);
                _end = _position + size;
                _growth = Math.Min(GrowthFactor * size, PageFragCache.MaxFragmentSize);
                RememberCache();
                _available = size;
                return new Memory<byte>(_buffer, _position, size);
            }
        }

        return GetDedicated(need);
    }

    /// <summary>
    /// Grows the open fragment over the next <paramref name="extra"/> or more bytes of the page when they
    /// follow it directly and the page has them (probe + commit_noref: no refill, no new reference).
    /// </summary>
    private bool TryGrowInPlace(FragmentSegment open, int extra)
    {
        if (!_cache.TryProbe(extra, out PreparedFragment prepared))
        {
            return false;
        }

        int size = Math.Min(Math.Max(extra, _growth), prepared.Size);
        if (!_cache.TryCommitNoRef(in prepared, size, ref open.Fragment))
        {
            return false;
        }

        _end += size;
        if (_openLinked)
        {
            _chain!.LastGrew(0, size);
        }

        _growth = Math.Min(_growth * GrowthFactor, PageFragCache.MaxFragmentSize);
        RememberCache();
        return true;
    }

    private Memory<byte> GetDedicated(int need)
    {
        CloseRegion(giveBackTail: true);
        PageAllocator allocator = _cache.Allocator;
        int order = need <= PageConstants.PageSize ? 0 : BitOperations.Log2((uint)(need - 1)) + 1 - PageConstants.PageShift;
        if (order > allocator.MaxOrder)
        {
            // Above the largest block: a pinned array keeps the contract (at least sizeHint, usable by sockets).
            byte[] array = GC.AllocateUninitializedArray<byte>(need, pinned: true);
            Open(Chain.ReserveArray(array), new ArraySegment<byte>(array));
            return Pending(array.Length);
        }

        // A block without PageFlags.Caller, as a fragment cache's: FreePages of a handle found by its address refuses it
        // (a caller's TryAllocPages block it would free behind the writer's back); the segment gives it back with its own
        // reference (FragmentSegment.Release).
        if (!allocator.TryAllocBlock(order, AllocFlags.None, out Arena? arena, out int index))
        {
            BufferThrowHelper.OutOfPages(need);
        }

        Page block = new(arena, index);

        if (!MemoryMarshal.TryGetArray<byte>(block.Memory, out ArraySegment<byte> segment))
        {
            Debug.Fail("page blocks lie in pinned arrays");
        }

        Open(Chain.ReserveBlock(block), segment);
        return Pending(block.Length);
    }

    /// <summary>Returns the whole dedicated buffer of the open segment, which waits for its first Advance.</summary>
    private Memory<byte> Pending(int length)
    {
        _pendingLength = length;
        _available = 0;
        return new Memory<byte>(_buffer, _segmentStart, length);
    }

    private void Open(FragmentSegment segment, ArraySegment<byte> memory)
    {
        _open = segment;
        _openLinked = false;
        _openKept = false;
        _buffer = memory.Array;
        _segmentStart = memory.Offset;
        _position = memory.Offset;
        _end = memory.Offset;
        _pendingLength = 0;
        _available = 0;
    }

    private void AdvanceSlow(int count)
    {
        ThrowIfDisposed();
        if (count < 0)
        {
            BufferThrowHelper.NegativeAdvance(count);
        }

        if (count == 0)
        {
            // Nothing used: a pending block or array stays for the next GetMemory (which may return it again).
            _available = 0;
            _pendingLength = 0;
            return;
        }

        if (_pendingLength > 0 && count <= _pendingLength)
        {
            // The first bytes into a dedicated block or array: from now on it is the open region.
            _end = _segmentStart + _open!.Capacity;
            _position += count;
            _pendingLength = 0;
            return;
        }

        BufferThrowHelper.AdvancedTooFar(Math.Max(_available, _pendingLength));
    }

    /// <summary>Tells the chain how many bytes the open segment holds, linking it when it gets its first ones.</summary>
    private void SyncOpen()
    {
        FragmentSegment? open = _open;
        if (open is null)
        {
            return;
        }

        int used = _position - _segmentStart;
        int grown = used - open.Used;
        if (grown == 0)
        {
            return;
        }

        open.SetUsed(used);
        if (_openLinked)
        {
            _chain!.LastGrew(grown, 0);
        }
        else
        {
            _chain!.LinkReserved();
            _openLinked = true;
        }
    }

    /// <summary>
    /// Ends the open region: its written bytes stay in the chain; a reservation nobody wrote into is given
    /// back; with <paramref name="giveBackTail"/> the unwritten tail of a fragment goes back to the cache when
    /// the fragment is still the cache's most recent allocation (abort, then commit the written part again:
    /// the same address, and nothing else can use the cache in between).
    /// </summary>
    private void CloseRegion(bool giveBackTail)
    {
        FragmentSegment? open = _open;
        if (open is null)
        {
            return;
        }

        SyncOpen();
        bool mostRecent = open.Kind == SegmentKind.Fragment && !_openKept && IsCacheAsRemembered(open.Fragment);
        if (!_openLinked)
        {
            if (mostRecent)
            {
                _cache.Abort(in open.Fragment);
            }

            _chain!.DiscardReserved(release: !mostRecent);
        }
        else if (giveBackTail && mostRecent && open.Used > 0 && open.Used < open.Fragment.Length)
        {
            TrimToWritten(open);
        }

        _open = null;
        _openLinked = false;
        _openKept = false;
        _buffer = null;
        _segmentStart = 0;
        _position = 0;
        _end = 0;
        _available = 0;
        _pendingLength = 0;
    }

    private void TrimToWritten(FragmentSegment open)
    {
        PageFragment reserved = open.Fragment;

        // Shortened in place (same start, state and reference): an abort and a new commit would carve a new fragment
        // at the start the abort released, which Abort no longer does (a copy of an aborted handle must not free it).
        PageFragment trimmed = _cache.TrimMostRecent(in reserved, open.Used);
        open.Fragment = trimmed;
        _chain!.LastGrew(0, trimmed.TrueSize - reserved.TrueSize);
    }

    /// <summary>Whether the cache allocated nothing since the writer's last reservation or growth.</summary>
    private bool IsCacheAsRemembered(in PageFragment fragment)
    {
        Page page = _cache.CurrentPage;
        return _cache.Offset == _cacheOffset && _cache.PagesAllocated + _cache.PagesReused == _cacheRefills &&
            ReferenceEquals(page.Arena, fragment.Arena) &&
            (long)fragment.ArenaOffset + fragment.Length == ((long)page.Index << PageConstants.PageShift) + _cacheOffset;
    }

    private void RememberCache()
    {
        _cacheOffset = _cache.Offset;
        _cacheRefills = _cache.PagesAllocated + _cache.PagesReused;
    }

    private void ThrowIfDisposed()
    {
        if (_disposed)
        {
            BufferThrowHelper.Disposed(nameof(FragBufferWriter));
        }
    }
}
