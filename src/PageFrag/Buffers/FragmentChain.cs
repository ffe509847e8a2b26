using System.Buffers;
using System.Diagnostics;
using System.Runtime.ExceptionServices;
using PageFrag.Frag;
using PageFrag.Pages;

namespace PageFrag.Buffers;

/// <summary>
/// An owned chain of buffers (fragments, and page blocks or pinned arrays for large writes) seen as one
/// <see cref="ReadOnlySequence{T}"/>: what a <see cref="FragBufferWriter"/> hands over, or what a caller
/// assembles from fragments with <see cref="Append"/>. Disposing the chain frees every buffer in it.
/// </summary>
/// <remarks>
/// <para><b>Threading.</b> A chain has one owner at a time: appending, reading and disposing are not
/// synchronized. The owner may pass it to another thread and dispose it there (freeing fragments is safe
/// from any thread).</para>
/// <para><b>Reuse.</b> To keep writers allocation-free, chain and segment objects are recycled after
/// <see cref="Dispose"/>. One atomic exchange decides <see cref="Dispose"/>: of two calls, even racing on
/// two threads, exactly one frees the buffers and the other is ignored, as with .NET's own disposables, and
/// members then throw <see cref="ObjectDisposedException"/>; but once the object has been handed out
/// again, a stale reference (or a <see cref="ReadOnlySequence{T}"/> taken before the dispose) sees someone
/// else's data. Treat a disposed chain like freed memory.</para>
/// <para><b>The garbage collector is the last owner.</b> A chain that becomes unreachable without
/// <see cref="Dispose"/> frees its buffers in its finalizer and reports it as a <c>LeakReclaimed</c> event
/// of the <c>PageFrag</c> event source (kind <c>FragmentChain</c>). <see cref="Sequence"/> is built over the
/// chain's segments, whose memory references them (and they the chain): a sequence, or any memory taken
/// from it, keeps the chain reachable, so the finalizer never frees bytes that are still held. The array
/// segments of <see cref="AsArraySegments"/> do not: keep the chain while they are used.</para>
/// <para><b>Sockets.</b> Every buffer lies in a pinned array, so <see cref="AsArraySegments"/> gives the
/// list a gather send takes (<c>Socket.SendAsync(IList&lt;ArraySegment&lt;byte&gt;&gt;)</c>,
/// <c>SocketAsyncEventArgs.BufferList</c>), and the memory stays put during the I/O.</para>
/// </remarks>
public sealed class FragmentChain : IDisposable
{
    // A chain keeps the segment objects it used, up to this many, for its next use: a writer's chains then
    // allocate nothing once warm, however long (8192 segments of a 32 KiB page each cover a 256 MiB sequence;
    // the objects take about 150 B each, so at most about 1.2 MiB per chain, kept only by a chain that held
    // that many buffers, as ArrayBufferWriter keeps the capacity it grew to).
    private const int MaxSpareSegments = 8192;

    // A writer's chain keeps the fragments it held, when disposed, for its writer to write into again (no
    // allocator call, no atomic operation): at most this many, and only fragments of at least this many bytes
    // (smaller ones, left when other users share the cache, would serve few writes) on order-3 pages (a fragment
    // of an order-0 page, the cache's fallback when memory was fragmented, would keep the writer's chains in
    // 4 KiB pieces for good; freed, it lets the next chain take a 32 KiB page).
    private const int MaxKeptFragments = 8192;
    private const int MinKeptFragment = 1024;

    private ChainStash? _home;
    private FragmentSegment? _first;
    private FragmentSegment? _last;
    private FragmentSegment? _spare;

    // The segment a FragBufferWriter reserved and has not written into yet: not linked (so no view shows an
    // empty segment) but owned, so that ReleaseAll and the finalizer free its buffer like the linked ones.
    private FragmentSegment? _reserved;

