using System.Diagnostics;
using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using PageFrag.Pages;

namespace PageFrag.Pool;

/// <summary>
/// The state and logic of a <see cref="PagePool"/> (what the kernel's <c>struct page_pool</c> holds). Pages'
/// descriptors (<c>d.Pool</c>) and the release retry worker point at this object, never at the public
/// <see cref="PagePool"/>, so a pool the user drops becomes collectable while its pages are still out.
/// </summary>
internal sealed partial class PagePoolCore
{
    /// <summary>Entries of the owner's array cache (PP_ALLOC_CACHE_SIZE).</summary>
    public const int AllocCacheSize = 128;

    /// <summary>Pages moved per refill from the ring, and pages per bulk allocation (PP_ALLOC_CACHE_REFILL).</summary>
    public const int AllocCacheRefill = 64;

    /// <summary>Fragment sizes are rounded up to this (the DMA cache alignment: one cache line).</summary>
    public const int FragmentAlignment = 64;

    private const int StateAlive = 0;
    private const int StateDestroying = 1;
    private const int StateFreed = 2;

    private static int s_nextId;

    // ---- owner side: touched only by the owner thread (or by Dispose once the owner has stopped) ----
    private readonly NetMem[] _cache = new NetMem[AllocCacheSize];
    private int _cacheCount;

    // The owner is compared by reference: Thread.CurrentThread is an inlined thread-static read, while
    // Environment.CurrentManagedThreadId costs a call (several ns) on every alloc and put.
    private Thread? _owner;
    private int _preferredNode;
    private long _holdCount;
    private long _allocFast;
    private long _allocSlow;
    private long _allocSlowHighOrder;
    private long _allocEmpty;
    private long _allocRefill;
    private long _allocWaive;
    private long _recycleCached;
    private long _recycleCacheFull;
    private readonly Arena?[] _bulkArenas = new Arena?[AllocCacheRefill];
    private readonly int[] _bulkIndexes = new int[AllocCacheRefill];
    private readonly NetMem[] _bulkNetMems = new NetMem[AllocCacheRefill];

    // ---- any thread ----
    private readonly RecycleRing _ring;
    private readonly RecycleStripe[] _stripes;
    private long _releaseCount;
    private int _state;

    // ---- configuration ----
    private readonly PageAllocator _allocator;
    private readonly IMemoryProvider? _provider;
    private readonly IDmaMapper _mapper;
    private readonly AllocFlags _allocFlags;
    private readonly int _order;
    private readonly int _maxSize;
    private readonly int _maxLen;
    private readonly int _offset;
    private readonly bool _dmaMap;
    private readonly bool _dmaSync;

    /// <summary>Creates a pool owned by the calling thread. No page is taken until the first allocation.</summary>
    /// <param name="options">Parameters, or null for the defaults (see <see cref="PagePoolOptions"/>).</param>
    /// <exception cref="ArgumentOutOfRangeException">An option is out of its documented range.</exception>
    /// <exception cref="ArgumentException">Inconsistent DMA flags.</exception>
    /// <param name="shell">The public pool this state belongs to.</param>
    /// <remarks>Whatever the memory provider's <see cref="IMemoryProvider.Init"/> throws propagates.</remarks>
    internal PagePoolCore(PagePoolOptions? options, PagePool shell)
    {
        options ??= new PagePoolOptions();
        _allocator = options.Allocator ?? PageAllocator.Shared;
        options.Validate(_allocator);
        Options = options;
        Id = Interlocked.Increment(ref s_nextId);
        _order = options.Order;
        _maxSize = PageConstants.PageSize << _order;
        _maxLen = options.MaxLen;
        _offset = options.Offset;
        _dmaMap = (options.Flags & PagePoolFlags.DmaMap) != 0;
        _dmaSync = (options.Flags & PagePoolFlags.DmaSyncForDevice) != 0;
        _allocFlags = options.AllocFlags;
        _mapper = options.DmaMapper ?? new HostDmaMapper();
        _provider = options.MemoryProvider;
        _preferredNode = options.Node == -1 ? 0 : options.Node;
        _ring = new RecycleRing(options.PoolSize);
        _stripes = new RecycleStripe[Math.Max(1, Environment.ProcessorCount)];
        _owner = Thread.CurrentThread;
        _shellRef = new WeakReference<PagePool>(shell);

        // A provider's hooks take the public pool, so a provider pool's state keeps it: such a pool is not
        // reclaimed by the GC (its provider usually holds it too) and must be disposed.
        _shellForProvider = _provider is null ? null : shell;
        _creationStack = _allocator.DetectMisuse ? new System.Diagnostics.StackTrace(2, fNeedFileInfo: true).ToString() : null;
    }

    /// <summary>Binds the memory provider (its Init hook), once the public pool holds this state.</summary>
    internal void InitProvider()
    {
        if (_provider is null)
        {
            return;
        }

        PagePoolCore? outer = EnterProviderCall();
        try
        {
            _provider.Init(ProviderShell);
        }
        finally
        {
            t_providerCall = outer;
        }
    }

    // The token of the provider hooks: set on the calling thread while this pool calls its provider's Init,
    // AllocNetMems or Destroy, so the built-in providers serve only the pool's own calls (a decorator that forwards
    // them runs inside the pool's call, so it is served too). Slow paths only.
    [ThreadStatic]
    private static PagePoolCore? t_providerCall;

    private PagePoolCore? EnterProviderCall()
    {
        PagePoolCore? outer = t_providerCall;
        t_providerCall = this;
        return outer;
    }

    /// <summary>True while <paramref name="pool"/> itself calls its memory provider's Init, AllocNetMems or
    /// Destroy on the calling thread: the built-in providers refuse every other call of those hooks.</summary>
    internal static bool IsCallingProvider(PagePool? pool) => pool is not null && ReferenceEquals(t_providerCall, pool.Core);

