using System.Diagnostics;
using System.Diagnostics.CodeAnalysis;
using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using PageFrag.Pages;

namespace PageFrag.Frag;

/// <summary>
/// The page fragment allocator (the kernel's <c>page_frag_cache</c>): carves fragments of any size up to
/// a page out of large pinned pages, with one reference per fragment on the page and no atomic operation
/// per allocation.
/// </summary>
/// <remarks>
/// <para><b>How it works.</b> The cache holds one page block at a time, preferably order 3 (32 KiB), else
/// order 0 (4 KiB), and hands out its bytes front to back:</para>
/// <code>
///   page: [ frag A | frag B |pad| frag C |          free           ]
///          0                              ^ offset                ^ size
///   page refcount = 32768 + 1 (raised once, on refill)
///   bias          = 32768 + 1 - fragments handed out (cache-local, no atomics)
/// </code>
/// <para>On refill the page's reference count is raised by 32768 at once (no page can hold more
/// fragments than bytes) and the cache remembers that it owns all of them in <c>bias</c>. Handing out a
/// fragment only decrements the cache-local bias; freeing a fragment, on any thread, decrements the page's
/// real count atomically. When the page is full the cache gives back its remaining bias: if the count
/// reaches zero every fragment is already free and the page is reused in place (unless it came from the
/// emergency reserve); otherwise the last fragment freed returns the page.</para>
/// <para><b>Threading.</b> The allocation side (every <c>Try…</c>, <c>Commit…</c>, <see cref="Abort"/>,
/// <see cref="Drain"/>, <see cref="FreeLocal"/>, <see cref="Dispose"/>) belongs to one thread at a time, as
/// the kernel's per-CPU and per-task caches do, and takes no lock (the owner rule). In the detection mode
/// (<see cref="PageAllocatorOptions.DetectMisuse"/>) every such call checks that no other thread is inside
/// the cache at the same time, and that the cache of <see cref="ForCurrentThread"/> is used on its own
/// thread. <see cref="Free(in PageFragment)"/> and <see cref="Free(nint)"/> are safe from any thread.
/// Callers without an owner context use <see cref="ForCurrentThread"/> (the kernel's
/// <c>current-&gt;task_frag</c>); async code uses a cache of its own per connection or pipe.</para>
/// <para><b>One release wins.</b> Each fragment start has a state byte in its arena; every release (free
/// by handle or address, <see cref="FreeLocal"/>, <see cref="Abort"/>) clears it with one compare-and-swap,
/// so of two racing releases exactly one wins and the other throws <see cref="PageFragDoubleFreeException"/>.
/// A fragment consumes at least 8 bytes of its page, so that two fragment starts never share a state byte.</para>
/// <para><b>Lifetime.</b> <see cref="Dispose"/> drains the cache; a cache collected without
/// <see cref="Dispose"/> or <see cref="Drain"/> gives its page back from its finalizer and reports the leak
/// through the <c>PageFrag</c> event source.</para>
/// <para><b>Sizes.</b> Requests are meant to be at most 4096 bytes. Requests from 4097 to 32768 bytes
/// succeed while the cache holds an order-3 page with room; on an order-0 page (memory was too fragmented
/// for order 3) they fail and the page is kept, as in the kernel. Above 32768 bytes a request can never
/// succeed and is rejected with <see cref="ArgumentOutOfRangeException"/>.</para>
/// </remarks>
public sealed partial class PageFragCache : IDisposable
{
    /// <summary>The largest request a cache accepts: 32768 bytes (an order-3 page).</summary>
    public const int MaxFragmentSize = PageConstants.FragCacheMaxSize;

    /// <summary>The largest alignment accepted: a page, since pages are aligned to 4096 bytes.</summary>
    public const int MaxAlignment = PageConstants.PageSize;

    // PAGE_FRAG_CACHE_MAX_SIZE: the reference count added to a fresh page at once.
    private const int RefBias = PageConstants.FragCacheMaxSize;

    // The least a fragment consumes of its page: one state granule, so that two starts never share one.
    private const int MarkGranule = Arena.MarkGranule;
    private const int StartsKept = 64;

    private const string OwnerRule =
        "a PageFragCache's allocation side belongs to one thread at a time: do not share a cache between threads " +
        "that may use it at once, and do not keep PageFragCache.ForCurrentThread across an await (use one cache per " +
        "connection or pipe instead)";

    [ThreadStatic]
    private static ThreadCacheHolder? s_threadCache;

    private readonly PageAllocator _allocator;
    private readonly AllocFlags _flags;
    private readonly bool _detectMisuse;

    // ForCurrentThread's cache: the managed id of its thread (checked in the detection mode); 0 otherwise.
    private readonly int _ownerThread;

    private Arena? _arena;
    private byte[]? _states;

    // Where the allocator parks this cache's order-3 pages whose last fragment another thread freed, for the next
    // refill (closed by Dispose and the finalizer; null only in a cache whose constructor threw).
    private readonly PageRecycler? _recycler;
    private byte _tag;

    // Set once, before the first refill, by the memory pool's thread caches: their pages refuse a free by address
    // (see RefuseFreeByAddress).
    private bool _refuseFreeByAddress;

    // The start granules (within the page) of the first StartsKept fragments carved from the current page, and
    // how many fragments were carved, up to StartsKept + 1 (which means "more"): a cache that leaves a page with few
    // fragments checks just their states for freed marks instead of scanning the page's.
    private readonly ushort[] _starts = new ushort[StartsKept];
    private int _carved;
    private int _pageIndex;
    private int _pageStart;
    private int _size;
    private int _offset;
    private int _bias;
    private int _generation;
    private bool _pfmemalloc;
    private long _pagesAllocated;
    private long _pagesReused;
    private int _inUse;
    private bool _disposed;
    private string? _pageStack;

    /// <summary>Creates an empty cache; the first allocation takes a page.</summary>
    /// <param name="allocator">Where pages come from; <see cref="PageAllocator.Shared"/> when null.</param>
    /// <param name="flags">
    /// The flags of the order-0 fallback (the caller's gfp mask). The order-3 attempt is always
    /// <see cref="AllocFlags.Opportunistic"/>. Pass <see cref="AllocFlags.MayUseReserve"/> for a cache that
    /// may dip into the reserve; pages it gets from there are never reused in place.
    /// </param>
    public PageFragCache(PageAllocator? allocator = null, AllocFlags flags = AllocFlags.None)
    {
        if ((flags & ~(AllocFlags.Opportunistic | AllocFlags.MayUseReserve)) != 0)
        {
            ThrowHelper.ArgumentOutOfRange(nameof(flags), flags, "Unknown allocation flags.");
        }

        _allocator = allocator ?? PageAllocator.Shared;
        _flags = flags;
        _detectMisuse = _allocator.DetectMisuse;
        _recycler = _allocator.CreateRecycler();
    }

    private PageFragCache(int ownerThread)
        : this(PageAllocator.Shared)
    {
        _ownerThread = ownerThread;
    }

    /// <summary>
    /// The safety net: a cache collected while it still held a page gives the page's remaining references
    /// back, as <see cref="Drain"/> would, and reports the leak (<c>PageFragEventSource.LeakReclaimed</c>,
    /// with the refill's stack in the detection mode).
    /// </summary>
    ~PageFragCache()
    {
        int size = _size;
        if (DrainCore())
        {
            PageFragEventSource.Log.LeakReclaimed(nameof(PageFragCache), 1, size, _pageStack ?? "");
        }

        CloseRecycler();
    }

