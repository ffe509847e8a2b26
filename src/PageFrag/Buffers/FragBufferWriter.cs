using System.Buffers;
using System.Diagnostics;
using System.Numerics;
using PageFrag.Frag;
using PageFrag.Pages;

namespace PageFrag.Buffers;

/// <summary>
/// An <see cref="IBufferWriter{T}"/> that writes straight into the pages of a <see cref="PageFragCache"/>
/// with the kernel's prepare/commit API: <see cref="GetMemory"/> is a prepare (all the space left in the
/// page, at least the size hint), <see cref="Advance"/> a commit, and bytes that continue the previous
/// buffer extend it without a new page reference (commit_noref) instead of starting a new one. The
/// written bytes are handed over as an owned <see cref="FragmentChain"/> by <see cref="Detach"/>.
/// </summary>
/// <remarks>
/// <para><b>Contract.</b> As <see cref="IBufferWriter{T}"/> demands: <c>GetMemory(n)</c> returns at least
/// <c>n</c> bytes (at least one byte when <c>n</c> is 0) and never an empty buffer; <c>Advance</c> beyond
/// the buffer last returned throws <see cref="InvalidOperationException"/> and a negative count throws
/// <see cref="ArgumentException"/>, with the types and message of <see cref="ArrayBufferWriter{T}"/>; a
/// buffer must not be written after <c>Advance</c> (a new <c>GetMemory</c> is needed).</para>
/// <para><b>Where the memory comes from.</b> Hints up to 4096 bytes, and up to 32768 while the cache holds
/// an order-3 page, are served from the cache's page. A larger hint, or one the cache cannot serve because
/// it fell back to an order-0 page, gets a dedicated page block of the smallest sufficient order from the
/// cache's <see cref="PageAllocator"/>; its unused tail serves the following writes until it runs out, and
/// the whole block counts in <see cref="FragmentChain.TrueSize"/>. A hint above the allocator's largest
/// block (<c>4096 &lt;&lt; MaxOrder</c>) gets a pinned array, which the allocator's memory limit does not
/// cover. When the allocator refuses a page (limit reached, fault injected), <c>GetMemory</c> throws
/// <see cref="InsufficientMemoryException"/> and the writer is unchanged.</para>
/// <para><b>Threading.</b> Single owner: the writer and its cache belong to one thread at a time; nothing
/// else may allocate from the cache between a <c>GetMemory</c> and its <c>Advance</c> (the preparation
/// would go stale and <c>Advance</c> throws). Other use of the cache between writes is fine; it only
/// prevents coalescing. The detached chain may be freed on any thread.</para>
/// <para><b>Allocation.</b> <c>GetMemory</c>/<c>Advance</c> allocate nothing on the GC heap once warm,
/// and neither does <see cref="Detach"/> followed by disposing the chain (chains are recycled).</para>
/// </remarks>
public sealed class FragBufferWriter : IBufferWriter<byte>, IDisposable
{
    // Chains detached from this writer come back here when disposed; four cover a writer whose chains are
    // freed a little later than the next one is written (a send in flight).
    private readonly ObjectStash<FragmentChain> _chains = new(4);
    private readonly PageFragCache _cache;
    private FragmentChain _chain;
    private Pending _pending;
    private PreparedFragment _prepared;
    private Page _block;
    private byte[]? _array;
    private int _available;
    private bool _disposed;

    /// <summary>What the buffer last returned by GetMemory is, and so what Advance commits.</summary>
    private enum Pending : byte
    {
        None,
        Cache,
        Tail,
        NewBlock,
        NewArray,
    }