    /// <summary>The parameters the pool was created with.</summary>
    public PagePoolOptions Options { get; }

    /// <summary>A process-wide number naming the pool in warnings.</summary>
    public int Id { get; }

    /// <summary>The allocator host pages come from.</summary>
    public PageAllocator Allocator => _allocator;

    /// <summary>The memory provider, or null for host pages from <see cref="Allocator"/>.</summary>
    public IMemoryProvider? MemoryProvider => _provider;

    /// <summary>The device mapper.</summary>
    public IDmaMapper DmaMapper => _mapper;

    /// <summary>Order of the pool's pages.</summary>
    public int Order => _order;

    /// <summary>Size of the pool's pages: 4096 &lt;&lt; <see cref="Order"/>.</summary>
    public int PageSize => _maxSize;

    /// <summary>Entries the recycle ring holds at most: exactly <see cref="PagePoolOptions.PoolSize"/> (ptr_ring).</summary>
    public int RingCapacity => _ring.Capacity;

    /// <summary>The managed thread id of the owner thread (0 once disposed).</summary>
    public int OwnerThreadId => Volatile.Read(ref _owner)?.ManagedThreadId ?? 0;

    /// <summary>True when the calling thread is the pool's owner.</summary>
    public bool IsOwnerThread => ReferenceEquals(Thread.CurrentThread, Volatile.Read(ref _owner));

    /// <summary>The preferred memory node of recycled pages.</summary>
    public int Node => _preferredNode;

    /// <summary>Pages in the owner's cache (owner thread for an exact value).</summary>
    public int CachedPages => _cacheCount;

    /// <summary>Pages in the recycle ring (exact when the pool is quiet).</summary>
    public int RingPages => _ring.Count;

    /// <summary>Pages the pool has taken from the allocator or the provider (pages_state_hold_cnt).</summary>
    public long PagesHeld => Volatile.Read(ref _holdCount);

    /// <summary>Pages the pool has given back (pages_state_release_cnt).</summary>
    public long PagesReleased => Interlocked.Read(ref _releaseCount);

    /// <summary>Pages taken and not yet given back: in the cache, in the ring or in use.</summary>
    public long InFlight => PagesHeld - PagesReleased;

    /// <summary>True once <see cref="Dispose"/> was called.</summary>
    public bool IsDisposed => Volatile.Read(ref _state) != StateAlive;

    /// <summary>True once the pool was disposed and every page came back: it holds nothing any more.</summary>
    public bool IsReleased => Volatile.Read(ref _state) == StateFreed;

    /// <summary>
    /// Makes the calling thread the pool's owner (the NAPI context moving). The previous owner must have
    /// stopped allocating and recycling directly.
    /// </summary>
    /// <exception cref="ObjectDisposedException">The pool was disposed.</exception>
    public void SetOwnerThread()
    {
        if (IsDisposed)
        {
            FinishOwnerSideIfSafe(finalizer: false);
            ThrowHelper.ObjectDisposed(nameof(PagePool));
        }

        // A full fence between the write and the second test: a Dispose that raced this call either sees the new
        // owner (and takes it away), or this call sees the Dispose and takes the ownership back.
        Thread current = Thread.CurrentThread;
        Interlocked.Exchange(ref _owner, current);
        if (IsDisposed)
        {
            Interlocked.CompareExchange(ref _owner, null, current);
            FinishOwnerSideIfSafe(finalizer: false);
            ThrowHelper.ObjectDisposed(nameof(PagePool));
        }
    }

    /// <summary>Changes the preferred node (page_pool_nid_changed): pages of other nodes found in the ring
    /// from now on are released (waive). Owner thread.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="node"/> is below -1.</exception>
    /// <exception cref="ObjectDisposedException">The pool was disposed.</exception>
    public void SetNode(int node)
    {
        CheckOwner();
        if (node < -1)
        {
            ThrowHelper.ArgumentOutOfRange(nameof(node), node, "The node must be -1 (the host's node) or a node number.");
        }

        _preferredNode = node == -1 ? 0 : node;
    }

    // ------------------------------------------------------------------ allocation

    /// <summary>
    /// Allocates a whole page with <c>pp_ref_count</c> 1 (page_pool_alloc_netmems / page_pool_dev_alloc_pages).
    /// Owner thread.
    /// </summary>
    /// <returns>False, with an empty handle, when the cache and ring are empty and the allocator or provider has
    /// nothing (memory limit, injected fault, mapping failure).</returns>
    /// <exception cref="InvalidOperationException">Not called on the owner thread.</exception>
    /// <exception cref="ObjectDisposedException">The pool was disposed.</exception>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool TryAllocNetMem(out NetMem netmem)
    {
        if (!ReferenceEquals(Thread.CurrentThread, _owner))
        {
            PoolThrowHelper.NotOwner(this);
        }

        return TryAllocNetMemCore(out netmem);
    }