    /// <summary>
    /// This thread's own cache over <see cref="PageAllocator.Shared"/>, created on first use (the kernel's
    /// <c>current-&gt;task_frag</c>). Its page is drained when the thread is gone and the cache collected.
    /// </summary>
    /// <remarks>
    /// Use it only in synchronous code, and do not keep it in a field or across an <c>await</c>: the
    /// continuation may run on another thread while this thread uses the same cache, which breaks the owner
    /// rule (two threads in one cache hand out the same bytes twice). Async code (a connection, a pipe, a
    /// <c>FragBufferWriter</c> that lives across awaits) creates one <see cref="PageFragCache"/> of its own,
    /// used by one logical flow at a time, and disposes it at the end. In the detection mode a use of this
    /// cache on another thread throws <see cref="InvalidOperationException"/> naming the owner rule.
    /// <see cref="Dispose"/> of this cache only drains it: the thread keeps using it.
    /// </remarks>
    public static PageFragCache ForCurrentThread => (s_threadCache ??= new ThreadCacheHolder()).Cache;

    /// <summary>The allocator the cache takes pages from.</summary>
    public PageAllocator Allocator => _allocator;

    /// <summary>
    /// Makes the pages this cache carves from now on refuse <see cref="Free(nint)"/> (their descriptor's
    /// head carries <see cref="PageFlags.RefusesFreeByAddress"/>, so a free by address throws
    /// <see cref="ArgumentException"/>): the memory pool's thread caches, whose fragments go back only through their
    /// owner object, so that the owner's count alone decides who gives a buffer back. Call before the first
    /// allocation; owner thread.
    /// </summary>
    internal void RefuseFreeByAddress() => _refuseFreeByAddress = true;

    /// <summary>Pages taken from the allocator by refills.</summary>
    public long PagesAllocated => _pagesAllocated;

    /// <summary>Times a full page was found entirely free and reused in place.</summary>
    public long PagesReused => _pagesReused;

    /// <summary>Bytes of the current page already handed out (0 without a page).</summary>
    public int Offset => _offset;

    /// <summary>Size of the current page: 32768, 4096, or 0 when the cache holds none.</summary>
    public int CurrentPageSize => _size;

    /// <summary>The current page, or an empty handle.</summary>
    public Page CurrentPage => _arena is null ? default : new Page(_arena, _pageIndex);

    /// <summary>Refills served by a page that another thread's last free parked for this cache (a test hook).</summary>
    internal long PagesRecycled => _recycler?.Taken ?? 0;

    /// <summary>References the cache still owns on its current page (pagecnt_bias).</summary>
    internal int Bias => _bias;

    // ------------------------------------------------------------------ allocation

    /// <summary>Allocates <paramref name="size"/> bytes (page_frag_alloc).</summary>
    /// <returns>False, with an empty fragment, when no page could be had.</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="size"/> is not between 1 and <see cref="MaxFragmentSize"/>.</exception>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool TryAlloc(int size, out PageFragment fragment)
    {
        if (TryAllocFast(size, 0, out fragment))
        {
            return true;
        }

        fragment = AllocSlow(size, 1);
        return fragment.Arena is not null;
    }

    /// <summary>
    /// Allocates <paramref name="size"/> bytes at an address that is a multiple of
    /// <paramref name="alignment"/> (page_frag_alloc_align). Skipped padding counts in the fragment's
    /// <see cref="PageFragment.TrueSize"/>.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">Bad size, or an alignment that is not a power of two from 1 to 4096.</exception>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool TryAlloc(int size, int alignment, out PageFragment fragment)
    {
        int mask = alignment - 1;
        if ((alignment & mask) == 0 && (uint)mask < MaxAlignment && TryAllocFast(size, mask, out fragment))
        {
            return true;
        }

        fragment = AllocSlow(size, alignment);
        return fragment.Arena is not null;
    }

    /// <summary>
    /// The common case, inlined into the caller: a size in range, no detection mode, room on the current page and
    /// a clean state byte. Anything else, including every exception, is left to <see cref="AllocSlow"/>, which
    /// does the whole allocation again. One cold call and few values alive across it keep the caller's loop in
    /// registers: every store on this path waits in the core's store buffer behind any store whose cache line is
    /// still on its way from another core, so a spilled local costs more than its instruction.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private bool TryAllocFast(int size, int alignMask, out PageFragment fragment)
    {
        // size - 1 < MaxFragmentSize and alignMask < MaxAlignment keep every sum below far from overflow.
        int consumed = size < MarkGranule ? MarkGranule : size;
        int offset = (_offset + alignMask) & ~alignMask;
        if ((uint)(size - 1) < MaxFragmentSize && !_detectMisuse && offset + consumed <= _size)
        {
            int start = _pageStart + offset;
            byte[] states = _states!;
            ref byte state = ref states[Arena.StateIndex(states, start)];
            if (state == 0)
            {
                fragment = Take(ref state, start, offset, size, consumed);
                return true;
            }
        }

        fragment = default;
        return false;
    }