    /// <summary>Creates a writer over <paramref name="cache"/>, which the caller keeps owning (and draining).</summary>
    /// <exception cref="ArgumentNullException"><paramref name="cache"/> is null.</exception>
    public FragBufferWriter(PageFragCache cache)
    {
        ArgumentNullException.ThrowIfNull(cache);
        _cache = cache;
        _chain = FragmentChain.RentEmpty(_chains);
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
            return _chain.Length;
        }
    }

    /// <summary>Buffers the written bytes occupy; coalesced writes share one.</summary>
    public int SegmentCount
    {
        get
        {
            ThrowIfDisposed();
            return _chain.SegmentCount;
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
            return _chain.Sequence;
        }
    }

    /// <summary>
    /// Returns a buffer of at least <paramref name="sizeHint"/> bytes (at least one when it is 0): all the
    /// space left in the current page, or the tail of the last dedicated block.
    /// </summary>
    /// <exception cref="ArgumentException"><paramref name="sizeHint"/> is negative.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="sizeHint"/> is above <see cref="MaxSizeHint"/>.</exception>
    /// <exception cref="InsufficientMemoryException">The allocator could not supply a page.</exception>
    /// <exception cref="ObjectDisposedException">The writer was disposed.</exception>
    public Memory<byte> GetMemory(int sizeHint = 0)
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

        // A dedicated block handed out by the previous call and not written yet serves another large
        // request; a small one goes to the cache instead, rather than pin a whole block for a few bytes.
        if (need > PageConstants.PageSize)
        {
            if (_pending == Pending.NewBlock && _block.Length >= need)
            {
                return SetAvailable(_block.Memory);
            }

            if (_pending == Pending.NewArray && _array!.Length >= need)
            {
                return SetAvailable(_array);
            }
        }

        DropPending();

        FragmentSegment? last = _chain.Last;
        if (last is not null && last.Room >= need)
        {
            _pending = Pending.Tail;
            return SetAvailable(last.Tail);
        }

        if (need <= PageFragCache.MaxFragmentSize && _cache.TryPrepare(need, out _prepared))
        {
            _pending = Pending.Cache;
            return SetAvailable(_prepared.Memory);
        }

        return GetDedicated(need);
    }

    /// <summary>The span of <see cref="GetMemory"/>: same contract, same exceptions.</summary>
    /// <exception cref="ArgumentException"><paramref name="sizeHint"/> is negative.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="sizeHint"/> is above <see cref="MaxSizeHint"/>.</exception>
    /// <exception cref="InsufficientMemoryException">The allocator could not supply a page.</exception>
    /// <exception cref="ObjectDisposedException">The writer was disposed.</exception>
    public Span<byte> GetSpan(int sizeHint = 0) => GetMemory(sizeHint).Span;

    /// <summary>
    /// Commits <paramref name="count"/> bytes of the buffer last returned. Bytes that continue the last
    /// buffer of the chain extend it (commit_noref); others become a new fragment (commit). The returned
    /// buffer must not be written afterwards.
    /// </summary>
    /// <exception cref="ArgumentException"><paramref name="count"/> is negative.</exception>
    /// <exception cref="InvalidOperationException">
    /// <paramref name="count"/> is larger than the buffer last returned (or no buffer was requested), or
    /// something else allocated from the cache since <see cref="GetMemory"/>.
    /// </exception>
    /// <exception cref="ObjectDisposedException">The writer was disposed.</exception>
    public void Advance(int count)
    {
        ThrowIfDisposed();
        if (count < 0)
        {
            BufferThrowHelper.NegativeAdvance(count);
        }

        if (count > _available)
        {
            BufferThrowHelper.AdvancedTooFar(_available);
        }

        if (count == 0)
        {
            // Nothing used: a pending block or array stays for the next GetMemory, a preparation simply lapses.
            _available = 0;
            if (_pending is Pending.Cache or Pending.Tail)
            {
                _pending = Pending.None;
            }

            return;
        }

        switch (_pending)
        {
            case Pending.Cache:
                CommitPrepared(count);
                break;
            case Pending.Tail:
                _chain.Last!.Grow(count);
                _chain.LastGrew(count, 0);
                break;
            case Pending.NewBlock:
                _chain.AppendBlock(_block, count);
                _block = default;
                break;
            case Pending.NewArray:
                _chain.AppendArray(_array!, count);
                _array = null;
                break;
        }

        _pending = Pending.None;
        _available = 0;
    }

    /// <summary>
    /// Hands the written bytes over as an owned chain (dispose it to free them) and starts empty again.
    /// </summary>
    /// <exception cref="ObjectDisposedException">The writer was disposed.</exception>
    public FragmentChain Detach()
    {
        ThrowIfDisposed();
        DropPending();
        FragmentChain written = _chain;
        _chain = FragmentChain.RentEmpty(_chains);
        return written;
    }

    /// <summary>Frees the bytes written so far and any buffer handed out but not committed.</summary>
    /// <exception cref="ObjectDisposedException">The writer was disposed.</exception>
    public void Reset()
    {
        ThrowIfDisposed();
        DropPending();
        _chain.ReleaseAll()?.Throw();
    }

    /// <summary>
    /// Frees what <see cref="Reset"/> frees and retires the writer. The cache is not drained: it belongs
    /// to the caller. A second call does nothing.
    /// </summary>
    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }

        _disposed = true;
        DropPending();
        FragmentChain chain = _chain;
        chain.Dispose();
    }

    private void CommitPrepared(int count)
    {
        FragmentSegment? last = _chain.Last;

        // Coalesce when the new bytes start exactly where the last fragment ends, on the cache's current
        // page (the cache checks it once: same arena, page and generation, and the fragment ends at the
        // preparation's offset; a fragment that ends a block is address-contiguous with the next block,
        // whose bytes its page reference does not cover).
        if (last is not null && last.Kind == SegmentKind.Fragment &&
            _cache.TryCommitNoRef(in _prepared, count, ref last.Fragment))
        {
            last.FragmentGrew();
            _chain.LastGrew(count, count);
            return;
        }

        PageFragment fragment = _cache.Commit(in _prepared, count);
        _chain.AppendFragment(fragment);
    }

    private Memory<byte> GetDedicated(int need)
    {
        PageAllocator allocator = _cache.Allocator;
        int order = need <= PageConstants.PageSize ? 0 : BitOperations.Log2((uint)(need - 1)) + 1 - PageConstants.PageShift;
        if (order > allocator.MaxOrder)
        {
            // Above the largest block: a pinned array keeps the contract (at least sizeHint, usable by sockets).
            _array = GC.AllocateUninitializedArray<byte>(need, pinned: true);
            _pending = Pending.NewArray;
            return SetAvailable(_array);
        }

        if (!allocator.TryAllocPages(order, AllocFlags.None, out Page block))
        {
            BufferThrowHelper.OutOfPages(need);
        }

        _block = block;
        _pending = Pending.NewBlock;
        return SetAvailable(block.Memory);
    }

    private Memory<byte> SetAvailable(Memory<byte> memory)
    {
        Debug.Assert(!memory.IsEmpty, "IBufferWriter never hands out an empty buffer");
        _available = memory.Length;
        return memory;
    }

    /// <summary>Forgets the buffer handed out last, giving back a dedicated block nobody wrote into.</summary>
    private void DropPending()
    {
        if (_pending == Pending.NewBlock)
        {
            Page block = _block;
            _block = default;
            block.Allocator.FreePages(block);
        }

        _array = null;
        _prepared = default;
        _pending = Pending.None;
        _available = 0;
    }

    private void ThrowIfDisposed()
    {
        if (_disposed)
        {
            BufferThrowHelper.Disposed(nameof(FragBufferWriter));
        }
    }
}