    /// <summary>Allocates a whole page as a buffer of <see cref="PageSize"/> bytes. Owner thread.</summary>
    /// <inheritdoc cref="TryAllocNetMem"/>
    public bool TryAllocPage(out PagePoolBuffer buffer)
    {
        if (TryAllocNetMem(out NetMem netmem))
        {
            buffer = new PagePoolBuffer(netmem, 0, _maxSize, _maxSize, isFragment: false);
            return true;
        }

        buffer = default;
        return false;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private bool TryAllocNetMemCore(out NetMem netmem)
    {
        NetMem[] cache = _cache;
        int n = _cacheCount - 1;
        if ((uint)n < (uint)cache.Length)
        {
            // Field by field: a recycle has usually just stored this slot field by field, and one wide load
            // of narrower fresh stores cannot be forwarded from the store buffer (a stall of tens of cycles).
            ref NetMem slot = ref cache[n];
            netmem = new NetMem(slot.Area!, slot.Index, slot.Generation);
            _cacheCount = n;
            _allocFast++;
            return true;
        }

        return TryAllocSlow(out netmem);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private bool TryAllocSlow(out NetMem netmem)
    {
        if (TryRefillFromRing(out netmem))
        {
            return true;
        }

        return _provider is null ? TryAllocFromAllocator(out netmem) : TryAllocFromProvider(_provider, out netmem);
    }

    /// <summary>page_pool_refill_alloc_cache: move up to 64 pages of the preferred node from the ring.</summary>
    private bool TryRefillFromRing(out NetMem netmem)
    {
        if (_ring.IsEmpty)
        {
            _allocEmpty++;
            netmem = default;
            return false;
        }

        NetMem[] cache = _cache;
        int count = _cacheCount;
        while (count < AllocCacheRefill && _ring.TryDequeue(out NetMem page))
        {
            int node = page.Area!.NodeId;
            if (node == -1 || node == _preferredNode)
            {
                cache[count++] = page;
            }
            else
            {
                // Wrong node: release this one and let the allocator serve the node we want now.
                ReturnPage(page);
                _allocWaive++;
                break;
            }
        }

        if (count > 0)
        {
            count--;
            netmem = cache[count];
            _cacheCount = count;
            _allocRefill++;
            return true;
        }

        _cacheCount = 0;
        netmem = default;
        return false;
    }

    /// <summary>__page_pool_alloc_netmems_slow: a bulk of order-0 pages, or one high-order page.</summary>
    private bool TryAllocFromAllocator(out NetMem netmem)
    {
        if (_order > 0)
        {
            // No bulk for high orders, as in the kernel: one block per call.
            if (_allocator.TryAllocBlock(_order, _allocFlags, out Arena? arena, out int index))
            {
                netmem = new NetMem(HostPageArea.For(arena), index, 0);
                if (TryAdmit(ref netmem))
                {
                    _allocSlowHighOrder++;
                    return true;
                }
            }

            netmem = default;
            return false;
        }

        Arena?[] arenas = _bulkArenas;
        int[] indexes = _bulkIndexes;
        int got = _allocator.TryAllocBulk(_allocFlags, arenas, indexes);
        NetMem[] cache = _cache;
        Arena? lastArena = null;
        HostPageArea? area = null;
        int i = 0;
        try
        {
            for (; i < got; i++)
            {
                Arena a = arenas[i]!;
                arenas[i] = null;
                if (!ReferenceEquals(a, lastArena))
                {
                    area = HostPageArea.For(a);
                    lastArena = a;
                }

                var page = new NetMem(area!, indexes[i], 0);
                if (TryAdmit(ref page))
                {
                    // Published page by page, so that a mapper throwing halfway loses nothing.
                    cache[_cacheCount++] = page;
                }
            }
        }
        finally
        {
            // Only after an exception: the pages of the batch not yet admitted go back to the allocator.
            for (i++; i < got; i++)
            {
                PageAllocator.PutBlockRef(arenas[i]!, indexes[i]);
                arenas[i] = null;
            }
        }

        return PopAfterSlow(out netmem);
    }

    private bool TryAllocFromProvider(IMemoryProvider provider, out NetMem netmem)
    {
        Span<NetMem> into = _bulkNetMems.AsSpan(0, _order == 0 ? AllocCacheRefill : 1);
        int got;
        PagePoolCore? outer = EnterProviderCall();
        try
        {
            got = provider.AllocNetMems(ProviderShell, into);
        }
        finally
        {
            t_providerCall = outer;
        }

        if ((uint)got > (uint)into.Length)
        {
            into.Clear();
            ThrowHelper.InvalidOperation($"The memory provider reported {got} units for a span of {into.Length}.");
        }

        NetMem[] cache = _cache;
        int i = 0;
        try
        {
            for (; i < got; i++)
            {
                NetMem page = into[i];
                into[i] = default;
                if (page.IsEmpty || page.Length != _maxSize)
                {
                    ThrowHelper.InvalidOperation($"The memory provider returned an empty unit or one that is not {_maxSize} bytes.");
                }

                if (TryAdmit(ref page))
                {
                    cache[_cacheCount++] = page;
                }
            }
        }
        finally
        {
            // Only after an exception: what the provider gave and the pool did not take goes back to it.
            // The unit that caused the exception is left alone: it may be another pool's.
            for (i++; i < got; i++)
            {
                NetMem unit = into[i];
                into[i] = default;

                // Only a unit no pool holds goes back (a faulty provider may have returned another pool's).
                if (!unit.IsEmpty && (uint)unit.Index < (uint)unit.Area!.Descriptors.Length &&
                    Volatile.Read(ref unit.Area.Descriptors[unit.Index].Pool) is null)
                {
                    GiveBack(unit);
                }
            }
        }

        return PopAfterSlow(out netmem);
    }

    private bool PopAfterSlow(out NetMem netmem)
    {
        int count = _cacheCount;
        if (count > 0)
        {
            count--;
            netmem = _cache[count];
            _cacheCount = count;
            if (_order == 0)
            {
                _allocSlow++;
            }
            else
            {
                _allocSlowHighOrder++;
            }

            return true;
        }

        _cacheCount = 0;
        netmem = default;
        return false;
    }

    /// <summary>
    /// page_pool_dma_map + page_pool_set_pp_info: map (host pages, with DmaMap), stamp the pool fields, count
    /// the page as held. On a mapping failure, or when a caller took a reference on the block before the pool could
    /// take it (the pool then leaves the block to that caller), the page goes straight back and false is returned.
    /// </summary>
    private bool TryAdmit(ref NetMem page)
    {
        NetMemArea area = page.Area!;
        ref PageDescriptor d = ref area.Descriptors[page.Index];
        if (d.Pool is not null)
        {
            ThrowHelper.InvalidOperation("The memory provider returned memory that a page pool still holds.");
        }

        // The pool's generation, one above the block's, with a compare-and-swap of the count and generation word that
        // needs the count to be 1 (the block's only reference is the one the pool got). A caller who found the block by
        // address (PageAllocator.TryGetPage) and took a reference (Page.AddRef) first keeps its handle's generation: the
        // pool gives its own reference back and does not take the block, so the caller's FreePages still matches. A
        // reference taken after the swap is taken in the pool's generation. Either way no handle a reference was granted
        // through goes stale under its holder.
        ref long word = ref PageDescriptor.RefAndGeneration(ref d);
        long seen;
        do
        {
            seen = PageDescriptor.ReadUnclaimed(ref d);
            if ((int)seen != 1)
            {
                GiveBack(page);
                return false;
            }
        }
        while (Interlocked.CompareExchange(ref word, seen + (1L << 32), seen) != seen);

        // The mapper sees a handle of the page's current generation, so its CPU accessors pass the detection
        // mode's use-after-free check.
        int generation = (int)(seen >> 32) + 1;
        page = new NetMem(area, page.Index, generation);

        if (_dmaMap && area.NeedsDmaMapping)
        {
            bool mapped;
            ulong address;
            try
            {
                mapped = _mapper.TryMap(page, out address);
            }
            catch
            {
                GiveBack(page);
                throw;
            }

            if (!mapped)
            {
                GiveBack(page);
                return false;
            }

            d.DmaAddress = address;
            if (_dmaSync)
            {
                SyncForDevice(page, ref d, _maxLen);
            }
        }

        if (!ReferenceEquals(area, _lastAdmittedArea))
        {
            // Remembered for the stall warning's list of missing pages; one compare per admitted page.
            NoteArea(area);
        }

        d.PpRefCount = 1;
        d.PoolFragmentPage = false;

        // Published after the generation: a late put of the page's previous use cannot claim it (its generation is
        // older), so it never reads this pool as its own (ConfirmClaim).
        Volatile.Write(ref d.Pool, this);
        _holdCount++;
        return true;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void NoteArea(NetMemArea area)
    {
        _lastAdmittedArea = area;

        // The page is taken and mapped but not yet the pool's: thrown here, an interrupt would leave it owned by
        // nobody. Kept for the thread's next blocking call instead.
        bool interrupted = false;
        LockWait.EnterKeepingInterrupt(_knownAreas, ref interrupted);
        try
        {
            _knownAreas.Add(area);
        }
        finally
        {
            Monitor.Exit(_knownAreas);
            Arena.KeepInterrupt(interrupted);
        }
    }

    /// <summary>The lock of the areas the pool admitted pages from (for the tests that hold it).</summary>
    internal object KnownAreasLockForTests => _knownAreas;

    // ------------------------------------------------------------------ recycling

    /// <summary>
    /// Drops one pool reference on <paramref name="netmem"/> and recycles the page if it was the last
    /// (page_pool_put_netmem). Any thread.
    /// </summary>
    /// <param name="netmem">A page of this pool.</param>
    /// <param name="dmaSyncSize">Bytes the device may have written, synced back on recycle (capped at MaxLen);
    /// -1 for all of MaxLen.</param>
    /// <param name="allowDirect">Recycle into the owner's cache; honoured only on the owner thread.</param>
    /// <exception cref="ArgumentException">The handle is empty or the page belongs to another pool.</exception>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="dmaSyncSize"/> is below -1.</exception>
    /// <exception cref="PageFragDoubleFreeException">The page was already put back (double put) or returned.</exception>
    /// <exception cref="InvalidOperationException">The page is carved into fragments (the handle is a fragment's
    /// <see cref="PagePoolBuffer.NetMem"/>): free the fragment instead.</exception>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void PutPage(NetMem netmem, int dmaSyncSize, bool allowDirect)
    {
        ref PageDescriptor d = ref CheckHeld(netmem, nameof(netmem));
        if (d.PoolFragmentPage)
        {
            PoolThrowHelper.FragmentPage();
        }

        if (dmaSyncSize < -1)
        {
            ThrowHelper.ArgumentOutOfRange(nameof(dmaSyncSize), dmaSyncSize, "dmaSyncSize must be -1 (all of MaxLen) or non-negative.");
        }

        if (Unref(ref d, 1) == 0)
        {
            PutUnrefed(netmem, ref d, dmaSyncSize, allowDirect);
        }
    }

    /// <summary>Puts a page and syncs all of MaxLen (page_pool_put_full_netmem). Any thread.</summary>
    /// <inheritdoc cref="PutPage"/>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void PutFullPage(NetMem netmem, bool allowDirect) => PutPage(netmem, -1, allowDirect);

    /// <summary>
    /// Puts a page straight back into the cache (page_pool_recycle_direct). Meant for the owner thread; called
    /// elsewhere it behaves like <c>PutFullPage(netmem, false)</c>.
    /// </summary>
    /// <inheritdoc cref="PutPage"/>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void RecycleDirect(NetMem netmem) => PutPage(netmem, -1, allowDirect: true);

    /// <summary>Frees a buffer of this pool; <paramref name="allowDirect"/> is honoured only on the owner thread.</summary>
    /// <exception cref="ArgumentException">The buffer is empty or belongs to another pool.</exception>
    /// <exception cref="PageFragDoubleFreeException">The buffer was already freed.</exception>
    public void PutBuffer(in PagePoolBuffer buffer, bool allowDirect)
    {
        ref PageDescriptor d = ref CheckHeld(buffer.NetMem, nameof(buffer));
        PutBufferCore(buffer, ref d, allowDirect && ReferenceEquals(Thread.CurrentThread, _owner));
    }

    /// <summary>
    /// Frees a buffer of whichever pool holds its page (napi_pp_put_page). Any thread; on the pool's owner
    /// thread the page may go back into the cache directly.
    /// </summary>
    /// <exception cref="ArgumentException">The buffer is empty.</exception>
    /// <exception cref="PageFragDoubleFreeException">The buffer was already freed, or its page left the pool.</exception>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Free(in PagePoolBuffer buffer)
    {
        NetMem netmem = buffer.NetMem;
        NetMemArea? area = netmem.Area;
        if (area is null)
        {
            ThrowHelper.Argument(nameof(buffer), "The buffer is empty: it came from a failed or default allocation.");
        }

        ref PageDescriptor d = ref area.Descriptors[netmem.Index];
        if (d.Pool is not PagePoolCore pool)
        {
            PoolThrowHelper.NotPoolPage(nameof(buffer));
            return;
        }

        if (d.Generation != netmem.Generation)
        {
            PoolThrowHelper.StaleHandle();
        }

        pool.PutBufferCore(buffer, ref d, ReferenceEquals(Thread.CurrentThread, pool._owner));
    }

    /// <summary>
    /// Sets the pool reference count of a page the caller holds alone to <paramref name="count"/>, so that the
    /// caller can hand out that many pieces and put each one (page_pool_fragment_netmem, the driver-managed
    /// fragmentation of mlx5). Any thread that holds the page.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="count"/> is not positive or is above 2^62.</exception>
    /// <exception cref="InvalidOperationException">The page is already shared (its count is not 1), or the pool carves it into fragments.</exception>
    public void FragmentNetMem(NetMem netmem, long count)
    {
        ref PageDescriptor d = ref CheckHeld(netmem, nameof(netmem));
        if (d.PoolFragmentPage)
        {
            PoolThrowHelper.FragmentPage();
        }

        if (count < 1 || count > BiasMax)
        {
            ThrowHelper.ArgumentOutOfRange(nameof(count), count, "The count must be between 1 and 2^62.");
        }

        if (Volatile.Read(ref d.PpRefCount) != 1)
        {
            ThrowHelper.InvalidOperation("Only a page held by one user (pp_ref_count 1) can be fragmented.");
        }

        Volatile.Write(ref d.PpRefCount, count);
    }

    /// <summary>
    /// Drops <paramref name="count"/> pool references at once and returns how many are left
    /// (page_pool_unref_netmem). At 0 the caller was last and must call <see cref="PutUnrefedNetMem"/>.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="count"/> is not positive.</exception>
    /// <exception cref="PageFragDoubleFreeException">More references dropped than held, or the page was already put back.</exception>
    /// <exception cref="InvalidOperationException">The page is carved into fragments by the pool.</exception>
    public long UnrefNetMem(NetMem netmem, long count)
    {
        ref PageDescriptor d = ref CheckHeld(netmem, nameof(netmem));
        if (d.PoolFragmentPage)
        {
            PoolThrowHelper.FragmentPage();
        }

        if (count < 1)
        {
            ThrowHelper.ArgumentOutOfRange(nameof(count), count, "The count must be positive.");
        }

        return Unref(ref d, count);
    }

    /// <summary>Recycles a page whose references <see cref="UnrefNetMem"/> dropped to zero
    /// (page_pool_put_unrefed_netmem).</summary>
    /// <inheritdoc cref="PutPage"/>
    /// <exception cref="InvalidOperationException">The page is carved into fragments, or its pool references are not
    /// all dropped (its count is above 1: pieces of it are still out).</exception>
    public void PutUnrefedNetMem(NetMem netmem, int dmaSyncSize, bool allowDirect)
    {
        ref PageDescriptor d = ref CheckHeld(netmem, nameof(netmem));
        if (d.PoolFragmentPage)
        {
            PoolThrowHelper.FragmentPage();
        }

        // After UnrefNetMem returned 0 the count is back at 1 (the invariant of a recyclable page); above 1, pieces
        // of the page are still out and recycling it would hand their bytes to the next user.
        if (Volatile.Read(ref d.PpRefCount) != 1)
        {
            ThrowHelper.InvalidOperation("The page's pool references are not all dropped: someone still holds a piece of it. " +
                "Call PutUnrefedNetMem only after UnrefNetMem returned 0.");
        }

        if (dmaSyncSize < -1)
        {
            ThrowHelper.ArgumentOutOfRange(nameof(dmaSyncSize), dmaSyncSize, "dmaSyncSize must be -1 (all of MaxLen) or non-negative.");
        }

        PutUnrefed(netmem, ref d, dmaSyncSize, allowDirect);
    }

    // allowDirect: true only on the owner thread (the callers check).
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void PutBufferCore(in PagePoolBuffer buffer, ref PageDescriptor d, bool allowDirect)
    {
        if (buffer.IsFragment)
        {
            MarkFragmentFreed(buffer, ref d);
            if (allowDirect && _fragLimit != 0 && buffer.NetMem.Equals(_fragPage))
            {
                // The owner frees a fragment of the page it is carving: the reference goes back to the part
                // of the bias not yet handed out, dropped in one go when the page is drained. No atomic.
                _fragUsers--;
                return;
            }
        }

        if (Unref(ref d, 1) == 0)
        {
            // The last reference of a fragment page (once per page) ends its fragment use before it is recycled.
            // Whole-page buffers never set the flag: the test is of a value already in a register, no memory access.
            if (buffer.IsFragment)
            {
                d.PoolFragmentPage = false;
            }

            PutUnrefed(buffer.NetMem, ref d, -1, allowDirect);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private ref PageDescriptor CheckHeld(in NetMem netmem, string paramName)
    {
        NetMemArea? area = netmem.Area;
        if (area is null)
        {
            ThrowHelper.Argument(paramName, "The handle is empty: it came from a failed or default allocation.");
        }

        ref PageDescriptor d = ref area.Descriptors[netmem.Index];
        object? pool = d.Pool;
        if (!ReferenceEquals(pool, this))
        {
            if (pool is null)
            {
                PoolThrowHelper.NotPoolPage(paramName);
            }

            PoolThrowHelper.OtherPool(paramName);
        }

        if (d.Generation != netmem.Generation)
        {
            PoolThrowHelper.StaleHandle();
        }

        return ref d;
    }

    /// <summary>
    /// page_pool_unref_netmem: "equal to what I drop → I was last, no write (reset to 1 if more than 1 was
    /// dropped); otherwise atomic subtract; at zero reset to 1". The reset keeps every recyclable page at 1, so a
    /// page allocated whole after being a fragment page needs no extra write.
    /// </summary>
    /// <remarks>
    /// The plain "I was last" read does not decide who releases the page: two racing puts of one handle both
    /// read 1. The caller that gets 0 goes on to <see cref="PutUnrefed"/>, whose compare-exchange of the
    /// generation is the one atomic that picks exactly one winner (see docs/kernel-map.md).
    /// </remarks>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static long Unref(ref PageDescriptor d, long count)
    {
        if (Volatile.Read(ref d.PpRefCount) == count)
        {
            if (count != 1)
            {
                Volatile.Write(ref d.PpRefCount, 1);
            }

            return 0;
        }

        return UnrefAtomic(ref d, count);
    }

    private static long UnrefAtomic(ref PageDescriptor d, long count)
    {
        // No generation check after the subtraction: a legitimate last put on another thread may claim the page
        // (ClaimRelease moves the generation on) between this subtraction and such a check, which would then
        // take this put for a stale one, give its reference back to a page that is already being recycled and
        // throw at an innocent caller. A stale handle is caught where it can be: by the generation check before
        // the subtraction, by the fragment's state byte (tagged with the generation) for fragments, and by
        // ClaimRelease for the put that reaches zero.
        long left = Interlocked.Add(ref d.PpRefCount, -count);
        if (left > 0)
        {
            return left;
        }

        if (left < 0)
        {
            Interlocked.Add(ref d.PpRefCount, count);
            PoolThrowHelper.RefUnderflow();
        }

        // The last two users raced past the equality test: the one that reached zero restores the invariant.
        Volatile.Write(ref d.PpRefCount, 1);
        return 0;
    }

    /// <summary>
    /// The release decision: moves the page from the generation of <paramref name="netmem"/> to the next with
    /// one compare-exchange. Exactly one of any number of racing releases of the same handle succeeds; the others
    /// throw the double-put exception. Returns the page's reference count at the claim: the claim's mark
    /// (<see cref="PageDescriptor.ClaimMark"/>) is then set, and the caller must end it at once, with
    /// <see cref="EndClaimKept"/> or <see cref="ReturnClaimedPage"/>, before anything that may block, throw or call
    /// out. The new generation is <c>netmem.Generation + 1</c>.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int ClaimRelease(in NetMem netmem, ref PageDescriptor d)
    {
        int generation = netmem.Generation;
        if (!TryClaimGeneration(ref d, generation))
        {
            // Lost to another release of the same handle.
            PoolThrowHelper.StaleHandle();
        }

        return ConfirmClaim(ref d, generation);
    }

    /// <summary>
    /// The first step of <see cref="ClaimRelease"/> (internal for the tests that run the steps apart): one
    /// compare-and-swap moves the page's reference count and generation, as one 64-bit word, from
    /// <paramref name="generation"/> to the next and sets the claim mark (<see cref="PageDescriptor.ClaimMark"/>). It
    /// succeeds only on a block that has a reference (a pool page always has the pool's) and no pending claim, so a
    /// late put can never move the generation of a free block: the allocator's plain generation writes (read, then
    /// written one up) cannot straddle a claim and have it undone under them. False when the generation moved on, the
    /// block has no reference or another claim is pending. A true return must be followed by
    /// <see cref="ConfirmClaim"/> on the same thread, which ends the claim or hands it to its caller.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static bool TryClaimGeneration(ref PageDescriptor d, int generation)
    {
        ref long word = ref PageDescriptor.RefAndGeneration(ref d);
        long seen = Volatile.Read(ref word);

        // The word is the count in its low half and the generation in its high half (checked when the arenas are
        // made, see PageDescriptor.LayoutFitsRefAndGeneration): adding 2^32 moves the generation on, and a count above
        // zero has the sign bit (the mark) clear, so adding the mark sets it without a carry.
        while ((int)(seen >> 32) == generation && (int)seen > 0)
        {
            long prev = Interlocked.CompareExchange(ref word, seen + (1L << 32) + PageDescriptor.ClaimMarkInWord, seen);
            if (prev == seen)
            {
                return true;
            }

            // A caller's Page.AddRef or FreePages moved the count: decide again.
            seen = prev;
        }

        return false;
    }

    /// <summary>
    /// The second step of <see cref="ClaimRelease"/>: the claim is the release's only if the page is still a pool
    /// page. While the claim's mark is set nobody else writes the count and generation word, so the block cannot be
    /// freed, handed out again or admitted meanwhile, and its generation stays the claimed one: the pool field, read
    /// after the claim's compare-and-swap, tells the two cases apart. Still a pool page: this claim is the release
    /// (a page that left the pool and was admitted again has a higher generation, and the claim failed), and the count
    /// at the claim is returned with the mark still set. No pool: the page left it (the claim was possible only because
    /// callers' references keep the page at its pool generation, see <see cref="ReturnClaimedPage"/>); the claim is
    /// undone and the put throws.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static int ConfirmClaim(ref PageDescriptor d, int generation)
    {
        if (Volatile.Read(ref d.Pool) is null)
        {
            UndoClaim(ref d, generation);
        }

        Debug.Assert(Volatile.Read(ref d.Generation) == generation + 1, "nobody but the claimer writes the generation while the claim's mark is set");
        return Volatile.Read(ref d.RefCount) & int.MaxValue;
    }

    /// <summary>
    /// Gives a lost claim back: the page left the pool, and the winner restored the generation for callers who
    /// hold references (their handles have it). The claim's mark is set, so no other thread has written the word since
    /// the claim: one plain store puts back the count and the generation the claim found, and ends the mark (callers'
    /// frees and references waiting on it go on with their own generation). Then the put throws.
    /// </summary>
    [DoesNotReturn]
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void UndoClaim(ref PageDescriptor d, int generation)
    {
        int count = Volatile.Read(ref d.RefCount) & int.MaxValue;
        Volatile.Write(ref PageDescriptor.RefAndGeneration(ref d), ((long)generation << 32) | (uint)count);
        PoolThrowHelper.StaleHandle();
    }

    /// <summary>
    /// Ends a confirmed claim on a page the pool keeps (recycles): the claimed generation stays, the count (1: only the
    /// pool holds the page) goes back without the mark, with a plain store (the claimer is the word's only writer).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void EndClaimKept(ref PageDescriptor d) => Volatile.Write(ref d.RefCount, 1);

    /// <summary>__page_pool_put_page + the ring: recycle a page whose last pool reference was dropped.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void PutUnrefed(NetMem netmem, ref PageDescriptor d, int dmaSyncSize, bool allowDirect)
    {
        // A new generation makes every handle of the previous use stale, so a later put is caught; the
        // compare-exchange makes a racing put of the same handle lose here. The count comes from the claim itself:
        // while its mark is set no caller can take or drop a reference, so "only the pool holds it" is exact.
        int count = ClaimRelease(netmem, ref d);
        if (count == 1 && (d.Flags & PageFlags.PfMemalloc) == 0 && Volatile.Read(ref _state) == StateAlive)
        {
            EndClaimKept(ref d);
            if (_dmaSync)
            {
                SyncForDevice(netmem, ref d, dmaSyncSize);
            }

            var recycled = new NetMem(netmem.Area!, netmem.Index, netmem.Generation + 1);
            if (allowDirect && ReferenceEquals(Thread.CurrentThread, _owner))
            {
                NetMem[] cache = _cache;
                int n = _cacheCount;
                if ((uint)n < (uint)cache.Length)
                {
                    cache[n] = recycled;
                    _cacheCount = n + 1;
                    _recycleCached++;
                    return;
                }

                _recycleCacheFull++;
            }

            RecycleInRing(recycled);
            return;
        }

        PutNotRecyclable(netmem, count);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void PutNotRecyclable(NetMem netmem, int count)
    {
        // After Dispose every page goes back to the allocator; that is not a refcount release.
        bool alive = Volatile.Read(ref _state) == StateAlive;
        ReturnClaimedPage(netmem, count);
        if (alive)
        {
            Interlocked.Increment(ref Stripe.ReleasedRefcnt);
        }
    }

    private void RecycleInRing(in NetMem recycled)
    {
        if (_ring.TryEnqueue(recycled))
        {
            // Counted by the ring's own position: no second atomic on this path.
            return;
        }

        Interlocked.Increment(ref Stripe.RingFull);
        ReturnPage(recycled);
    }

    private void SyncForDevice(in NetMem netmem, ref PageDescriptor d, int dmaSyncSize)
    {
        // (uint)-1 is the largest size, so "all" falls out of the min, as in the kernel.
        int length = (int)Math.Min((uint)dmaSyncSize, (uint)_maxLen);
        if (length > 0)
        {
            _mapper.SyncForDevice(netmem, d.DmaAddress, _offset, length);
        }
    }

    /// <summary>
    /// page_pool_return_page for a page in the pool's cache or ring (or the fragment page): the page leaves the pool.
    /// Clear the pool fields, unmap, give it to the allocator (put_page, which frees it unless someone else holds a
    /// reference) or the provider, count the release. The handle has the page's current generation, which stays.
    /// </summary>
    private void ReturnPage(in NetMem netmem)
    {
        NetMemArea area = netmem.Area!;
        ref PageDescriptor d = ref area.Descriptors[netmem.Index];
        Debug.Assert(Volatile.Read(ref d.Generation) == netmem.Generation, "a page the pool holds has its handle's generation");
        d.Pool = null;
        d.PpRefCount = 0;
        d.PoolFragmentPage = false;
        UnmapAndGiveBack(netmem, ref d);
    }

    /// <summary>
    /// page_pool_return_page for a page whose release claim this thread holds (<see cref="ClaimRelease"/> returned
    /// <paramref name="count"/>, the mark is set): the page leaves the pool. The pool fields are cleared first, then the
    /// claim ends: a page that callers hold (<see cref="Page.AddRef"/>, a count above 1) goes back to
    /// <c>netmem.Generation</c>, the generation their handles have, so that they can still free them; a page that only
    /// the pool holds keeps the claimed generation (it goes to the allocator there, and no late put's claim, which needs
    /// the old generation, can succeed on it again). Provider memory has no such holders and keeps the claimed one.
    /// Both in one plain store of the word (nobody else writes it while the mark is set), after the pool field was
    /// cleared: a late racing put that claims the restored generation then reads no pool and undoes its claim
    /// (<see cref="ConfirmClaim"/>), while the callers' frees wait for its mark. Nothing here before the store can
    /// block, throw or call out; the unmapping (the mapper's code) and the release of the pool's reference come after.
    /// </summary>
    internal void ReturnClaimedPage(in NetMem netmem, int count)
    {
        NetMemArea area = netmem.Area!;
        ref PageDescriptor d = ref area.Descriptors[netmem.Index];
        d.Pool = null;
        d.PpRefCount = 0;
        d.PoolFragmentPage = false;
        int generation = count > 1 && area is HostPageArea ? netmem.Generation : netmem.Generation + 1;
        Volatile.Write(ref PageDescriptor.RefAndGeneration(ref d), ((long)generation << 32) | (uint)count);
        UnmapAndGiveBack(netmem, ref d);
    }

    /// <summary>The end of <see cref="ReturnPage"/> and <see cref="ReturnClaimedPage"/>, once the page left the pool.</summary>
    private void UnmapAndGiveBack(in NetMem netmem, ref PageDescriptor d)
    {
        // Before the pool's reference goes: while it is there the block cannot go back to the allocator, so no other
        // owner can get it while it is still mapped for the device.
        if (_dmaMap && netmem.Area!.NeedsDmaMapping)
        {
            _mapper.Unmap(netmem, d.DmaAddress);
            d.DmaAddress = 0;
        }

        try
        {
            GiveBack(netmem);
        }
        finally
        {
            long released = Interlocked.Increment(ref _releaseCount);
            if (Volatile.Read(ref _state) != StateAlive && released == Volatile.Read(ref _holdCount))
            {
                FinishRelease();
            }
        }
    }

    private void GiveBack(in NetMem netmem)
    {
        if (_provider is null)
        {
            // Waits while a late put's claim is pending on a page that callers hold (see ReturnClaimedPage).
            PageAllocator.PutPoolBlockRef(((HostPageArea)netmem.Area!).Arena, netmem.Index);
        }
        else
        {
            // The unit leaves the pool: mark it as given back, so that the provider can tell this call from a
            // caller's direct ReleaseNetMem of memory a buffer still holds (see TryClaimProviderRelease).
            Volatile.Write(ref netmem.Area!.Descriptors[netmem.Index].PpRefCount, ProviderReleaseMark);
            _provider.ReleaseNetMem(ProviderShell, netmem);
        }
    }

    /// <summary>
    /// The <c>pp_ref_count</c> of a unit while its pool gives it back to its memory provider: no pool page has a
    /// negative count, and the allocator and the pool's admission overwrite it.
    /// </summary>
    internal const long ProviderReleaseMark = long.MinValue;

    /// <summary>
    /// For the built-in providers' <c>ReleaseNetMem</c>, which is public: true when <paramref name="netmem"/> is
    /// being given back by its pool right now, and the caller is the one that takes it (one compare-and-swap
    /// clears the mark, so of two racing give-backs exactly one succeeds). False for memory a buffer or a pool
    /// still holds, memory already given back, and any other page.
    /// </summary>
    internal static bool TryClaimProviderRelease(in NetMem netmem)
    {
        NetMemArea? area = netmem.Area;
        if (area is null || (uint)netmem.Index >= (uint)area.Descriptors.Length)
        {
            return false;
        }

        return Interlocked.CompareExchange(ref area.Descriptors[netmem.Index].PpRefCount, 0, ProviderReleaseMark) == ProviderReleaseMark;
    }

    // ------------------------------------------------------------------ stats

    /// <summary>Adds the pool's counters into <paramref name="stats"/> (page_pool_get_stats). Any thread.</summary>
    public void GetStats(ref PagePoolStats stats)
    {
        stats.AllocFast += Volatile.Read(ref _allocFast);
        stats.AllocSlow += Volatile.Read(ref _allocSlow);
        stats.AllocSlowHighOrder += Volatile.Read(ref _allocSlowHighOrder);
        stats.AllocEmpty += Volatile.Read(ref _allocEmpty);
        stats.AllocRefill += Volatile.Read(ref _allocRefill);
        stats.AllocWaive += Volatile.Read(ref _allocWaive);
        stats.RecycleCached += Volatile.Read(ref _recycleCached);
        stats.RecycleCacheFull += Volatile.Read(ref _recycleCacheFull);
        stats.RecycleRing += _ring.TotalEnqueued;
        foreach (ref RecycleStripe s in _stripes.AsSpan())
        {
            stats.RecycleRingFull += Volatile.Read(ref s.RingFull);
            stats.RecycleReleasedRefcnt += Volatile.Read(ref s.ReleasedRefcnt);
        }
    }

    /// <summary>A snapshot of the pool's counters. Any thread.</summary>
    public PagePoolStats GetStats()
    {
        var stats = default(PagePoolStats);
        GetStats(ref stats);
        return stats;
    }

    /// <inheritdoc/>
    public override string ToString() => $"PagePool {Id} (order {_order}, {InFlight} in flight{(IsReleased ? ", released" : IsDisposed ? ", disposed" : "")})";

    // ------------------------------------------------------------------ helpers

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void CheckOwner()
    {
        if (!ReferenceEquals(Thread.CurrentThread, _owner))
        {
            PoolThrowHelper.NotOwner(this);
        }
    }

    private ref RecycleStripe Stripe
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => ref _stripes[(int)((uint)Thread.GetCurrentProcessorId() % (uint)_stripes.Length)];
    }

    /// <summary>
    /// The counters any thread bumps (the kernel keeps recycle stats per CPU): one line per CPU so that
    /// threads putting pages on different CPUs do not fight over one counter.
    /// </summary>
    [StructLayout(LayoutKind.Explicit, Size = 64)]
    private struct RecycleStripe
    {
        [FieldOffset(0)]
        public long RingFull;

        [FieldOffset(8)]
        public long ReleasedRefcnt;
    }
}
