using System.Diagnostics;
using System.Diagnostics.CodeAnalysis;
using System.Numerics;
using System.Runtime.CompilerServices;
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
/// <see cref="Drain"/>) belongs to one thread at a time, as the kernel's per-CPU and per-task caches do,
/// and takes no lock. <see cref="Free(in PageFragment)"/> and <see cref="Free(nint)"/> are safe from any
/// thread. Callers without an owner context use <see cref="ForCurrentThread"/> (the kernel's
/// <c>current-&gt;task_frag</c>).</para>
/// <para><b>Sizes.</b> Requests are meant to be at most 4096 bytes. Requests from 4097 to 32768 bytes
/// succeed while the cache holds an order-3 page with room; on an order-0 page (memory was too fragmented
/// for order 3) they fail and the page is kept, as in the kernel. Above 32768 bytes a request can never
/// succeed and is rejected with <see cref="ArgumentOutOfRangeException"/>.</para>
/// </remarks>
public sealed partial class PageFragCache
{
    /// <summary>The largest request a cache accepts: 32768 bytes (an order-3 page).</summary>
    public const int MaxFragmentSize = PageConstants.FragCacheMaxSize;

    /// <summary>The largest alignment accepted: a page, since pages are aligned to 4096 bytes.</summary>
    public const int MaxAlignment = PageConstants.PageSize;

    // PAGE_FRAG_CACHE_MAX_SIZE: the reference count added to a fresh page at once.
    private const int RefBias = PageConstants.FragCacheMaxSize;

    // Fragments shorter than this share double-free granules with their neighbours and are not marked.
    private const int MarkGranule = 1 << Arena.MarkShift;

    [ThreadStatic]
    private static ThreadCacheHolder? s_threadCache;

    private readonly PageAllocator _allocator;
    private readonly AllocFlags _flags;
    private readonly bool _detectDoubleFree;