    // Segments whose fragments were kept for reuse (Park), oldest first, linked through NextSpare: they are not
    // part of the chain's bytes and belong to its writer, which writes into them before it takes new memory.
    private FragmentSegment? _keptFirst;
    private FragmentSegment? _keptLast;
    private int _keptCount;
    private int _spareCount;
    private int _count;
    private long _length;
    private long _trueSize;

    // 0 while live, 1 once disposed: Dispose exchanges it, so exactly one call frees.
    private int _disposed;

    // The finalizer ran while the chain was not live; re-armed when the object is handed out again.
    private bool _finalized;
    private List<ArraySegment<byte>>? _arraySegments;
    private bool _arraySegmentsStale = true;

    /// <summary>Creates an empty chain.</summary>
    public FragmentChain()
    {
    }

    /// <summary>The bytes in the chain.</summary>
    public long Length
    {
        get
        {
            ThrowIfDisposed();
            return _length;
        }
    }

    /// <summary>
    /// The memory the chain keeps from reuse: the fragments' true sizes (alignment padding included) plus
    /// whole blocks and arrays. This, not <see cref="Length"/>, is what to charge a connection's budget.
    /// </summary>
    public long TrueSize
    {
        get
        {
            ThrowIfDisposed();
            return _trueSize;
        }
    }

    /// <summary>Buffers in the chain; contiguous writes are coalesced into one.</summary>
    public int SegmentCount
    {
        get
        {
            ThrowIfDisposed();
            return _count;
        }
    }

    /// <summary>The bytes as a sequence, valid until the chain is disposed.</summary>
    public ReadOnlySequence<byte> Sequence
    {
        get
        {
            ThrowIfDisposed();
            if (_first is null)
            {
                return ReadOnlySequence<byte>.Empty;
            }

            // Built over the segments even for one, so that the sequence keeps the chain reachable.
            _last!.SyncMemory();
            return new ReadOnlySequence<byte>(_first, 0, _last, _last.Memory.Length);
        }
    }

    /// <summary>
    /// Takes ownership of <paramref name="fragment"/> and appends it: the chain frees it on dispose.
    /// </summary>
    /// <exception cref="ArgumentException">The fragment is empty.</exception>
    /// <exception cref="ObjectDisposedException">The chain was disposed.</exception>
    public void Append(in PageFragment fragment)
    {
        ThrowIfDisposed();
        if (fragment.IsEmpty)
        {
            throw new ArgumentException("The fragment is empty: it came from a failed or default allocation.", nameof(fragment));
        }

        AppendFragment(fragment);
    }

    /// <summary>
    /// The buffers as array segments of their pinned backing arrays, for gather sends. The list is owned
    /// by the chain and rebuilt after an append: do not modify it, and do not use it after the chain is
    /// disposed. Allocation-free once the chain has built a list of that size.
    /// </summary>
    /// <exception cref="ObjectDisposedException">The chain was disposed.</exception>
    public IList<ArraySegment<byte>> AsArraySegments()
    {
        ThrowIfDisposed();
        List<ArraySegment<byte>> list = _arraySegments ??= new List<ArraySegment<byte>>(Math.Max(_count, 4));
        if (_arraySegmentsStale)
        {
            _last?.SyncMemory();
            list.Clear();
            for (FragmentSegment? s = _first; s is not null; s = (FragmentSegment?)s.Next)
            {
                list.Add(SequenceSegments.ToArraySegment(s.Memory));
            }

            _arraySegmentsStale = false;
        }

        return list;
    }