    // The whole allocation, with every check: a size out of range, the detection mode, a refill, a state byte that
    // says two threads carve the page. Returns the handle (empty on failure) rather than writing an out parameter:
    // passing the caller's handle by reference to a call that is not inlined would keep it in memory.
    [MethodImpl(MethodImplOptions.NoInlining)]
    private PageFragment AllocSlow(int size, int alignment)
    {
        CheckSize(size, nameof(size));
        int alignMask = AlignMask(alignment);
        if (_detectMisuse)
        {
            return AllocChecked(size, alignMask);
        }

        TryAllocCore(size, alignMask, out PageFragment fragment);
        return fragment;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private bool TryAllocCore(int size, int alignMask, out PageFragment fragment)
    {
        int consumed = size < MarkGranule ? MarkGranule : size;
        if (!TryReserve(consumed, alignMask, out int offset))
        {
            fragment = default;
            return false;
        }

        fragment = Take(offset, size, consumed);
        return true;
    }

    // Returns the handle (empty on failure) rather than writing an out parameter: passing the caller's handle by
    // reference to a call that is not inlined would keep it in memory on the fast path too.
    [MethodImpl(MethodImplOptions.NoInlining)]
    private PageFragment AllocChecked(int size, int alignMask)
    {
        Enter();
        try
        {
            TryAllocCore(size, alignMask, out PageFragment fragment);
            return fragment;
        }
        finally
        {
            Exit();
        }
    }

    /// <summary>
    /// Prepares and commits exactly <paramref name="size"/> bytes (page_frag_refill). The same as
    /// <see cref="TryAlloc(int, out PageFragment)"/>; kept for callers ported from the kernel.
    /// </summary>
    public bool TryRefill(int size, out PageFragment fragment) => TryAlloc(size, out fragment);

    /// <summary>Aligned <see cref="TryRefill(int, out PageFragment)"/> (page_frag_refill_align).</summary>
    public bool TryRefill(int size, int alignment, out PageFragment fragment) => TryAlloc(size, alignment, out fragment);

    // ------------------------------------------------------------------ prepare / probe / commit / abort

    /// <summary>
    /// Makes sure at least <paramref name="minSize"/> bytes are available, refilling if needed, and
    /// describes all the space left in the page (page_frag_refill_prepare /
    /// page_frag_alloc_refill_prepare). Takes no reference and does not move the cache.
    /// </summary>
    /// <returns>False, with an empty preparation, when no page could be had.</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="minSize"/> is not between 1 and <see cref="MaxFragmentSize"/>.</exception>
    public bool TryPrepare(int minSize, out PreparedFragment prepared) => TryPrepare(minSize, 1, out prepared);

    /// <summary>Aligned <see cref="TryPrepare(int, out PreparedFragment)"/> (page_frag_refill_prepare_align).</summary>
    public bool TryPrepare(int minSize, int alignment, out PreparedFragment prepared)
    {
        CheckSize(minSize, nameof(minSize));
        int mask = AlignMask(alignment);
        Enter();
        try
        {
            // At least one granule, so that a commit of fewer than 8 bytes still fits its minimum consumption.
            if (!TryReserve(Math.Max(minSize, MarkGranule), mask, out int offset))
            {
                prepared = default;
                return false;
            }

            prepared = new PreparedFragment(_arena!, _pageIndex, _generation, offset, _size - offset);
            return true;
        }
        finally
        {
            Exit();
        }
    }

    /// <summary>
    /// Like <see cref="TryPrepare(int, out PreparedFragment)"/> but never refills: succeeds only when the
    /// current page already has <paramref name="minSize"/> bytes left (page_frag_alloc_refill_probe). Use it
    /// to ask whether the next bytes can be coalesced with the previous fragment.
    /// </summary>
    /// <remarks>
    /// The preparation reports the whole rest of the page, not only up to the next 4 KiB boundary, so a
    /// caller can fill an order-3 page completely (the choice the patch author kept in the v22 review).
    /// </remarks>
    public bool TryProbe(int minSize, out PreparedFragment prepared) => TryProbe(minSize, 1, out prepared);

    /// <summary>Aligned <see cref="TryProbe(int, out PreparedFragment)"/>.</summary>
    public bool TryProbe(int minSize, int alignment, out PreparedFragment prepared)
    {
        CheckSize(minSize, nameof(minSize));
        int mask = AlignMask(alignment);
        int offset = (_offset + mask) & ~mask;
        if (_arena is null || offset + Math.Max(minSize, MarkGranule) > _size)
        {
            if (_disposed)
            {
                ThrowDisposed();
            }

            prepared = default;
            return false;
        }

        prepared = new PreparedFragment(_arena, _pageIndex, _generation, offset, _size - offset);
        return true;
    }

    /// <summary>
    /// Takes <paramref name="usedSize"/> bytes of a preparation as a new fragment with its own page
    /// reference (page_frag_commit). The fragment's <see cref="PageFragment.TrueSize"/> is the true size
    /// consumed, alignment padding included.
    /// </summary>
    /// <exception cref="ArgumentException">The preparation is empty.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="usedSize"/> is not between 1 and the prepared size.</exception>
    /// <exception cref="InvalidOperationException">The preparation is stale: the cache moved to another page or past its offset.</exception>
    public PageFragment Commit(in PreparedFragment prepared, int usedSize)
    {
        Enter();
        try
        {
            CheckPrepared(prepared, usedSize);
            return Take(prepared.Offset, usedSize, usedSize < MarkGranule ? MarkGranule : usedSize);
        }
        finally
        {
            Exit();
        }
    }

    /// <summary>
    /// Takes <paramref name="usedSize"/> bytes of a preparation without a new reference
    /// (page_frag_commit_noref): the bytes extend a fragment on this page whose reference the caller
    /// already holds. Returns the true size consumed (padding included).
    /// </summary>
    /// <exception cref="InvalidOperationException">
    /// Stale preparation, or the cache has handed out no fragment on this page (the bytes would belong to
    /// no one).
    /// </exception>
    public int CommitNoRef(in PreparedFragment prepared, int usedSize)
    {
        Enter();
        try
        {
            return CommitNoRefCore(prepared, usedSize);
        }
        finally
        {
            Exit();
        }
    }

    private int CommitNoRefCore(in PreparedFragment prepared, int usedSize)
    {
        CheckPrepared(prepared, usedSize);
        if (_bias > RefBias)
        {
            ThrowHelper.InvalidOperation("CommitNoRef needs a fragment on the current page to extend, and the cache has handed out none since it took this page.");
        }

        int trueSize = prepared.Offset + usedSize - _offset;
        _offset = prepared.Offset + usedSize;
        return trueSize;
    }

    /// <summary>
    /// Coalesces: commits <paramref name="usedSize"/> bytes without a new reference and grows
    /// <paramref name="previous"/> over them. The preparation must start exactly where
    /// <paramref name="previous"/> ends (prepare without alignment, or probe). Returns the bytes added.
    /// </summary>
    /// <exception cref="InvalidOperationException">Stale preparation, or <paramref name="previous"/> does not end where it starts.</exception>
    public int CommitNoRef(in PreparedFragment prepared, int usedSize, ref PageFragment previous)
    {
        if (!TryCommitNoRef(prepared, usedSize, ref previous))
        {
            ThrowHelper.InvalidOperation("The previous fragment does not end where the preparation starts, so the new bytes cannot be coalesced with it.");
        }

        return usedSize;
    }

    /// <summary>
    /// Coalesces when it can (TCP's <c>skb_can_coalesce</c> followed by commit_noref): when the preparation
    /// starts exactly where <paramref name="previous"/> ends on the cache's page, commits
    /// <paramref name="usedSize"/> bytes without a new reference, grows <paramref name="previous"/> over them
    /// and returns true; otherwise changes nothing and returns false, and the caller commits a fragment of
    /// its own with <see cref="Commit"/>.
    /// </summary>
    /// <exception cref="ArgumentException">The preparation is empty.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="usedSize"/> is not between 1 and the prepared size.</exception>
    /// <exception cref="InvalidOperationException">The preparation is stale.</exception>
    public bool TryCommitNoRef(in PreparedFragment prepared, int usedSize, ref PageFragment previous)
    {
        Enter();
        try
        {
            CheckPrepared(prepared, usedSize);
            if (!CanCoalesce(prepared, previous))
            {
                return false;
            }

            // Bounded: usedSize <= prepared.Size and previous lies on this page, so both sums stay below a page.
            _offset = prepared.Offset + usedSize;
            previous = new PageFragment(_arena!, previous.ArenaOffset, previous.Length + usedSize, previous.TrueSize + usedSize, _generation);
            return true;
        }
        finally
        {
            Exit();
        }
    }

    private bool CanCoalesce(in PreparedFragment prepared, in PageFragment previous) =>
        // previous must also end at the cache's offset: a fragment ending beyond it was aborted and owns no
        // reference, and an aligned preparation may start exactly where such a fragment used to end.
        // And previous must start on the cache's page: a fragment that ends its own block is address-contiguous
        // with the next block, which may be the cache's page with an equal generation number.
        // A fragment shorter than a granule consumed a whole granule, so it never ends at the offset.
        ReferenceEquals(previous.Arena, _arena) && previous.Generation == _generation &&
        prepared.Offset == _offset && previous.ArenaOffset >= _pageStart &&
        (long)previous.ArenaOffset + previous.Length == _pageStart + prepared.Offset;

    /// <summary>
    /// Undoes the most recent allocation or commit of this cache (page_frag_alloc_abort): the reference and the
    /// bytes after the fragment's first 8-byte granule go back to the cache, and the handle is dead: freeing it, or
    /// any copy of it, afterwards throws <see cref="PageFragDoubleFreeException"/> (the kernel does not detect it).
    /// As the reviewer of the kernel series asked, the fragment itself is passed and checked. The abort is a release
    /// like a free: it clears the fragment's state with one compare-and-swap, so an abort racing a free of a copy of
    /// the handle loses or wins as a whole.
    /// </summary>
    /// <remarks>
    /// Unlike the kernel, the abort keeps the fragment's start granule (8 bytes) and its alignment padding: the next
    /// fragment starts at least one granule later. Were it carved at the same start, it would get the same state
    /// tag (the start's low bits and the page's generation), and a kept copy of the aborted handle (fragments are
    /// structs, copies are normal) would free it: a use after free freeing someone else's memory. The granule comes
    /// back when the page is reused or freed.
    /// </remarks>
    /// <exception cref="ArgumentException">The fragment is empty.</exception>
    /// <exception cref="InvalidOperationException">The fragment is not the most recent one of this cache.</exception>
    /// <exception cref="PageFragDoubleFreeException">The fragment was already freed.</exception>
    public void Abort(in PageFragment fragment)
    {
        if (fragment.Arena is null)
        {
            ThrowHelper.Argument(nameof(fragment), "The fragment is empty: it came from a failed or default allocation.");
        }

        Enter();
        try
        {
            if (!IsMostRecent(fragment))
            {
                if (_disposed)
                {
                    ThrowDisposed();
                }

                ThrowHelper.InvalidOperation("Only the most recent allocation of this cache can be aborted, and this fragment is not it.");
            }

            if (!Arena.TryReleaseFragmentSettled(_states!, fragment.ArenaOffset, _generation))
            {
                ThrowHelper.DoubleFree("The fragment was already freed and cannot be aborted.");
            }

            // Rewind to just past the start granule, never to the start itself (see the remarks).
            _bias++;
            _offset = fragment.ArenaOffset - _pageStart + MarkGranule;
        }
        finally
        {
            Exit();
        }
    }

    /// <summary>
    /// True when <paramref name="fragment"/> is this cache's most recent allocation: on its current page, in the page's
    /// generation, and nothing carved after it (the offset stands right past its bytes, at least one granule). Owner
    /// thread, inside <see cref="Enter"/>.
    /// </summary>
    private bool IsMostRecent(in PageFragment fragment) =>
        ReferenceEquals(fragment.Arena, _arena) && fragment.Generation == _generation &&
        (long)fragment.ArenaOffset + Math.Max(fragment.Length, MarkGranule) == _pageStart + _offset && fragment.TrueSize <= _offset;

    /// <summary>
    /// Shortens the most recent fragment of this cache to its first <paramref name="length"/> bytes and gives the
    /// rest back to the cache (the writer's give-back of an unwritten tail). The fragment stays live with its start,
    /// its state and its reference, so a copy of the handle still names this same fragment; only the returned bytes,
    /// which start after the fragment's first granule, are carved again.
    /// </summary>
    /// <exception cref="InvalidOperationException">The fragment is not the most recent one of this cache.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="length"/> is not between 1 and the fragment's length.</exception>
    internal PageFragment TrimMostRecent(in PageFragment fragment, int length)
    {
        Enter();
        try
        {
            if (!IsMostRecent(fragment))
            {
                ThrowHelper.InvalidOperation("Only the most recent allocation of this cache can be shortened, and this fragment is not it.");
            }

            if ((uint)(length - 1) >= (uint)fragment.Length)
            {
                ThrowHelper.ArgumentOutOfRange(nameof(length), length, "The new length must be between 1 and the fragment's length.");
            }

            int consumed = Math.Max(fragment.Length, MarkGranule);
            int kept = Math.Max(length, MarkGranule);
            _offset -= consumed - kept;
            return new PageFragment(_arena!, fragment.ArenaOffset, length, fragment.TrueSize - (consumed - kept), _generation);
        }
        finally
        {
            Exit();
        }
    }

    /// <summary>
    /// Gives the cache's remaining references on its page back and forgets the page
    /// (page_frag_cache_drain), and gives back the pages that other threads' frees parked for its next refill.
    /// Fragments still out keep their page alive; the last one freed returns it.
    /// </summary>
    public void Drain()
    {
        if (_arena is null && _recycler!.Count == 0)
        {
            return;
        }

        Enter();
        try
        {
            DrainCore();
            _allocator.DrainRecycler(_recycler!);
        }
        finally
        {
            Exit();
        }
    }

    /// <summary>
    /// Drains the cache and retires it (the cache of <see cref="ForCurrentThread"/> is only drained). Fragments
    /// still out stay valid and can be freed as usual; any later allocation-side call throws
    /// <see cref="ObjectDisposedException"/>. A second call does nothing.
    /// </summary>
    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }

        Drain();
        if (_ownerThread == 0)
        {
            _disposed = true;
            CloseRecycler();
            GC.SuppressFinalize(this);
        }
    }

    /// <summary>
    /// The cache will never refill again (disposed, collected, or its thread gone): its recycle slots are closed, so
    /// that a later last free gives its page to the allocator, and emptied.
    /// </summary>
    private void CloseRecycler()
    {
        if (_recycler is PageRecycler recycler)
        {
            _allocator.CloseRecycler(recycler);
        }
    }

    /// <summary>
    /// Gives the page's remaining references back. The page is claimed first by one atomic exchange of
    /// <c>_arena</c>: of two racing drains (a cache shared by mistake, or a finalizer racing a
    /// <c>Dispose</c>), exactly one gives the bias back; the other finds no page and does nothing. Without the
    /// claim both would subtract the bias, and the page could go back to the allocator while a fragment, or
    /// the page's next owner, still holds it. Returns true when this call gave a page back.
    /// </summary>
    private bool DrainCore()
    {
        if (_arena is null)
        {
            return false;
        }

        Arena? arena = Interlocked.Exchange(ref _arena, null);
        if (arena is null)
        {
            return false;
        }

        // Only the claimant reads the page's fields: nobody else leaves or refills the page now. It counts the
        // freed marks other threads left (LeavePage) and gives them back with the bias.
        int index = _pageIndex;
        ref PageDescriptor d = ref arena.Pages[index];
        int references = LeavePage(ref d);
        Forget();
        if (Interlocked.Add(ref d.RefCount, -references) == 0)
        {
            _allocator.ReleaseBlock(arena, index);
        }

        return true;
    }

    // ------------------------------------------------------------------ free

    /// <summary>Frees a fragment (page_frag_free). Safe from any thread.</summary>
    /// <exception cref="ArgumentException">The fragment is empty.</exception>
    /// <exception cref="PageFragDoubleFreeException">The fragment was already freed, or its page was returned or reused since.</exception>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Free(in PageFragment fragment)
    {
        // The common case inlined (a live handle of a page its cache still carves); everything else, including every
        // exception, in FreeSlow, which checks everything again before it changes anything. The handle's fields are
        // passed by value: a handle passed by reference to a call that is not inlined would stay in memory.
        Arena? arena = fragment.Arena;
        int offset = fragment.ArenaOffset;
        int generation = fragment.Generation;
        if (arena is not null)
        {
            int head = arena.Pages[offset >> PageConstants.PageShift].HeadIndex;
            ref PageDescriptor d = ref arena.Pages[head];
            // A failed release takes FreeSlow, which decides again (a release in progress, then the exception).
            if (d.Generation == generation && (d.Flags & PageFlags.Head) != 0 && Volatile.Read(ref d.CacheHeld) != 0 &&
                ReleaseOnHeldPage(arena, head, ref d, offset, generation))
            {
                return;
            }
        }

        FreeSlow(arena, offset, generation);
    }

    /// <summary><see cref="Free(in PageFragment)"/> off its common case: every check, then the release.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void FreeSlow(Arena? arena, int offset, int generation)
    {
        if (arena is null)
        {
            ThrowHelper.Argument("fragment", "The fragment is empty: it came from a failed or default allocation.");
        }

        while (true)
        {
            int head = arena.Pages[offset >> PageConstants.PageShift].HeadIndex;
            ref PageDescriptor d = ref arena.Pages[head];
            if (d.Generation != generation || (d.Flags & PageFlags.Head) == 0)
            {
                ThrowStaleFree();
            }

            if (Release(arena, head, ref d, offset, generation))
            {
                return;
            }

            // Lost: unless the byte was in another release's decision and is our live tag again once that ended
            // (a stale release undone), in which case everything is checked again.
            if (Arena.ReadSettled(arena.FragStates, Arena.StateIndex(arena.FragStates, offset)) != Arena.LiveTag(generation, offset))
            {
                ThrowDoubleFree();
            }
        }
    }

    /// <summary>
    /// The release of a fragment by any thread: one compare-and-swap of its state byte, tagged with the
    /// generation, so that a stale handle cannot clear the byte of a newer fragment even if the page was reused
    /// just now. False when the fragment is not live (already freed, or not a fragment start).
    /// </summary>
    /// <remarks>
    /// While the fragment's cache still carves the page, the swap leaves a freed mark and that is all: the cache
    /// counts the marks when it leaves the page, so the free costs one atomic operation instead of two. On a page
    /// its cache has left, the swap clears the state and the page reference is dropped at once. Internal so that a
    /// test can call it as a free whose checks came before the page moved on would.
    /// </remarks>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static bool Release(Arena arena, int head, ref PageDescriptor d, int arenaOffset, int generation)
    {
        if (Volatile.Read(ref d.CacheHeld) != 0)
        {
            return ReleaseOnHeldPage(arena, head, ref d, arenaOffset, generation);
        }

        byte[] states = arena.FragStates;
        int granule = Arena.StateIndex(states, arenaOffset);
        if (!TryBeginRelease(ref d, states, granule, Arena.LiveTag(generation, arenaOffset), generation))
        {
            return false;
        }

        Arena.EndRelease(states, granule, 0);
        PageAllocator.PutBlockRef(arena, head);
        return true;
    }

    /// <summary>
    /// <see cref="Release"/> once it found the page held by its cache: leaves the freed mark, then settles the
    /// reference itself if the cache left the page meanwhile. Internal so that a test can call it after the
    /// cache left, as a free whose look at <see cref="PageDescriptor.CacheHeld"/> came just before would.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static bool ReleaseOnHeldPage(Arena arena, int head, ref PageDescriptor d, int arenaOffset, int generation)
    {
        byte[] states = arena.FragStates;
        int granule = Arena.StateIndex(states, arenaOffset);

        // Before the swap (a full fence), so that the cache sees it whenever it could miss the mark otherwise.
        if (d.MarksLeft == 0)
        {
            d.MarksLeft = 1;
        }

        byte live = Arena.LiveTag(generation, arenaOffset);
        if (!Arena.TryBeginRelease(states, granule, live))
        {
            return false;
        }

        // After the swap (a full fence), one load each: the head's flags, whether the cache holds the page, the
        // generation. Head and the checked generation make the re-check of TryBeginRelease(ref PageDescriptor, ...);
        // the flag read before a generation still ours means the cache held the page in our generation when this
        // free's swap was already in, so its leaving scan, which starts after it clears the flag, meets the byte
        // as Releasing or as the mark and counts it (a later generation's flag is set only after its generation).
        byte flags = Volatile.Read(ref Unsafe.As<PageFlags, byte>(ref d.Flags));
        int held = Volatile.Read(ref d.CacheHeld);
        if ((flags & (byte)PageFlags.Head) == 0 || Volatile.Read(ref d.Generation) != generation)
        {
            Arena.EndRelease(states, granule, live);
            return false;
        }

        // A plain store: nobody else writes a byte that holds Releasing, and the scan waits for it to settle.
        byte mark = Arena.FreedMark(generation);
        Arena.EndRelease(states, granule, mark);
        if (held == 0)
        {
            // The cache left the page before this free's swap, or its scan may have passed the byte before it.
            SettleMark(arena, head, granule, generation, mark);
        }

        return true;
    }

    /// <summary>
    /// The decision of every release by another thread than the page's carver: swaps the fragment's live tag
    /// <paramref name="live"/> (4 bits of <paramref name="generation"/>) for <see cref="Arena.Releasing"/>, then checks
    /// that <paramref name="d"/>, the head the caller found for the start and checked in
    /// <paramref name="generation"/>, still is. True when it is: the caller then stores the outcome. False when the
    /// byte was not live (or in another release's decision: the caller's cold path looks again), or, with the
    /// tag put back, when the page moved on between the caller's check and the swap, so that the byte was a later
    /// fragment's with the same 4 bits (the page reused 16 times meanwhile). No call on the way: a caller's loop
    /// keeps its values in registers.
    /// </summary>
    /// <remarks>
    /// Why the check after the swap is exact: the flags are read first, then the generation. A head flag at the
    /// first read, with the checked generation at the second, means the block of that head was allocated all the
    /// while since the caller's check and never reused in place: every new allocation of a head and every reuse
    /// in place raise its generation, generations never go down, and a release clears the flag. So at the swap the
    /// start belonged to that block in that generation: the byte was the caller's fragment. Conversely a live
    /// fragment keeps a reference on its block, so while its byte holds Releasing (which only this release
    /// changes) its block stays, and a later fragment's block is not the checked one in the checked generation.
    /// </remarks>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static bool TryBeginRelease(ref PageDescriptor d, byte[] states, int granule, byte live, int generation)
    {
        if (!Arena.TryBeginRelease(states, granule, live))
        {
            return false;
        }

        if ((Volatile.Read(ref Unsafe.As<PageFlags, byte>(ref d.Flags)) & (byte)PageFlags.Head) != 0 && Volatile.Read(ref d.Generation) == generation)
        {
            return true;
        }

        Arena.EndRelease(states, granule, live);
        return false;
    }

    /// <summary>
    /// A free left its mark, and then found that the cache left the page meanwhile. Waits for the cache's count
    /// of marks to end (a few hundred nanoseconds at most, unless the cache's thread was descheduled in it);
    /// if the mark is still there, the count missed it and the free drops its page reference itself.
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void SettleMark(Arena arena, int head, int granule, int generation, byte mark)
    {
        ref PageDescriptor d = ref arena.Pages[head];
        SpinWait spin = default;

        // An interrupt here would leave the mark for no one to count (the page leaked): kept for later instead.
        bool interrupted = false;
        while (Volatile.Read(ref d.MarksCounted) != generation)
        {
            if (Volatile.Read(ref d.Generation) != generation)
            {
                // The page was reused or returned: its count reached zero, so the cache counted our mark.
                Arena.KeepInterrupt(interrupted);
                return;
            }

            Arena.SpinOnceKeepingInterrupt(ref spin, ref interrupted);
        }

        Arena.KeepInterrupt(interrupted);
        if (Arena.TrySwap(arena.FragStates, granule, mark, 0))
        {
            PageAllocator.PutBlockRef(arena, head);
        }
    }

    /// <summary>
    /// Frees a fragment on the thread that owns this cache. A fragment of the cache's current page gives its
    /// reference back to the cache's bias, with no atomic operation: the page's count is settled when the
    /// cache leaves the page, as for the references it never handed out. Any other fragment is freed as by
    /// <see cref="Free(in PageFragment)"/>.
    /// </summary>
    /// <remarks>
    /// Not in the kernel, whose <c>page_frag_free</c> always does an atomic decrement. Like every instance
    /// member it must only be called by the cache's owner; fragments freed by other threads use the static
    /// <see cref="Free(in PageFragment)"/>. The release is decided by the same compare-and-swap of the
    /// fragment's state as the static free's (a copy of the handle may be freed elsewhere at the same time);
    /// only the page's count is settled without an atomic. After <see cref="Dispose"/> it does not throw
    /// <see cref="ObjectDisposedException"/>: the cache holds no page then, and it frees as the static free does.
    /// </remarks>
    /// <exception cref="ArgumentException">The fragment is empty.</exception>
    /// <exception cref="PageFragDoubleFreeException">The fragment was already freed, or its page was returned or reused since.</exception>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void FreeLocal(in PageFragment fragment)
    {
        if (_detectMisuse)
        {
            FreeLocalChecked(fragment);
            return;
        }

        FreeLocalCore(fragment);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void FreeLocalCore(in PageFragment fragment)
    {
        if (IsOnCurrentPage(fragment.Arena, fragment.ArenaOffset, fragment.Generation))
        {
            if (!TryReleaseOnCurrentPage(fragment.ArenaOffset))
            {
                ThrowDoubleFree();
            }

            return;
        }

        Free(in fragment);
    }

    /// <summary>
    /// <see cref="FreeLocal"/>'s common case for a caller that decides what a lost release means (the memory pool's
    /// owner): a fragment of the current page, freed by the same compare-and-swap, its reference given back to the
    /// bias. Returns 1 when freed; 0 when this is not that case (another page, the detection mode), with nothing
    /// changed, so the caller takes <see cref="FreeLocal"/> or <see cref="Free(in PageFragment)"/>; -1 when the
    /// fragment is not live (a racing free won), with nothing changed. Owner thread only. No exception and no
    /// struct on the caller's stack: the values come and go by value.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal int TryFreeLocalOnCurrentPage(Arena arena, int arenaOffset, int generation)
    {
        if (_detectMisuse || !IsOnCurrentPage(arena, arenaOffset, generation))
        {
            return 0;
        }

        return TryReleaseOnCurrentPage(arenaOffset) ? 1 : -1;
    }

    // A fragment of the page this cache carves now. An empty fragment never matches: its arena is null only when ours
    // is too, and then _size is 0.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private bool IsOnCurrentPage(Arena? arena, int arenaOffset, int generation) =>
        ReferenceEquals(arena, _arena) && generation == _generation && (uint)(arenaOffset - _pageStart) < (uint)_size;

    // The owner's release of a fragment of its current page (FreeLocal, TryFreeLocalOnCurrentPage): the state's swap,
    // then its reference back to the bias, no atomic on the page's count. False, with nothing changed, when not live.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private bool TryReleaseOnCurrentPage(int arenaOffset)
    {
        // A failed swap is decided again after any release in progress on the byte (a stale one, to be undone).
        if (!Arena.TryReleaseFragment(_states!, arenaOffset, _generation) &&
            !Arena.TryReleaseFragmentSettled(_states!, arenaOffset, _generation))
        {
            return false;
        }

        _bias++;
        return true;
    }

    // By value, for the same reason as AllocChecked.
    [MethodImpl(MethodImplOptions.NoInlining)]
    private void FreeLocalChecked(PageFragment fragment)
    {
        Enter();
        try
        {
            FreeLocalCore(fragment);
        }
        finally
        {
            Exit();
        }
    }

    /// <summary>
    /// Frees the fragment that starts at <paramref name="address"/>, whichever cache or allocator it came
    /// from (page_frag_free(va)). Safe from any thread; finding the page is constant time and lock-free.
    /// </summary>
    /// <remarks>
    /// Only the exact start of a live fragment of a fragment cache's page is accepted: an address inside a
    /// fragment, in the part of a page not carved yet, on a page from <see cref="PageAllocator.TryAllocPages"/>
    /// or on a page pool's page is refused and nothing changes. One limit remains, shared with the kernel's
    /// <c>page_frag_free(va)</c>: after the page was reused in place, an old address that is again the start of
    /// a live fragment cannot be told from the new fragment by its address alone, and frees the new one. Free by
    /// handle (<see cref="Free(in PageFragment)"/>) where that matters: a handle knows its page's generation.
    /// </remarks>
    /// <exception cref="ArgumentException">
    /// No arena of this process owns the address, it is on a page that is not a fragment cache's, or it is
    /// inside a live fragment rather than at its start.
    /// </exception>
    /// <exception cref="PageFragDoubleFreeException">
    /// No live fragment starts at that address: it was already freed, or it was never a fragment start (for
    /// example the uncarved tail of a page), or its page was already returned.
    /// </exception>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Free(nint address)
    {
        // The common case inlined: a fragment start on a page its cache still carves. Anything else (the page left
        // or never a cache's, an address no arena owns) takes FreeSlow, which checks everything again before it
        // changes anything; this path changes nothing before its one compare-and-swap. Few cold calls keep the
        // caller's loop in registers (see TryAllocFast).
        Arena? arena = ArenaRegistry.Find(address);
        if (arena is not null)
        {
            int offset = (int)(address - arena.BaseAddress);
            int head = arena.Pages[offset >> PageConstants.PageShift].HeadIndex;
            ref PageDescriptor d = ref arena.Pages[head];
            // A failed release takes FreeSlow, which decides again (a release in progress, then the exception).
            if ((d.Flags & (PageFlags.Head | PageFlags.RefusesFreeByAddress)) == PageFlags.Head && d.Pool is null && d.FragmentCachePage &&
                Volatile.Read(ref d.CacheHeld) != 0 &&
                ReleaseOnHeldPage(arena, head, ref d, offset, d.Generation))
            {
                return;
            }
        }

        FreeSlow(address);
    }

    /// <summary><see cref="Free(nint)"/> off its common case: every check, then the release.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void FreeSlow(nint address)
    {
        Arena? arena = ArenaRegistry.Find(address);
        if (arena is null)
        {
            ThrowNotOwned(address);
        }

        int offset = (int)(address - arena.BaseAddress);
        while (true)
        {
            int head = arena.Pages[offset >> PageConstants.PageShift].HeadIndex;
            ref PageDescriptor d = ref arena.Pages[head];
            if ((d.Flags & PageFlags.Head) == 0)
            {
                ThrowPageNotAllocated(address);
            }

            if (d.Pool is not null)
            {
                ThrowPoolPage(address);
            }

            if (!d.FragmentCachePage)
            {
                ThrowNotFragmentPage(address);
            }

            if ((d.Flags & PageFlags.RefusesFreeByAddress) != 0)
            {
                // A memory pool's page (every hand-out resets the flags): its buffers go back only through their owner.
                ThrowMemoryPoolPage(address);
            }

            // The page's current generation: a live fragment on it carries that tag. If the page moves on between
            // this read and the swap, the release finds it and is undone.
            if (Release(arena, head, ref d, offset, d.Generation))
            {
                return;
            }

            // Lost, unless the byte is the live start of the page's generation now, once any release in progress on
            // it ended (a stale release undone, or the page moved on under this one): then everything is checked
            // again, from the page as it is now.
            if (Arena.ReadSettled(arena.FragStates, Arena.StateIndex(arena.FragStates, offset)) != Arena.LiveTag(Volatile.Read(ref d.Generation), offset))
            {
                ThrowNotLiveStart(address, arena, offset);
            }
        }
    }

    /// <inheritdoc cref="Free(nint)"/>
    public static unsafe void Free(void* address) => Free((nint)address);

    // ------------------------------------------------------------------ internals

    // No sum here can wrap: size <= 32768 and alignMask < 4096 were checked by every caller, and
    // _offset <= _size <= 32768.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private bool TryReserve(int size, int alignMask, out int offset)
    {
        offset = (_offset + alignMask) & ~alignMask;
        if (offset + size <= _size)
        {
            return true;
        }

        // A fresh or reused page is carved from its start.
        offset = 0;
        return TryRefillSlow(size);
    }

    /// <summary>
    /// Hands out the bytes at <paramref name="offset"/>: writes the fragment's live state (a plain byte store:
    /// only the owner writes live states, and a byte store never touches a neighbour's byte) and takes a
    /// reference from the bias. <paramref name="consumed"/> is <paramref name="size"/>, or 8 for shorter fragments.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private PageFragment Take(int offset, int size, int consumed)
    {
        int start = _pageStart + offset;
        byte[] states = _states!;
        ref byte state = ref states[Arena.StateIndex(states, start)];
        if (state != 0)
        {
            // Every fragment of this page after the cache's offset is in the future; a live one there means two
            // threads carved the page at once.
            ThrowOwnerRuleOverlap();
        }

        return Take(ref state, start, offset, size, consumed);
    }

    /// <summary><see cref="Take(int, int, int)"/> once its state byte was found clean.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private PageFragment Take(ref byte state, int start, int offset, int size, int consumed)
    {
        state = (byte)(_tag | ((start & 7) << 4));

        // The first StartsKept starts are kept for LeavePage; past them the count stops at StartsKept + 1 ("more"),
        // so that the rest of the page's fragments store nothing here.
        int carved = _carved;
        if (carved <= StartsKept)
        {
            if (carved < StartsKept)
            {
                _starts[carved] = (ushort)(offset >> Arena.MarkShift);
            }

            _carved = carved + 1;
        }

        int trueSize = offset + consumed - _offset;
        _bias--;
        _offset = offset + consumed;
        return new PageFragment(_arena!, start, size, trueSize, _generation);
    }

    /// <summary>The page has no room for <paramref name="size"/>: give it back or reuse it, then refill.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private bool TryRefillSlow(int size)
    {
        if (_disposed)
        {
            ThrowDisposed();
        }

        if (_arena is not null)
        {
            if (size > PageConstants.PageSize && _size == PageConstants.PageSize)
            {
                // Over-page request on an order-0 page: fail and keep the page. Memory was too fragmented
                // for order 3 when we refilled; dropping the page would only add to the pressure.
                return false;
            }

            ref PageDescriptor d = ref _arena.Pages[_pageIndex];
            if (Interlocked.Add(ref d.RefCount, -LeavePage(ref d)) == 0)
            {
                if (!_pfmemalloc)
                {
                    // Every fragment is already free: reuse the page in place. Nobody else can see it now.
                    Volatile.Write(ref d.RefCount, RefBias + 1);
                    d.Generation++;
                    StartPage(d.Generation);
                    HoldPage(ref d);
                    _pagesReused++;
                    Debug.Assert(size <= _size);
                    return true;
                }

                // A page from the emergency reserve goes back at once rather than being kept.
                _allocator.ReleaseBlock(_arena, _pageIndex);
            }

            Forget();
        }

        // First a page of ours that another thread's last free parked for us (no lock, no descriptor but the head
        // written; see PageRecycler). The second try is the kernel's order-0 fallback, unless the request is larger
        // than a 4 KiB page: an order-0 page could never hold it, so the cache asks for order 3 again, this time
        // allowed to grow the arenas and to drain the per-CPU lists (the opportunistic try may do neither), rather
        // than failing while memory is there.
        PageRecycler recycler = _recycler!;
        int fallbackOrder = size > PageConstants.PageSize ? PageConstants.FragCacheMaxOrder : 0;
        if (!_allocator.TryTakeRecycled(recycler, out Arena? arena, out int index) &&
            !_allocator.TryAllocBlock(PageConstants.FragCacheMaxOrder, AllocFlags.Opportunistic, out arena, out index) &&
            !_allocator.TryAllocBlock(fallbackOrder, _flags, out arena, out index))
        {
            return false;
        }

        ref PageDescriptor nd = ref arena.Pages[index];

        // The page came with a count of 1; add the bias with an atomic add rather than a plain store, so that
        // a concurrent speculative reference taker (get_page_unless_zero) can never be overwritten.
        Interlocked.Add(ref nd.RefCount, RefBias);
        nd.FragmentCachePage = true;
        if (_refuseFreeByAddress)
        {
            // Before any fragment of the page is handed out, so a free by address never finds one it accepts.
            nd.Flags |= PageFlags.RefusesFreeByAddress;
        }

        if (nd.Order == PageRecycler.Order)
        {
            // Written only when it changes: while the block cycles between this cache and another thread's frees,
            // the releasing thread reads the entry's line and nobody writes it (Arena.Recyclers).
            ref PageRecycler? entry = ref arena.Recyclers[index >> PageRecycler.Order];
            if (!ReferenceEquals(entry, recycler))
            {
                entry = recycler;
            }
        }
        _states = arena.FragStates;
        _arena = arena;
        _pageIndex = index;
        _pageStart = index << PageConstants.PageShift;
        _size = PageConstants.PageSize << nd.Order;
        _pfmemalloc = (nd.Flags & PageFlags.PfMemalloc) != 0;
        StartPage(nd.Generation);
        HoldPage(ref nd);
        _pagesAllocated++;
        if (_detectMisuse)
        {
            _pageStack = Environment.StackTrace;
        }

        return size <= _size;
    }

    private void StartPage(int generation)
    {
        _bias = RefBias + 1;
        _offset = 0;
        _carved = 0;
        _generation = generation;
        _tag = Arena.LiveTag(generation, 0);

        // Every release clears its fragment's state before it drops its page reference, so a page whose count
        // reached zero (a fresh one, or one reused in place) has no live state left: nothing to clear.
        Debug.Assert(Arena.NoLiveFragments(_states!, _pageStart, _size), "a page starts carving with no live fragment state");
    }

    /// <summary>
    /// Marks the page as carved by this cache in the current generation (after <see cref="StartPage"/>): from
    /// now on a free from another thread leaves a freed mark for this cache to count instead of dropping a
    /// reference itself.
    /// </summary>
    private void HoldPage(ref PageDescriptor d)
    {
        d.MarksCounted = _generation - 1;
        d.MarksLeft = 0;
        Volatile.Write(ref d.CacheHeld, 1);
    }

    /// <summary>
    /// The cache stops carving its page. It publishes that with a full fence, then counts and clears the freed
    /// marks other threads left on it, and says the count is over. Returns the references to give back: the
    /// bias and one per mark.
    /// </summary>
    /// <remarks>
    /// Why no mark is lost: a free swaps its mark in (a full fence) and then reads <see cref="PageDescriptor.CacheHeld"/>;
    /// this cache clears that flag (a full fence) and then reads the marks. Of two such sequences at least one
    /// sees the other's write: either the scan sees the mark and counts it, or the free sees the page left and,
    /// once <see cref="PageDescriptor.MarksCounted"/> says the scan is over, gives its reference back itself if
    /// its mark is still there. The scan is the only writer of a byte that holds a mark until then.
    /// </remarks>
    private int LeavePage(ref PageDescriptor d)
    {
        Interlocked.Exchange(ref d.CacheHeld, 0);

        // A full fence between clearing the flag and reading the marks (on x86 the locked exchange is one).
        MemoryOrder.FullFenceUnlessX86();

        int marks = 0;
        if (_offset != 0 && Volatile.Read(ref d.MarksLeft) != 0)
        {
            byte mark = Arena.FreedMark(_generation);
            int first = _pageStart >> Arena.MarkShift;
            // Few fragments: look at their starts only (an aborted start may repeat; it holds no mark).
            marks = _carved <= StartsKept
                ? Arena.ClaimFreedMarksAt(_states!, first, _starts.AsSpan(0, _carved), mark)
                : Arena.ClaimFreedMarks(_states!, first, (_offset + MarkGranule - 1) >> Arena.MarkShift, mark);
        }

        Volatile.Write(ref d.MarksCounted, _generation);
        return _bias + marks;
    }

    private void Forget()
    {
        _arena = null;
        _size = 0;
        _offset = 0;
        _bias = 0;
    }

    [DoesNotReturn]
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void ThrowBadSize(int size, string paramName) =>
        ThrowHelper.ArgumentOutOfRange(paramName, size, $"The size must be between 1 and {MaxFragmentSize} bytes.");

    [DoesNotReturn]
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void ThrowBadAlignment(int alignment) =>
        ThrowHelper.ArgumentOutOfRange(nameof(alignment), alignment, $"The alignment must be a power of two from 1 to {MaxAlignment}.");

    [DoesNotReturn]
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void ThrowPoolPage(nint address) =>
        ThrowHelper.Argument(nameof(address), $"The address 0x{address:x} belongs to a page pool buffer, not to a fragment cache: return it to its pool.");

    [DoesNotReturn]
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void ThrowNotOwned(nint address) =>
        ThrowHelper.Argument(nameof(address), $"No PageFrag arena owns the address 0x{address:x}.");

    [DoesNotReturn]
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void ThrowPageNotAllocated(nint address) =>
        ThrowHelper.DoubleFree($"The page of address 0x{address:x} is not allocated: the fragment was already freed.");

    [DoesNotReturn]
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void ThrowNotFragmentPage(nint address) =>
        ThrowHelper.Argument(nameof(address), $"The address 0x{address:x} is on a page that no fragment cache carves (for example a page from TryAllocPages): it is not a fragment.");

    [DoesNotReturn]
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void ThrowMemoryPoolPage(nint address) =>
        ThrowHelper.Argument(nameof(address), $"The address 0x{address:x} is on a PageFragMemoryPool's page, which refuses a free by address: give the buffer back with its owner's Dispose.");

    [DoesNotReturn]
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void ThrowNotLiveStart(nint address, Arena arena, int offset)
    {
        byte state = Volatile.Read(ref arena.FragStates[Arena.StateIndex(arena.FragStates, offset)]);
        if ((state & 0x80) != 0 && ((state >> 4) & 7) != (offset & 7))
        {
            ThrowHelper.Argument(nameof(address), $"The address 0x{address:x} is inside a fragment, not at its start: free a fragment by the address of its first byte.");
        }

        ThrowHelper.DoubleFree($"No live fragment starts at 0x{address:x}: it was already freed, or it was never the start of a fragment (an address inside a fragment or in the uncarved part of its page).");
    }

    [DoesNotReturn]
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void ThrowStaleFree() =>
        ThrowHelper.DoubleFree("The fragment's page was already returned to the allocator or reused: the fragment was freed before. " +
            "If it was freed only once, the likely cause is a broken owner rule: " + OwnerRule + ".");

    [DoesNotReturn]
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void ThrowDoubleFree() =>
        ThrowHelper.DoubleFree("The fragment was already freed. If it was freed only once, the likely cause is a broken owner rule " +
            "(two threads in one cache handed out the same bytes twice): " + OwnerRule + ".");

    [DoesNotReturn]
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void ThrowOwnerRuleOverlap() =>
        ThrowHelper.InvalidOperation("The cache was about to hand out bytes that another fragment already holds: " + OwnerRule + ".");

    [DoesNotReturn]
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void ThrowDisposed() => ThrowHelper.ObjectDisposed(nameof(PageFragCache));

    /// <summary>Detection mode: enters the allocation side, or throws when the owner rule is broken.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void Enter()
    {
        if (_detectMisuse)
        {
            EnterChecked();
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void Exit()
    {
        if (_detectMisuse)
        {
            Volatile.Write(ref _inUse, 0);
        }
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void EnterChecked()
    {
        int thread = Environment.CurrentManagedThreadId;
        if (_ownerThread != 0 && thread != _ownerThread)
        {
            ThrowHelper.InvalidOperation($"The cache of PageFragCache.ForCurrentThread for thread {_ownerThread} is used on thread {thread} " +
                "(was it kept across an await?): " + OwnerRule + ".");
        }

        if (Interlocked.Exchange(ref _inUse, 1) != 0)
        {
            ThrowHelper.InvalidOperation("Two threads used the cache at the same time: " + OwnerRule + ".");
        }
    }

    private void CheckPrepared(in PreparedFragment prepared, int usedSize)
    {
        if (prepared.Arena is null)
        {
            ThrowHelper.Argument(nameof(prepared), "The preparation is empty: it came from a failed or default prepare.");
        }

        if (!ReferenceEquals(prepared.Arena, _arena) || prepared.PageIndex != _pageIndex || prepared.Generation != _generation)
        {
            if (_disposed)
            {
                ThrowDisposed();
            }

            ThrowHelper.InvalidOperation("The preparation is stale: the cache has moved to another page since it was made. " +
                "If this code made no other call on the cache in between, the likely cause is a broken owner rule: " + OwnerRule + ".");
        }

        if (prepared.Offset < _offset)
        {
            ThrowHelper.InvalidOperation("The preparation is stale: the cache has already handed out bytes past its offset. " +
                "If this code made no other call on the cache in between, the likely cause is a broken owner rule: " + OwnerRule + ".");
        }

        Debug.Assert(prepared.Offset + prepared.Size == _size, "a preparation always reaches the end of its page");
        if ((uint)(usedSize - 1) >= (uint)prepared.Size)
        {
            ThrowHelper.ArgumentOutOfRange(nameof(usedSize), usedSize, $"usedSize must be between 1 and the prepared size ({prepared.Size}).");
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void CheckSize(int size, string paramName)
    {
        if ((uint)(size - 1) >= MaxFragmentSize)
        {
            ThrowBadSize(size, paramName);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int AlignMask(int alignment)
    {
        if (alignment <= 0 || alignment > MaxAlignment || !BitOperations.IsPow2(alignment))
        {
            ThrowBadAlignment(alignment);
        }

        return alignment - 1;
    }

    /// <summary>Owns a thread's cache; when the thread is gone and this is collected, the page is drained.</summary>
    private sealed class ThreadCacheHolder
    {
        public readonly PageFragCache Cache;

        public ThreadCacheHolder()
        {
            // The holder, not the cache, gives the page back when the thread is gone: that is the expected end
            // of a thread's cache, not a leak to report.
            Cache = new PageFragCache(Environment.CurrentManagedThreadId);
            GC.SuppressFinalize(Cache);
        }

        ~ThreadCacheHolder()
        {
            Cache.DrainCore();
            Cache.CloseRecycler();
        }
    }
}