    private Arena? _arena;
    private int _pageIndex;
    private int _pageStart;
    private int _size;
    private int _offset;
    private int _bias;
    private int _generation;
    private bool _pfmemalloc;
    private long _pagesAllocated;
    private long _pagesReused;

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
        _detectDoubleFree = _allocator.DetectDoubleFree;
    }

    /// <summary>
    /// This thread's own cache over <see cref="PageAllocator.Shared"/>, created on first use (the kernel's
    /// <c>current-&gt;task_frag</c>). Its page is drained when the thread is gone and the cache collected.
    /// </summary>
    public static PageFragCache ForCurrentThread => (s_threadCache ??= new ThreadCacheHolder()).Cache;

    /// <summary>The allocator the cache takes pages from.</summary>
    public PageAllocator Allocator => _allocator;

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

    /// <summary>References the cache still owns on its current page (pagecnt_bias).</summary>
    internal int Bias => _bias;

    // ------------------------------------------------------------------ allocation

    /// <summary>Allocates <paramref name="size"/> bytes (page_frag_alloc).</summary>
    /// <returns>False, with an empty fragment, when no page could be had.</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="size"/> is not between 1 and <see cref="MaxFragmentSize"/>.</exception>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool TryAlloc(int size, out PageFragment fragment)
    {
        CheckSize(size, nameof(size));
        if (!TryReserve(size, 0, out int offset))
        {
            fragment = default;
            return false;
        }

        fragment = Take(offset, size);
        return true;
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
        CheckSize(size, nameof(size));
        int mask = AlignMask(alignment);
        if (!TryReserve(size, mask, out int offset))
        {
            fragment = default;
            return false;
        }

        fragment = Take(offset, size);
        return true;
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
        if (!TryReserve(minSize, mask, out int offset))
        {
            prepared = default;
            return false;
        }

        prepared = new PreparedFragment(_arena!, _pageIndex, _generation, offset, _size - offset);
        return true;
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
        if (_arena is null || offset + minSize > _size)
        {
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
        CheckPrepared(prepared, usedSize);
        return Take(prepared.Offset, usedSize);
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
        CheckPrepared(prepared, usedSize);
        if (!CanCoalesce(prepared, previous))
        {
            ThrowHelper.InvalidOperation("The previous fragment does not end where the preparation starts, so the new bytes cannot be coalesced with it.");
        }

        _offset = prepared.Offset + usedSize;
        previous = new PageFragment(_arena!, previous.ArenaOffset, previous.Length + usedSize, previous.TrueSize + usedSize, _generation);
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
        CheckPrepared(prepared, usedSize);
        if (!CanCoalesce(prepared, previous))
        {
            return false;
        }

        _offset = prepared.Offset + usedSize;
        previous = new PageFragment(_arena!, previous.ArenaOffset, previous.Length + usedSize, previous.TrueSize + usedSize, _generation);
        return true;
    }

    private bool CanCoalesce(in PreparedFragment prepared, in PageFragment previous) =>
        // previous must also end at the cache's offset: a fragment ending beyond it was aborted and owns no
        // reference, and an aligned preparation may start exactly where such a fragment used to end.
        // And previous must start on the cache's page: a fragment that ends its own block is address-contiguous
        // with the next block, which may be the cache's page with an equal generation number.
        ReferenceEquals(previous.Arena, _arena) && previous.Generation == _generation &&
        prepared.Offset == _offset && previous.ArenaOffset >= _pageStart &&
        previous.ArenaOffset + previous.Length == _pageStart + prepared.Offset;

    /// <summary>
    /// Undoes the most recent allocation or commit of this cache (page_frag_alloc_abort): the bytes and
    /// the reference go back to the cache, and the handle is dead: freeing it afterwards is a bug that, as
    /// in the kernel, is not detected. As the reviewer of the kernel series asked, the fragment itself is
    /// passed and checked.
    /// </summary>
    /// <exception cref="ArgumentException">The fragment is empty.</exception>
    /// <exception cref="InvalidOperationException">The fragment is not the most recent one of this cache.</exception>
    /// <exception cref="PageFragDoubleFreeException">The fragment was already freed.</exception>
    public void Abort(in PageFragment fragment)
    {
        if (fragment.Arena is null)
        {
            ThrowHelper.Argument(nameof(fragment), "The fragment is empty: it came from a failed or default allocation.");
        }

        if (!ReferenceEquals(fragment.Arena, _arena) || fragment.Generation != _generation ||
            fragment.ArenaOffset + fragment.Length != _pageStart + _offset || fragment.TrueSize > _offset)
        {
            ThrowHelper.InvalidOperation("Only the most recent allocation of this cache can be aborted, and this fragment is not it.");
        }

        if (_detectDoubleFree && fragment.Length >= MarkGranule && IsMarkedFreed(fragment.Arena, fragment.ArenaOffset))
        {
            ThrowHelper.DoubleFree("The fragment was already freed and cannot be aborted.");
        }

        _bias++;
        _offset -= fragment.TrueSize;
    }

    /// <summary>
    /// Gives the cache's remaining references on its page back and forgets the page
    /// (page_frag_cache_drain). Fragments still out keep the page alive; the last one freed returns it.
    /// </summary>
    public void Drain()
    {
        if (_arena is null)
        {
            return;
        }

        if (Interlocked.Add(ref _arena.Pages[_pageIndex].RefCount, -_bias) == 0)
        {
            _allocator.ReleaseBlock(_arena, _pageIndex);
        }

        Forget();
    }

    // ------------------------------------------------------------------ free

    /// <summary>Frees a fragment (page_frag_free). Safe from any thread.</summary>
    /// <exception cref="ArgumentException">The fragment is empty.</exception>
    /// <exception cref="PageFragDoubleFreeException">The fragment was already freed, or its page was returned or reused since.</exception>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Free(in PageFragment fragment)
    {
        Arena? arena = fragment.Arena;
        if (arena is null)
        {
            ThrowHelper.Argument(nameof(fragment), "The fragment is empty: it came from a failed or default allocation.");
        }

        int head = arena.Pages[fragment.ArenaOffset >> PageConstants.PageShift].HeadIndex;
        ref PageDescriptor d = ref arena.Pages[head];
        if (d.Generation != fragment.Generation || (d.Flags & PageFlags.Head) == 0)
        {
            ThrowHelper.DoubleFree("The fragment's page was already returned to the allocator or reused: the fragment was freed before.");
        }

        MarkFreedOrThrow(arena, in fragment);

        PageAllocator.PutBlockRef(arena, head);
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
    /// <see cref="Free(in PageFragment)"/>. The double-free check is the same as the static one's.
    /// </remarks>
    /// <exception cref="ArgumentException">The fragment is empty.</exception>
    /// <exception cref="PageFragDoubleFreeException">The fragment was already freed, or its page was returned or reused since.</exception>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void FreeLocal(in PageFragment fragment)
    {
        // An empty fragment never matches: its arena is null only when ours is too, and then _size is 0.
        if (ReferenceEquals(fragment.Arena, _arena) && fragment.Generation == _generation &&
            (uint)(fragment.ArenaOffset - _pageStart) < (uint)_size)
        {
            MarkFreedOrThrow(_arena!, in fragment);
            _bias++;
            return;
        }

        Free(in fragment);
    }

    /// <summary>
    /// Frees the fragment that starts at <paramref name="address"/>, whichever cache or allocator it came
    /// from (page_frag_free(va)). Safe from any thread; finding the page is constant time and lock-free.
    /// </summary>
    /// <exception cref="ArgumentException">No arena of this process owns the address.</exception>
    /// <exception cref="PageFragDoubleFreeException">The fragment at that address was already freed.</exception>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Free(nint address)
    {
        Arena? arena = ArenaRegistry.Find(address);
        if (arena is null)
        {
            ThrowNotOwned(address);
        }

        int offset = (int)(address - arena.BaseAddress);
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

        if (!d.TinyFragments && arena.Owner.DetectDoubleFree && !TryMarkFreed(arena, offset))
        {
            ThrowDoubleFreeAt(address);
        }

        PageAllocator.PutBlockRef(arena, head);
    }

    /// <inheritdoc cref="Free(nint)"/>
    public static unsafe void Free(void* address) => Free((nint)address);

    // ------------------------------------------------------------------ internals

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private bool TryReserve(int size, int alignMask, out int offset)
    {
        offset = (_offset + alignMask) & ~alignMask;
        if (offset + size <= _size)
        {
            return true;
        }

        return TryRefillSlow(size, out offset);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private PageFragment Take(int offset, int size)
    {
        if (size < MarkGranule)
        {
            _arena!.Pages[_pageIndex].TinyFragments = true;
        }

        int trueSize = offset + size - _offset;
        _bias--;
        _offset = offset + size;
        return new PageFragment(_arena!, _pageStart + offset, size, trueSize, _generation);
    }

    /// <summary>The page has no room for <paramref name="size"/>: give it back or reuse it, then refill.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private bool TryRefillSlow(int size, out int offset)
    {
        offset = 0;
        if (_arena is not null)
        {
            if (size > PageConstants.PageSize && _size == PageConstants.PageSize)
            {
                // Over-page request on an order-0 page: fail and keep the page. Memory was too fragmented
                // for order 3 when we refilled; dropping the page would only add to the pressure.
                return false;
            }

            ref PageDescriptor d = ref _arena.Pages[_pageIndex];
            if (Interlocked.Add(ref d.RefCount, -_bias) == 0)
            {
                if (!_pfmemalloc)
                {
                    // Every fragment is already free: reuse the page in place. Nobody else can see it now.
                    Volatile.Write(ref d.RefCount, RefBias + 1);
                    d.Generation++;
                    d.TinyFragments = false;
                    StartPage(d.Generation);
                    _pagesReused++;
                    Debug.Assert(size <= _size);
                    return true;
                }

                // A page from the emergency reserve goes back at once rather than being kept.
                _allocator.ReleaseBlock(_arena, _pageIndex);
            }

            Forget();
        }

        if (!_allocator.TryAllocBlock(PageConstants.FragCacheMaxOrder, AllocFlags.Opportunistic, out Arena? arena, out int index) &&
            !_allocator.TryAllocBlock(0, _flags, out arena, out index))
        {
            return false;
        }

        ref PageDescriptor nd = ref arena.Pages[index];

        // The page came with a count of 1; add the bias with an atomic add rather than a plain store, so that
        // a concurrent speculative reference taker (get_page_unless_zero) can never be overwritten.
        Interlocked.Add(ref nd.RefCount, RefBias);
        _arena = arena;
        _pageIndex = index;
        _pageStart = index << PageConstants.PageShift;
        _size = PageConstants.PageSize << nd.Order;
        _pfmemalloc = (nd.Flags & PageFlags.PfMemalloc) != 0;
        StartPage(nd.Generation);
        _pagesAllocated++;
        return size <= _size;
    }

    private void StartPage(int generation)
    {
        _bias = RefBias + 1;
        _offset = 0;
        _generation = generation;
        if (_detectDoubleFree)
        {
            _arena!.ClearFreeMarks(_pageStart, _size);
        }
    }

    private void Forget()
    {
        _arena = null;
        _size = 0;
        _offset = 0;
        _bias = 0;
    }

    /// <summary>Sets the "freed" mark of the fragment at <paramref name="arenaOffset"/>; false on a double free.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static bool TryMarkFreed(Arena arena, int arenaOffset) => Arena.TrySetFreeMark(arena.FreeMarks, arenaOffset);

    /// <summary>
    /// The double-free check of a free by handle (static or owner's): marks the fragment freed, or throws
    /// when it already was. Fragments shorter than a mark granule share granules and are not marked.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void MarkFreedOrThrow(Arena arena, in PageFragment fragment)
    {
        if (fragment.Length >= MarkGranule && arena.Owner.DetectDoubleFree && !TryMarkFreed(arena, fragment.ArenaOffset))
        {
            ThrowHelper.DoubleFree("The fragment was already freed.");
        }
    }

    private static bool IsMarkedFreed(Arena arena, int arenaOffset)
    {
        int granule = arenaOffset >> Arena.MarkShift;
        return (Volatile.Read(ref arena.FreeMarks[granule >> 6]) & (1L << (granule & 63))) != 0;
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
    private static void ThrowDoubleFreeAt(nint address) =>
        ThrowHelper.DoubleFree($"The fragment at 0x{address:x} was already freed.");

    private void CheckPrepared(in PreparedFragment prepared, int usedSize)
    {
        if (prepared.Arena is null)
        {
            ThrowHelper.Argument(nameof(prepared), "The preparation is empty: it came from a failed or default prepare.");
        }

        if (!ReferenceEquals(prepared.Arena, _arena) || prepared.PageIndex != _pageIndex || prepared.Generation != _generation)
        {
            ThrowHelper.InvalidOperation("The preparation is stale: the cache has moved to another page since it was made.");
        }

        if (prepared.Offset < _offset)
        {
            ThrowHelper.InvalidOperation("The preparation is stale: the cache has already handed out bytes past its offset.");
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
        public readonly PageFragCache Cache = new(PageAllocator.Shared);

        ~ThreadCacheHolder() => Cache.Drain();
    }
}