    /// <summary>
    /// Frees every buffer of the chain. A chain a <see cref="FragBufferWriter"/> handed out goes back to that
    /// writer for reuse, with its fragments of 1 KiB or more: the writer writes its next chains into them
    /// instead of taking new memory, and frees them when it is disposed (or when its next chain does not need
    /// them); if the writer is disposed already, they are freed at once. Any other chain is left to the
    /// collector. A second call before the object is reused does nothing; dispose a writer's chain exactly
    /// once, since after its reuse a second call would release the writer's next chain. Any thread, but not
    /// concurrently with other use of the chain.
    /// </summary>
    /// <exception cref="PageFragDoubleFreeException">
    /// A fragment of the chain had already been freed by someone else; the rest of the chain is still freed. (A
    /// writer's chain that goes back to its open writer does not look: the writer reports such a fragment when it
    /// reaches it, and never writes into it.)
    /// </exception>
    public void Dispose()
    {
        if (Volatile.Read(ref _disposed) != 0 || Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        // The fragments are kept (not freed) only for a writer that is still open; the stash's handshake below
        // decides whether the writer got them, else they are freed here.
        ChainStash? home = _home;
        ExceptionDispatchInfo? failure = ReleaseAll(keep: home is not null && !home.IsClosed);

        // Only a writer's own chains go back to it, never to a process-wide stash: a caller's second Dispose
        // after another owner took the object would free that owner's bytes. Within one writer the risk stays
        // with the caller that broke the rule (its own next chain), as for a pooled buffer.
        if (home is null || !home.TryReturn(this))
        {
            // Left to the collector with nothing to reclaim.
            ExceptionDispatchInfo? kept = ReleaseKept();
            failure ??= kept;
            GC.SuppressFinalize(this);
        }

        failure?.Throw();
    }

    /// <summary>The owner forgot <see cref="Dispose"/>: free the buffers and report it, never stash the object.</summary>
    ~FragmentChain()
    {
        _finalized = true;

        // Unreachable, so nobody else uses the object: a live chain's buffers and the fragments a disposed chain
        // kept for its writer (a writer dropped without Dispose, with this chain in its stash) are freed here.
        bool live = Volatile.Read(ref _disposed) == 0 && Interlocked.Exchange(ref _disposed, 1) == 0;
        if ((!live || (_first is null && _reserved is null)) && _keptFirst is null)
        {
            return;
        }

        long count = (live ? _count : 0) + _keptCount;
        long bytes = (live ? _trueSize : 0) + KeptBytes();
        try
        {
            if (live)
            {
                ReleaseAll(keep: false);
            }

            ReleaseKept();
            PageFragEventSource.Log.LeakReclaimed(nameof(FragmentChain), count, bytes, string.Empty);
        }
        catch (Exception e)
        {
            // An exception here would end the process.
            System.Diagnostics.Debug.WriteLine("Reclaiming a leaked FragmentChain failed: " + e);
        }
    }

    // ------------------------------------------------------------------ used by FragBufferWriter

    /// <summary>
    /// An empty chain, recycled when one is available. A writer passes its own stash as
    /// <paramref name="home"/>, so that its chains come back to it and its steady state does not depend
    /// on what other writers take from the shared stash.
    /// </summary>
    internal static FragmentChain RentEmpty(ChainStash? home)
    {
        FragmentChain? chain = home?.TryTake();
        if (chain is null)
        {
            return new FragmentChain { _home = home };
        }

        if (chain._finalized)
        {
            chain._finalized = false;
            GC.ReRegisterForFinalize(chain);
        }

        chain._home = home;
        Volatile.Write(ref chain._disposed, 0);
        return chain;
    }

    internal bool IsDisposed => Volatile.Read(ref _disposed) != 0;

    /// <summary>Whether the chain holds fragments kept for its writer.</summary>
    internal bool HasKept => _keptFirst is not null;

    /// <summary>
    /// Takes the oldest kept fragment of at least <paramref name="need"/> bytes on an order-3 page as the reserved
    /// segment (as <see cref="ReserveFragment"/>), after checking that it is still live; shorter ones, and those of
    /// order-0 pages, are freed on the way; null when none is left. The owning writer's thread only.
    /// </summary>
    /// <exception cref="PageFragDoubleFreeException">
    /// A kept fragment had been freed by someone else meanwhile (by address, or a copy of its handle): it is
    /// dropped, not written into; the other kept fragments stay.
    /// </exception>
    internal FragmentSegment? ReserveKept(int need)
    {
        while (_keptFirst is FragmentSegment s)
        {
            _keptFirst = s.NextSpare;
            s.NextSpare = null;
            _keptCount--;
            if (_keptFirst is null)
            {
                _keptLast = null;
            }

            int order = FragmentSegment.LiveOrder(s.Fragment);
            if (order < 0)
            {
                // Not ours any more: writing into it would write into someone else's bytes.
                s.Fragment = default;
                KeepSpare(s);
                throw new PageFragDoubleFreeException("A fragment that a disposed chain gave back to its writer was freed by someone else " +
                    "(by its address or a copy of its handle) while the writer kept it for reuse: the writer dropped it.");
            }

            if (order > 0 && s.Fragment.Length >= need)
            {
                Debug.Assert(_reserved is null, "a writer reserves one buffer at a time");
                _reserved = s;
                s.SetFragment(s.Fragment, 0, _length);
                return s;
            }

            s.ReleaseParked();
            KeepSpare(s);
        }

        return null;
    }

    /// <summary>
    /// Frees the fragments kept for the writer (none is part of the chain's bytes). The first failure is
    /// returned, not thrown; every kept fragment is dropped all the same.
    /// </summary>
    internal ExceptionDispatchInfo? ReleaseKept()
    {
        ExceptionDispatchInfo? failure = null;
        FragmentSegment? s = _keptFirst;
        _keptFirst = null;
        _keptLast = null;
        _keptCount = 0;
        while (s is not null)
        {
            FragmentSegment? next = s.NextSpare;
            s.NextSpare = null;
            try
            {
                s.ReleaseParked();
            }
            catch (Exception e)
            {
                failure ??= ExceptionDispatchInfo.Capture(e);
            }

            KeepSpare(s);
            s = next;
        }

        return failure;
    }

    private long KeptBytes()
    {
        long bytes = 0;
        for (FragmentSegment? s = _keptFirst; s is not null; s = s.NextSpare)
        {
            bytes += s.Fragment.TrueSize;
        }

        return bytes;
    }

    internal void AppendFragment(in PageFragment fragment)
    {
        FragmentSegment segment = NewSegment();
        segment.SetFragment(fragment, fragment.Length, _length);
        Link(segment, fragment.Length, fragment.TrueSize);
    }

    /// <summary>
    /// Takes ownership of a fragment the writer reserved ahead of its writes, as an unlinked segment with no
    /// byte written: <see cref="LinkReserved"/> links it once it has bytes, <see cref="DiscardReserved"/> drops it.
    /// </summary>
    internal FragmentSegment ReserveFragment(in PageFragment fragment)
    {
        FragmentSegment segment = Reserved();
        segment.SetFragment(fragment, 0, _length);
        return segment;
    }

    /// <summary>Takes ownership of a dedicated block, as <see cref="ReserveFragment"/>.</summary>
    internal FragmentSegment ReserveBlock(Page block)
    {
        FragmentSegment segment = Reserved();
        segment.SetBlock(block, 0, _length);
        return segment;
    }

    /// <summary>Takes ownership of a pinned array, as <see cref="ReserveFragment"/>.</summary>
    internal FragmentSegment ReserveArray(byte[] array)
    {
        FragmentSegment segment = Reserved();
        segment.SetArray(array, 0, _length);
        return segment;
    }

    /// <summary>The reserved segment got its first bytes (its <see cref="FragmentSegment.Used"/>): it becomes the last one.</summary>
    internal void LinkReserved()
    {
        FragmentSegment segment = _reserved!;
        Debug.Assert(segment.Used > 0, "an empty segment is never linked");
        _reserved = null;
        segment.SyncMemory();
        Link(segment, segment.Used, segment.TrueSize);
    }

    /// <summary>
    /// Drops the reserved segment, which has no byte written: its buffer is freed when <paramref name="release"/>
    /// is set; otherwise the caller already gave it back (an abort).
    /// </summary>
    internal void DiscardReserved(bool release)
    {
        FragmentSegment segment = _reserved!;
        _reserved = null;
        if (release)
        {
            segment.Release();
        }
        else
        {
            segment.Clear();
        }

        KeepSpare(segment);
    }

    /// <summary>The last segment grew by <paramref name="bytes"/> (written) and <paramref name="trueBytes"/> (owned; negative when trimmed).</summary>
    internal void LastGrew(int bytes, int trueBytes)
    {
        _length += bytes;
        _trueSize += trueBytes;
        _arraySegmentsStale = true;
    }

    /// <summary>
    /// Frees every buffer and empties the chain, keeping the object. With <paramref name="keep"/> (a writer's
    /// chain whose writer is open) its fragments of at least 1 KiB are kept for the writer instead, unchecked: the
    /// writer checks each one when it takes it again, and a fragment someone freed behind the chain's back fails
    /// there, or at its free, as a double free. The first failure is returned, not thrown.
    /// </summary>
    internal ExceptionDispatchInfo? ReleaseAll(bool keep)
    {
        ExceptionDispatchInfo? failure = null;
        FragmentSegment? s = _first;
        while (s is not null)
        {
            var next = (FragmentSegment?)s.Next;
            // No look at the fragment's page here (a cold descriptor and state byte per page): the writer checks
            // each kept fragment when it takes it again (ReserveKept), and its free reports a double free.
            if (keep && s.Kind == SegmentKind.Fragment && s.Fragment.Length >= MinKeptFragment && _keptCount < MaxKeptFragments)
            {
                s.Park();
                if (_keptLast is null)
                {
                    _keptFirst = s;
                }
                else
                {
                    _keptLast.NextSpare = s;
                }

                _keptLast = s;
                _keptCount++;
                s = next;
                continue;
            }

            try
            {
                s.Release();
            }
            catch (Exception e)
            {
                // The first failure is reported; the rest of the chain is freed all the same.
                failure ??= ExceptionDispatchInfo.Capture(e);
                s.Clear();
            }

            KeepSpare(s);
            s = next;
        }

        if (_reserved is not null)
        {
            try
            {
                _reserved.Release();
            }
            catch (Exception e)
            {
                failure ??= ExceptionDispatchInfo.Capture(e);
                _reserved.Clear();
            }

            KeepSpare(_reserved);
            _reserved = null;
        }

        _first = null;
        _last = null;
        _count = 0;
        _length = 0;
        _trueSize = 0;
        _arraySegments?.Clear();
        _arraySegmentsStale = true;
        return failure;
    }

    private FragmentSegment Reserved()
    {
        Debug.Assert(_reserved is null, "a writer reserves one buffer at a time");
        return _reserved = NewSegment();
    }

    private void KeepSpare(FragmentSegment s)
    {
        if (_spareCount < MaxSpareSegments)
        {
            s.NextSpare = _spare;
            _spare = s;
            _spareCount++;
        }
    }

    private FragmentSegment NewSegment()
    {
        FragmentSegment? s = _spare;
        if (s is null)
        {
            return new FragmentSegment(this);
        }

        _spare = s.NextSpare;
        s.NextSpare = null;
        _spareCount--;
        return s;
    }

    private void Link(FragmentSegment segment, int bytes, int trueBytes)
    {
        if (_last is null)
        {
            _first = segment;
        }
        else
        {
            _last.SyncMemory();
            _last.Link(segment);
        }

        _last = segment;
        _count++;
        _length += bytes;
        _trueSize += trueBytes;
        _arraySegmentsStale = true;
    }

    private void ThrowIfDisposed()
    {
        if (_disposed != 0)
        {
            BufferThrowHelper.Disposed(nameof(FragmentChain));
        }
    }
}

/// <summary>
/// Where a <see cref="FragBufferWriter"/>'s disposed chains wait for their writer, with the fragments they
/// kept: a few slots, each claimed with one compare-and-swap, so a chain disposed on any thread hands its
/// fragments to the writer without touching the writer or its cache. <see cref="Close"/> (the writer's
/// Dispose) frees what waits and makes later returns fail, so that a chain disposed after its writer frees its
/// own fragments.
/// </summary>
/// <remarks>
/// The handshake between a return and <see cref="Close"/>: the return puts the chain in a slot (a full fence)
/// and then reads the closed flag; the close sets the flag (a full fence) and then empties the slots. At least
/// one sees the other's write. A return that sees the flag takes its chain back out of the slot: if that
/// succeeds the return failed and the chain frees its fragments itself, else the close took the chain and
/// frees them. Either way exactly one side frees each fragment.
/// </remarks>
internal sealed class ChainStash
{
    private readonly FragmentChain?[] _items;
    private int _closed;

    public ChainStash(int capacity) => _items = new FragmentChain?[capacity];

    /// <summary>True once the writer is disposed: chains disposed from now on free their fragments.</summary>
    public bool IsClosed => Volatile.Read(ref _closed) != 0;

    public FragmentChain? TryTake()
    {
        FragmentChain?[] items = _items;
        for (int i = 0; i < items.Length; i++)
        {
            FragmentChain? item = Volatile.Read(ref items[i]);
            if (item is not null && Interlocked.CompareExchange(ref items[i], null, item) == item)
            {
                return item;
            }
        }

        return null;
    }

    /// <summary>Puts a disposed chain in a free slot; false when the stash is full or closed (the chain keeps its fragments).</summary>
    public bool TryReturn(FragmentChain chain)
    {
        FragmentChain?[] items = _items;
        for (int i = 0; i < items.Length; i++)
        {
            if (Volatile.Read(ref items[i]) is null && Interlocked.CompareExchange(ref items[i], chain, null) is null)
            {
                // After the swap (a full fence): a close that began before it may have missed the chain.
                return Volatile.Read(ref _closed) == 0 || Interlocked.CompareExchange(ref items[i], null, chain) != chain;
            }
        }

        return false;
    }

    /// <summary>
    /// Frees the kept fragments of the chains waiting here and leaves the chains in their slots for reuse. The
    /// writer's thread. The first failure is returned, not thrown.
    /// </summary>
    public ExceptionDispatchInfo? ReleaseKept()
    {
        ExceptionDispatchInfo? failure = null;
        FragmentChain?[] items = _items;
        for (int i = 0; i < items.Length; i++)
        {
            // Claimed for the time of the release, so that the writer's own TryTake never sees it half done.
            FragmentChain? chain = Volatile.Read(ref items[i]);
            if (chain is null || Interlocked.CompareExchange(ref items[i], null, chain) != chain)
            {
                continue;
            }

            ExceptionDispatchInfo? kept = chain.ReleaseKept();
            failure ??= kept;
            if (!TryReturn(chain))
            {
                // Full or closed meanwhile: the chain holds nothing any more, so the collector may have it.
                GC.SuppressFinalize(chain);
            }
        }

        return failure;
    }

    /// <summary>
    /// The writer is disposed: later returns fail, and the fragments of the chains waiting here are freed. The
    /// first failure is returned, not thrown.
    /// </summary>
    public ExceptionDispatchInfo? Close()
    {
        Interlocked.Exchange(ref _closed, 1);
        ExceptionDispatchInfo? failure = null;
        while (TryTake() is FragmentChain chain)
        {
            ExceptionDispatchInfo? kept = chain.ReleaseKept();
            failure ??= kept;
            GC.SuppressFinalize(chain);
        }

        return failure;
    }
}
