using System.Numerics;
using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace PageFrag.Pages;

/// <summary>
/// The page allocator: pinned arenas carved into 4 KiB pages by a buddy allocator (orders 0 to
/// log2(arena pages)), with per-CPU lists for the orders up to 3, a memory limit, an emergency reserve
/// and fault injection. This is the layer the fragment cache and the page pool take their pages from.
/// </summary>
/// <remarks>
/// <para>Thread safety: every member is safe to call from any thread. Allocation and release of orders
/// 0–3 go through a per-CPU list (one small lock per CPU, found with
/// <see cref="Thread.GetCurrentProcessorId"/>) that is refilled from and drained to the buddy lists in
/// batches; the buddy lists have one lock. Freeing never allocates.</para>
/// <para>Accounting: at any quiescent point, pages in use + pages on per-CPU lists + pages on the buddy
/// free lists = pages in arenas (<see cref="PageAllocatorStats"/>).</para>
/// <para>Page contents are not cleared, as with the kernel's allocator without __GFP_ZERO.</para>
/// </remarks>
public sealed partial class PageAllocator : IDisposable
{
    private static readonly Lazy<PageAllocator> s_shared = new(() => new PageAllocator(null, isShared: true));

    private readonly Lock _buddyLock = new();
    private readonly PerCpuPages[] _perCpu;
    private readonly TransferStack _transfer = new(Math.Max(1, Environment.ProcessorCount));
    private readonly Lock _recyclersLock = new();

    // The fragment caches' recycle slots, a list linked through them under _recyclersLock (a cache registers once and
    // leaves once, in constant time): drained with the per-CPU lists and counted in CachedPages.
    private PageRecycler? _recyclers;
    private int _recyclerCount;

    // How many of its slots each cache may park in: RecycleBudget shared out among the registered caches (written under
    // _recyclersLock when one registers or leaves, read with a plain load by every park: a hint, not a count).
    private int _recycleLimit = PageRecycler.Capacity;
    private readonly int _recycleBudget = PageRecycler.Capacity * Math.Max(1, Environment.ProcessorCount);
    private readonly long _maxPages;
    private readonly long _reservePages;
    private readonly int _maxArenas;
    private readonly int _arenaSize;
    private readonly bool _isShared;
    private Arena[] _arenas = [];
    private FaultInjection? _faultInjection;
    private int _nextArenaId;
    private volatile bool _disposed;
    private readonly bool _constructed;

    // Pages handed out and blocks allocated. With a MaxBytes limit, _pagesInUse is one exact count that every charge
    // decides on with a compare-and-swap. Without one (the default) nothing needs an exact count at the moment of a
    // charge, so each CPU counts in its own padded slot of _counters and readers add the slots up: a page that is
    // allocated on one core and released on the other no longer bounces a shared counter line between them (three
    // contended atomic operations per page before, a third of the cost of a 2 KiB fragment's page).
    private readonly bool _limited;
    private readonly StripedCounters[] _counters;
    private long _pagesInUse;
    private long _failures;
    private long _pfmemallocAllocations;
    private long _arenasTrimmed;

    /// <summary>
    /// The process-wide allocator with default options (no limit), used by
    /// <see cref="Frag.PageFragCache.ForCurrentThread"/> and by anything created without an allocator.
    /// </summary>
    public static PageAllocator Shared => s_shared.Value;

    /// <summary>Creates an allocator. No memory is taken until the first allocation.</summary>
    /// <param name="options">Settings, or null for the defaults.</param>
    /// <exception cref="ArgumentOutOfRangeException">An option is out of its documented range.</exception>
    public PageAllocator(PageAllocatorOptions? options = null) : this(options, isShared: false)
    {
    }

    private PageAllocator(PageAllocatorOptions? options, bool isShared)
    {
        options ??= new PageAllocatorOptions();
        options.Validate();
        Options = options;
        _isShared = isShared;
        _arenaSize = options.ArenaSize;
        _faultInjection = options.FaultInjection;
        DetectMisuse = options.DetectMisuse;
        int arenaPages = _arenaSize >> PageConstants.PageShift;
        if (options.MaxBytes == long.MaxValue)
        {
            _maxArenas = int.MaxValue;
            _maxPages = long.MaxValue / 2;
            _reservePages = 0;
        }
        else
        {
            // MaxBytes / ArenaSize * arenaPages <= MaxBytes / 4096: no overflow. The arena count is capped at
            // int.MaxValue (more than any machine holds); the page limit is not, so that it matches the
            // effective limit the reserve was validated against.
            long arenas = options.MaxBytes / _arenaSize;
            _maxArenas = (int)Math.Min(int.MaxValue, arenas);
            _maxPages = arenas * arenaPages;
            _reservePages = options.ReserveBytes >> PageConstants.PageShift;
        }

        MaxOrder = BitOperations.Log2((uint)arenaPages);
        _limited = options.MaxBytes != long.MaxValue;
        _counters = new StripedCounters[Math.Max(1, Environment.ProcessorCount)];
        _perCpu = new PerCpuPages[Math.Max(1, Environment.ProcessorCount)];
        for (int i = 0; i < _perCpu.Length; i++)
        {
            _perCpu[i] = new PerCpuPages();
        }

        // Last: the finalizer of an allocator whose constructor threw (bad options) has nothing to release.
        _constructed = true;
    }

    /// <summary>The options this allocator was created with.</summary>
    public PageAllocatorOptions Options { get; }

    /// <summary>The highest order a block can have: log2(ArenaSize / 4096).</summary>
    public int MaxOrder { get; }

    /// <summary>Whether the detection mode is on (see <see cref="PageAllocatorOptions.DetectMisuse"/>).</summary>
    public bool DetectMisuse { get; }

    /// <summary>
    /// The fault injection in force; may be swapped at run time (for example set to null to let memory
    /// "come back" in a recovery test).
    /// </summary>
    public FaultInjection? FaultInjection
    {
        get => Volatile.Read(ref _faultInjection);
        set => Volatile.Write(ref _faultInjection, value);
    }

    /// <summary>
    /// Allocates a block of 2^<paramref name="order"/> pages with a reference count of 1.
    /// </summary>
    /// <param name="order">0 to <see cref="MaxOrder"/>.</param>
    /// <param name="flags">What the allocation may do to succeed.</param>
    /// <param name="page">The block, or an empty <see cref="Page"/> on failure.</param>
    /// <returns>False when the memory limit, the reserve watermark, fragmentation (for high orders) or
    /// fault injection prevents the allocation; nothing is changed then.</returns>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="order"/> is negative or above <see cref="MaxOrder"/>.</exception>
    /// <exception cref="ObjectDisposedException">The allocator was disposed.</exception>
    public bool TryAllocPages(int order, AllocFlags flags, out Page page)
    {
        if ((uint)order > (uint)MaxOrder)
        {
            ThrowHelper.ArgumentOutOfRange(nameof(order), order, $"order must be between 0 and {MaxOrder} (log2 of the arena's page count).");
        }

        if (TryAllocBlock(order, flags, PageFlags.Caller, out Arena? arena, out int index))
        {
            page = new Page(arena, index);
            return true;
        }

        page = default;
        return false;
    }

    /// <summary>
    /// Drops one reference to <paramref name="page"/> (put_page); the block returns to the allocator when
    /// the count reaches zero. Accepted: any reference of a block from <see cref="TryAllocPages"/>, and on a
    /// fragment cache's or page pool's block only the references callers added with <see cref="Page.AddRef"/>.
    /// </summary>
    /// <remarks>
    /// One compare-and-swap on the block's reference count and generation together decides: of two threads
    /// freeing the last reference at once, exactly one wins and the other gets
    /// <see cref="PageFragDoubleFreeException"/>, even when the winner's block was already handed out again.
    /// A refused call changes nothing.
    /// </remarks>
    /// <exception cref="ArgumentException">The page is empty or belongs to another allocator.</exception>
    /// <exception cref="PageFragDoubleFreeException">The block has no reference left (it is free, or parked on a
    /// per-CPU list), or the handle is stale (the block was freed and handed out again since).</exception>
    /// <exception cref="InvalidOperationException">The block belongs to a page pool or a fragment cache (for
    /// example a page found with <see cref="TryGetPage"/> from a fragment's address) and the caller holds no
    /// reference it took with <see cref="Page.AddRef"/>: the owner's references are returned through the
    /// owner, never here.</exception>
    public void FreePages(Page page)
    {
        Arena arena = CheckOwnPage(page);
        ref PageDescriptor d = ref arena.Pages[page.Index];
        if (TryDropCallerRef(ref d, page.Generation))
        {
            ReleaseBlock(arena, page.Index);
        }
    }

    /// <summary>The checks FreePages makes before touching the block.</summary>
    private Arena CheckOwnPage(Page page)
    {
        if (page.Arena is null)
        {
            ThrowHelper.Argument(nameof(page), "The page is empty: it came from a failed or default allocation.");
        }

        if (!page.Arena!.TryGetOwner(out PageAllocator? owner) || !ReferenceEquals(owner, this))
        {
            ThrowHelper.Argument(nameof(page), "The page belongs to another PageAllocator.");
        }

        return page.Arena;
    }

    /// <summary>
    /// Drops one reference of a caller's block whose handle has <paramref name="generation"/>; true when it
    /// was the last one (the caller then releases the block). Throws, changing nothing, for a stale handle,
    /// a block without references and a block that is not the caller's.
    /// </summary>
    private static bool TryDropCallerRef(ref PageDescriptor d, int generation)
    {
        ref long word = ref PageDescriptor.RefAndGeneration(ref d);
        long seen = Volatile.Read(ref word);
        bool tookCallerRef = false;
        try
        {
            while (true)
            {
                if ((int)seen < 0)
                {
                    // A page pool's release claim is pending (PageDescriptor.ClaimMark): wait for the generation it
                    // settles on rather than refuse this handle because of the claim's passing one.
                    seen = PageDescriptor.WaitUnclaimed(ref word);
                    continue;
                }

                if (!TryReadFlags(ref d, ref word, ref seen, out PageFlags flags))
                {
                    continue;
                }

                RefAndGeneration current = RefAndGeneration.From(seen);
                CheckRef(current, flags, generation, forAddRef: false);
                if (!tookCallerRef && (flags & PageFlags.Caller) == 0)
                {
                    // A fragment cache's or a page pool's block: only a reference a caller added may go.
                    TakeCallerRef(ref d);
                    tookCallerRef = true;
                }

                long next = new RefAndGeneration(current.RefCount - 1, generation).ToWord();
                long prev = Interlocked.CompareExchange(ref word, next, seen);
                if (prev == seen)
                {
                    tookCallerRef = false;
                    return current.RefCount == 1;
                }

                seen = prev;
            }
        }
        finally
        {
            if (tookCallerRef)
            {
                // Refused after all (stale handle, no reference left): the caller's reference stays counted.
                Interlocked.Increment(ref d.CallerRefs);
            }
        }
    }

    private static void TakeCallerRef(ref PageDescriptor d)
    {
        int seen = Volatile.Read(ref d.CallerRefs);
        while (true)
        {
            if (seen <= 0)
            {
                ThrowHelper.InvalidOperation("The page belongs to a page pool or a fragment cache: return it through its owner (PagePool.PutPage, PageFragCache.Free), not through the page allocator. FreePages drops on such a page only a reference taken with Page.AddRef.");
            }

            int prev = Interlocked.CompareExchange(ref d.CallerRefs, seen - 1, seen);
            if (prev == seen)
            {
                return;
            }

            seen = prev;
        }
    }

    /// <summary>
    /// Takes one more reference on a block whose handle has <paramref name="generation"/> (get_page), with the
    /// same checks as <see cref="FreePages"/>. On a fragment cache's or page pool's block the reference is
    /// counted as the caller's, so that FreePages may later drop it.
    /// </summary>
    internal static void AddCallerRef(ref PageDescriptor d, int generation)
    {
        ref long word = ref PageDescriptor.RefAndGeneration(ref d);
        long seen = Volatile.Read(ref word);
        while (true)
        {
            if ((int)seen < 0)
            {
                seen = PageDescriptor.WaitUnclaimed(ref word);
                continue;
            }

            if (!TryReadFlags(ref d, ref word, ref seen, out PageFlags flags))
            {
                continue;
            }

            RefAndGeneration current = RefAndGeneration.From(seen);
            CheckRef(current, flags, generation, forAddRef: true);
            if (current.RefCount == int.MaxValue)
            {
                ThrowHelper.InvalidOperation("Cannot take a reference: the page already has int.MaxValue references.");
            }

            long next = new RefAndGeneration(current.RefCount + 1, generation).ToWord();
            long prev = Interlocked.CompareExchange(ref word, next, seen);
            if (prev == seen)
            {
                if ((flags & PageFlags.Caller) == 0)
                {
                    Interlocked.Increment(ref d.CallerRefs);
                }

                return;
            }

            seen = prev;
        }
    }

    /// <summary>
    /// Reads the block's flags as they were when the count and generation were <paramref name="seen"/>: false
    /// (with <paramref name="seen"/> refreshed) when the word changed meanwhile, and the caller reads again.
    /// </summary>
    /// <remarks>
    /// Flags change only after the word does (a release drops the count to zero before clearing them; a
    /// hand-out sets them before bumping the generation and publishing the count), so flags read between two
    /// equal reads of the word belong to that word's allocation. Both reads are acquires, so on weakly ordered
    /// CPUs the flags read cannot move past the second read of the word.
    /// </remarks>
    private static bool TryReadFlags(ref PageDescriptor d, ref long word, ref long seen, out PageFlags flags)
    {
        flags = (PageFlags)Volatile.Read(ref Unsafe.As<PageFlags, byte>(ref d.Flags));
        long again = Volatile.Read(ref word);
        if (again == seen)
        {
            return true;
        }

        seen = again;
        return false;
    }

    private static void CheckRef(RefAndGeneration current, PageFlags flags, int generation, bool forAddRef)
    {
        if (current.Generation != generation)
        {
            if (forAddRef)
            {
                ThrowHelper.InvalidOperation("Cannot take a reference through a stale handle: the block was freed and handed out again since.");
            }

            ThrowHelper.DoubleFree("The page handle is stale: the block was freed and handed out again since, so this call would act on another owner's reference.");
        }

        if (current.RefCount <= 0 || (flags & PageFlags.Head) == 0)
        {
            if (forAddRef)
            {
                ThrowHelper.InvalidOperation("Cannot take a reference on a page that has none: it was already freed.");
            }

            ThrowHelper.DoubleFree("The page is not allocated: it was already returned to the allocator.");
        }
    }

    /// <summary>
    /// Finds the block that contains <paramref name="address"/> in any allocator of the process
    /// (virt_to_head_page). Constant time, lock-free.
    /// </summary>
    /// <returns>False when no arena owns the address.</returns>
    public static bool TryGetPage(nint address, out Page page)
    {
        Arena? arena = ArenaRegistry.Find(address);
        if (arena is null)
        {
            page = default;
            return false;
        }

        int index = (int)((address - arena.BaseAddress) >> PageConstants.PageShift);
        page = new Page(arena, arena.Pages[index].HeadIndex);
        return true;
    }

    /// <summary>
    /// Gives arenas whose pages are all free back to the garbage collector, after moving the pages
    /// parked on per-CPU lists back to the buddy lists.
    /// </summary>
    /// <returns>The number of arenas released.</returns>
    public int Trim() => Trim(idleOnly: false);

    /// <summary>
    /// Gives entirely free arenas back to the garbage collector, after moving the pages parked on per-CPU
    /// lists back to the buddy lists. With <paramref name="idleOnly"/>, an arena is released only if no
    /// block was taken from it since the previous trim (of either kind); every trim clears that mark, so an
    /// arena unused for one whole interval between two idle trims goes at the second. That is the eviction
    /// a periodic timer runs: an arena that was free only during a short lull is kept, because a released
    /// arena's pinned array stays in the process until a full garbage collection, and the next burst
    /// would allocate a new one beside it. Without it, every entirely free arena is released now. On Linux
    /// the physical memory of every released arena (pages and fragment states) is given back to the operating
    /// system at once (<see cref="BytesDiscarded"/> counts it), so the array left for the collector costs
    /// address space and committed heap but no resident memory.
    /// </summary>
    /// <param name="idleOnly">Release only arenas that served no block since the previous trim.</param>
    /// <returns>The number of arenas released.</returns>
    public int Trim(bool idleOnly)
    {
        DrainPerCpuLists();
        List<Arena>? released = null;
        lock (_buddyLock)
        {
            if (_arenas.Length == 0)
            {
                return 0;
            }

            var keep = new List<Arena>(_arenas.Length);
            foreach (Arena arena in _arenas)
            {
                bool used = arena.UsedSinceTrim;
                arena.UsedSinceTrim = false;
                if (arena.IsEntirelyFree && !(idleOnly && used))
                {
                    ArenaRegistry.Unregister(arena);
                    (released ??= []).Add(arena);
                }
                else
                {
                    keep.Add(arena);
                }
            }

            _arenas = keep.ToArray();
            _arenasTrimmed += released?.Count ?? 0;
        }

        if (released is null)
        {
            return 0;
        }

        // A released arena's pinned arrays stay in the process until a full collection finds them, resident
        // wherever they were touched. No one can reach its pages any more (every page was free, and it left the
        // arena list and the registry under the lock), so their physical memory goes back to the operating
        // system now (Linux; a no-op elsewhere): the garbage collector never reads a byte array's contents.
        foreach (Arena arena in released)
        {
            DiscardArena(arena);
        }

        return released.Count;
    }

    /// <summary>
    /// Moves every page parked on the per-CPU lists, and in the fragment caches' recycle slots, back to the buddy
    /// lists (drain_all_pages).
    /// </summary>
    public void DrainPerCpuLists()
    {
        // Every wait here keeps an interrupt for the thread's next blocking call (LockWait): thrown half-way, it would
        // end a Dispose that already dropped its arenas with blocks still on the lists (its second call returns at
        // once), and a Trim or an allocation's last resort with the lists half drained.
        bool interrupted = false;

        // First the fragment caches' recycle slots: what they hold goes to the per-CPU lists, drained next. Under the
        // list's lock (then a per-CPU list's lock and the buddy lock, the only order these locks are taken in).
        LockWait.EnterKeepingInterrupt(_recyclersLock, ref interrupted);
        try
        {
            for (PageRecycler? r = _recyclers; r is not null; r = r.NextRegistered)
            {
                DrainRecycler(r);
            }
        }
        finally
        {
            _recyclersLock.Exit();
        }

        foreach (PerCpuPages pcp in _perCpu)
        {
            LockWait.EnterKeepingInterrupt(pcp.Lock, ref interrupted);
            try
            {
                LockWait.EnterKeepingInterrupt(_buddyLock, ref interrupted);
                try
                {
                    for (int order = 0; order <= PerCpuPages.MaxOrder; order++)
                    {
                        pcp.DrainTo(order, pcp.Counts[order], this);
                    }
                }
                finally
                {
                    _buddyLock.Exit();
                }
            }
            finally
            {
                pcp.Lock.Exit();
            }
        }

        // Last: a list spills into the transfer stack under its own lock, so once every list was drained
        // after Dispose set _disposed (each list checks it under its lock), nothing can arrive here any more.
        _transfer.DrainTo(this, ref interrupted);
        Arena.KeepInterrupt(interrupted);
    }

    /// <summary>A snapshot of the allocator's counters.</summary>
    public PageAllocatorStats GetStats()
    {
        long cached = ((long)_transfer.Count << TransferStack.Order) + ((long)RecycledBlocks << PageRecycler.Order);
        foreach (PerCpuPages pcp in _perCpu)
        {
            lock (pcp.Lock)
            {
                for (int order = 0; order <= PerCpuPages.MaxOrder; order++)
                {
                    cached += (long)pcp.Counts[order] << order;
                }
            }
        }

        lock (_buddyLock)
        {
            var perOrder = new int[MaxOrder + 1];
            long free = 0;
            long total = 0;
            var perArena = new int[_arenas.Length];
            for (int a = 0; a < _arenas.Length; a++)
            {
                Arena arena = _arenas[a];
                free += arena.FreePages;
                total += arena.PageCount;
                perArena[a] = arena.PageCount;
                for (int o = 0; o <= arena.MaxOrder; o++)
                {
                    perOrder[o] += arena.CountFreeBlocks(o);
                }
            }

            return new PageAllocatorStats
            {
                Arenas = _arenas.Length,
                PagesPerArena = perArena,
                TotalPages = total,
                FreePages = free,
                CachedPages = cached,
                PagesInUse = PagesInUse,
                FreeBlocksPerOrder = perOrder,
                Allocations = SumAllocations(),
                Failures = Volatile.Read(ref _failures),
                PfMemallocAllocations = Volatile.Read(ref _pfmemallocAllocations),
                ArenasTrimmed = _arenasTrimmed,
                MaxPages = Options.MaxBytes == long.MaxValue ? -1 : _maxPages,
                ReservePages = _reservePages,
            };
        }
    }

    /// <summary>Order-3 blocks on the transfer stack (a test hook).</summary>
    internal int TransferStackBlocks => _transfer.Count;

    /// <summary>The most order-3 blocks the transfer stack holds: one batch per CPU, at most 32 (a test hook).</summary>
    internal int TransferStackCapacity => _transfer.Capacity;

    /// <summary>Above this many free blocks of <paramref name="order"/> (0 to 3) a per-CPU list drains a batch (a test hook).</summary>
    internal static int PerCpuHighMark(int order) => PerCpuPages.High(order);

    /// <summary>Pages currently handed out (not free and not on a per-CPU list).</summary>
    public long PagesInUse
    {
        get
        {
            if (_limited)
            {
                return Volatile.Read(ref _pagesInUse);
            }

            // Both sums only grow: every slot's given-back count is read before any slot's charged count, so the
            // difference is never below the pages held when the first read began (a page allocated on one core and
            // freed on another while the slots are read must not show as a free without its allocation).
            long uncharged = 0;
            foreach (ref StripedCounters c in _counters.AsSpan())
            {
                uncharged += Volatile.Read(ref c.PagesUncharged);
            }

            long charged = 0;
            foreach (ref StripedCounters c in _counters.AsSpan())
            {
                charged += Volatile.Read(ref c.PagesCharged);
            }

            return charged - uncharged;
        }
    }

    private long SumAllocations()
    {
        long sum = 0;
        foreach (ref StripedCounters c in _counters.AsSpan())
        {
            sum += Volatile.Read(ref c.Allocations);
        }

        return sum;
    }

    /// <summary>Gives back <paramref name="pages"/> charged by <see cref="TryCharge"/>.</summary>
    private void Uncharge(long pages)
    {
        if (_limited)
        {
            Interlocked.Add(ref _pagesInUse, -pages);
        }
        else
        {
            Interlocked.Add(ref _counters[CounterSlot()].PagesUncharged, pages);
        }
    }

    // The processor id is a hint: a thread may move, or two threads share one, between the read and the add, so the
    // adds stay atomic; only the sum over the slots means anything, and it is exact whenever no charge is under way.
    private int CounterSlot() => (int)((uint)Thread.GetCurrentProcessorId() % (uint)_counters.Length);

    /// <summary>
    /// Unregisters and drops every arena, and forgets the free blocks parked on the per-CPU lists. Pages
    /// still in use stay valid memory for whoever holds them (the arrays are garbage collected only once
    /// unreferenced), but their addresses no longer resolve and allocations throw <see cref="ObjectDisposedException"/>.
    /// </summary>
    /// <exception cref="InvalidOperationException">Called on <see cref="Shared"/>.</exception>
    public void Dispose()
    {
        if (_isShared)
        {
            ThrowHelper.InvalidOperation("PageAllocator.Shared cannot be disposed.");
        }

        ReleaseArenas();
        GC.SuppressFinalize(this);
    }

    /// <summary>
    /// The safety net of a private allocator dropped without <see cref="Dispose"/>: the arena registry keeps arenas
    /// (for lookups by address) but not their allocator, so the allocator can be collected; this unregisters its
    /// arenas, which the GC then takes back once no page handle references them.
    /// </summary>
    ~PageAllocator()
    {
        if (_constructed && !_isShared)
        {
            ReleaseArenas();
        }
    }

    private void ReleaseArenas()
    {
        lock (_buddyLock)
        {
            if (_disposed)
            {
                return;
            }

            _disposed = true;
            foreach (Arena arena in _arenas)
            {
                ArenaRegistry.Unregister(arena);
            }

            _arenas = [];
        }

        // Blocks parked on the per-CPU lists belong to the dropped arenas: forget them too, so that the stats
        // add up and the lists do not keep the arrays reachable. GiveToBuddy ignores them now that _disposed is set.
        DrainPerCpuLists();
    }

    // ---- internal block interface used by the fragment cache and the page pool ----

    /// <summary>Allocates a block and sets its descriptor up (refcount 1, head/tail, generation).</summary>
    /// <remarks>For the fragment cache and the page pool: the block does not carry <see cref="PageFlags.Caller"/>,
    /// so <see cref="FreePages"/> refuses it; release it with <see cref="PutBlockRef"/> or <see cref="ReleaseBlock"/>.</remarks>
    internal bool TryAllocBlock(int order, AllocFlags flags, [System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out Arena? arena, out int index) =>
        TryAllocBlock(order, flags, PageFlags.None, out arena, out index);

    private bool TryAllocBlock(int order, AllocFlags flags, PageFlags kind, [System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out Arena? arena, out int index)
    {
        if (_disposed)
        {
            ThrowHelper.ObjectDisposed(nameof(PageAllocator));
        }

        FaultInjection? faults = _faultInjection;
        int pages = 1 << order;
        if ((faults is not null && faults.ShouldFail(order)) || !TryCharge(pages, flags, out bool pfmemalloc))
        {
            Interlocked.Increment(ref _failures);
            arena = null;
            index = -1;
            return false;
        }

        bool opportunistic = (flags & AllocFlags.Opportunistic) != 0;
        bool ok;
        try
        {
            ok = order <= PerCpuPages.MaxOrder
                ? TryTakePerCpu(order, !opportunistic, out arena, out index)
                : TryTakeBuddy(order, !opportunistic, out arena, out index);
            if (!ok && !opportunistic)
            {
                // Before failing, pull back what the per-CPU lists hoard: it may merge into the block we need.
                DrainPerCpuLists();
                ok = TryTakeBuddy(order, mayGrow: true, out arena, out index);
            }
        }
        catch
        {
            // A lock's wait threw (Thread.Interrupt, or no memory for the wait) before any block was taken: the
            // charge goes back, or the pages would count as in use for ever (and, under a limit, be lost to it).
            Uncharge(pages);
            throw;
        }

        if (!ok)
        {
            Uncharge(pages);
            Interlocked.Increment(ref _failures);
            arena = null;
            index = -1;
            return false;
        }

        ref PageDescriptor d = ref arena!.Pages[index];
        d.Order = (byte)order;
        d.Flags = (pfmemalloc ? PageFlags.Head | PageFlags.PfMemalloc : PageFlags.Head) | kind;
        d.HeadIndex = index;
        d.FragmentCachePage = false;
        d.Pool = null;
        d.PpRefCount = 0;
        d.DmaAddress = 0;
        d.CallerRefs = 0;
        d.CacheHeld = 0;

        // The new generation is above every generation any block covering these pages had (ReleaseBlock leaves
        // each page of a block at the block's last one): a handle's generation is checked against the head of its
        // page as it is now, which after a split or merge is another descriptor than the handle's own head, and
        // must never hold the handle's generation by chance.
        int generation = d.Generation;
        for (int i = 1; i < pages; i++)
        {
            generation = Math.Max(generation, arena.Pages[index + i].Generation);
        }

        // Every tail starts at the block's generation too (the lines are in this core's cache from the pass above),
        // so that ReleaseBlock finds them equal to the head's last generation unless the head moved on meanwhile,
        // and leaves them alone: a block allocated on one core and released on another then writes no tail there.
        generation++;
        for (int i = 1; i < pages; i++)
        {
            ref PageDescriptor t = ref arena.Pages[index + i];
            t.HeadIndex = index;
            t.Flags = PageFlags.Tail;
            t.Generation = generation;
        }

        d.Generation = generation;

        Volatile.Write(ref d.RefCount, 1);
        Interlocked.Increment(ref _counters[CounterSlot()].Allocations);
        if (pfmemalloc)
        {
            Interlocked.Increment(ref _pfmemallocAllocations);
        }

        return true;
    }

    /// <summary>Drops one reference on a block head; releases the block at zero.</summary>
    internal static void PutBlockRef(Arena arena, int head)
    {
        ref PageDescriptor d = ref arena.Pages[head];
        if ((d.Flags & PageFlags.Head) == 0)
        {
            ThrowHelper.DoubleFree("The page is not allocated: it was already returned to the allocator.");
        }

        int left = Interlocked.Decrement(ref d.RefCount);
        if (left <= 0)
        {
            if (left < 0)
            {
                Interlocked.Increment(ref d.RefCount);
                ThrowHelper.DoubleFree("The page's reference count would drop below zero: it was freed more often than referenced.");
            }

            // An allocator dropped without Dispose and collected has unregistered its arenas: the block is the GC's.
            if (arena.TryGetOwner(out PageAllocator? owner))
            {
                owner.ReleaseBlock(arena, head);
            }
        }
    }

    /// <summary>
    /// <see cref="PutBlockRef"/> for a page pool's block (its own reference, given back when the page leaves the pool):
    /// one compare-and-swap of the count and generation word that waits while a release claim of a page pool is pending
    /// on it (<see cref="PageDescriptor.ClaimMark"/>). The claimer clears its mark with a plain store, so no other thread
    /// may change the word meanwhile, as an atomic decrement would.
    /// </summary>
    internal static void PutPoolBlockRef(Arena arena, int head)
    {
        ref PageDescriptor d = ref arena.Pages[head];
        ref long word = ref PageDescriptor.RefAndGeneration(ref d);
        long seen = Volatile.Read(ref word);
        while (true)
        {
            if ((int)seen < 0)
            {
                seen = PageDescriptor.WaitUnclaimed(ref word);
                continue;
            }

            if ((int)seen == 0 || (d.Flags & PageFlags.Head) == 0)
            {
                ThrowHelper.DoubleFree("The page is not allocated: it was already returned to the allocator.");
            }

            long prev = Interlocked.CompareExchange(ref word, seen - 1, seen);
            if (prev == seen)
            {
                break;
            }

            seen = prev;
        }

        if ((int)seen == 1 && arena.TryGetOwner(out PageAllocator? owner))
        {
            // An allocator dropped without Dispose and collected has unregistered its arenas: the block is the GC's.
            owner.ReleaseBlock(arena, head);
        }
    }

    /// <summary>
    /// Returns a block whose reference count reached zero: a fragment cache's order-3 block to the recycle slots of
    /// the cache that carved it when there is room (see <see cref="PageRecycler"/>), else to the per-CPU list or the
    /// buddy lists.
    /// </summary>
    internal void ReleaseBlock(Arena arena, int head)
    {
        ref PageDescriptor d = ref arena.Pages[head];
        Debug.Assert(Volatile.Read(ref d.RefCount) == 0, "only a block without references is released");
        Uncharge(1L << d.Order);
        if (d.FragmentCachePage && d.Order == PageRecycler.Order && (d.Flags & PageFlags.PfMemalloc) == 0 &&
            arena.Recyclers[head >> PageRecycler.Order] is PageRecycler recycler && !_disposed &&
            TryPark(recycler, _recycleLimit, arena, head, ref d))
        {
            // Read after the slot's swap (a full fence), as the close is in TryPark: a Dispose that came before the
            // swap is seen here (its drain may have run already: take the block back), or its drain, which takes a
            // lock after setting the flag, sees the block. No address outlives the arenas Dispose drops (it could
            // name another allocator's block once their memory is reused).
            if (!_disposed || !recycler.TryTakeBack(arena.BaseAddress + ((nint)head << PageConstants.PageShift)))
            {
                return;
            }
        }

        FreeUncharged(arena, head);
    }

    /// <summary>
    /// Parks a block whose last reference the caller dropped in its cache's recycle slots. Writes only the head
    /// descriptor (the caller's last decrement brought its line here): a generation one up, so that every handle of
    /// the block's last use is stale, and <see cref="PageFlags.PerCpu"/>, so that every free path refuses it as a free
    /// block; the slot's swap publishes both. False when the slots are full or closed: the caller frees the block.
    /// </summary>
    private static bool TryPark(PageRecycler recycler, int limit, Arena arena, int head, ref PageDescriptor d)
    {
        int slot = recycler.FindEmpty(limit);
        if (slot < 0 || recycler.IsClosed)
        {
            return false;
        }

        d.Generation++;
        d.Flags = PageFlags.PerCpu;
        nint address = arena.BaseAddress + ((nint)head << PageConstants.PageShift);
        if (!recycler.TryPut(slot, address, limit))
        {
            return false;
        }

        // Read after the swap (a full fence): a close that came before it is seen here, or the closer's emptying,
        // which starts after its own fence, sees the block. Whoever takes the block out frees it.
        return !recycler.IsClosed || !recycler.TryTakeBack(address);
    }

    /// <summary>
    /// Takes a block parked in <paramref name="recycler"/> for its cache's refill: charged like an allocation and set
    /// up as a head with one reference in a generation one above the parked one, its tails untouched (they still name it and hold no higher generation).
    /// False when none is parked, the charge fails, faults are injected (every refill then goes through
    /// <see cref="TryAllocBlock(int, AllocFlags, out Arena?, out int)"/> and its fault rules) or the allocator is
    /// disposed.
    /// </summary>
    internal bool TryTakeRecycled(PageRecycler recycler, [System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out Arena? arena, out int index)
    {
        arena = null;
        index = -1;
        if (_disposed || _faultInjection is not null)
        {
            return false;
        }

        nint address = recycler.TryTake();
        if (address == 0)
        {
            return false;
        }

        Arena? owner = ArenaRegistry.Find(address);
        if (owner is null)
        {
            // Only a disposed allocator unregisters an arena with a block that is not on its buddy lists.
            return false;
        }

        int head = (int)((address - owner.BaseAddress) >> PageConstants.PageShift);
        ref PageDescriptor d = ref owner.Pages[head];
        Debug.Assert(d.Flags == PageFlags.PerCpu && d.Order == PageRecycler.Order && Volatile.Read(ref d.RefCount) == 0,
            "a parked block is free, order 3 and flagged as parked");
        if (!TryCharge(1 << PageRecycler.Order, AllocFlags.Opportunistic, out _))
        {
            // The limit is reached: the page goes to the lists, and the refill's next try counts the failure.
            FreeUncharged(owner, head);
            return false;
        }

        d.Flags = PageFlags.Head;
        d.FragmentCachePage = false;
        d.CallerRefs = 0;
        d.CacheHeld = 0;

        // A generation above the parked one, as every hand-out raises it (flags first, then the generation, then the
        // count): a page handle taken by address while the block sat parked is stale for this use, as one taken while
        // a block is free on the buddy lists is once it is handed out again.
        d.Generation++;
        Volatile.Write(ref d.RefCount, 1);
        Interlocked.Increment(ref _counters[CounterSlot()].Allocations);
        recycler.Taken++;

        // The arena served a block, as if from its free lists: an idle-only trim keeps it (a page that cycles
        // through the slots all interval long must not let its arena look idle). Written only when it changes: the
        // arena's other fields are read by every thread.
        if (!owner.UsedSinceTrim)
        {
            owner.UsedSinceTrim = true;
        }
        arena = owner;
        index = head;
        return true;
    }

    /// <summary>
    /// Blocks the recycle slots of all this allocator's caches may keep parked, shared out among them (at least one
    /// slot each): eight per CPU, 256 KiB of order-3 blocks per CPU.
    /// </summary>
    internal int RecycleBudget => _recycleBudget;

    /// <summary>How many of its slots each cache parks in now: <see cref="RecycleBudget"/> over the open caches, 1 to <see cref="PageRecycler.Capacity"/>.</summary>
    internal int RecycleLimit => Volatile.Read(ref _recycleLimit);

    /// <summary>Creates recycle slots for a fragment cache, drained and counted with the per-CPU lists until closed.</summary>
    internal PageRecycler CreateRecycler()
    {
        var recycler = new PageRecycler();
        lock (_recyclersLock)
        {
            recycler.NextRegistered = _recyclers;
            if (_recyclers is not null)
            {
                _recyclers.PrevRegistered = recycler;
            }

            _recyclers = recycler;
            recycler.Registered = true;
            SetRecycleLimitLocked(_recyclerCount + 1);
        }

        return recycler;
    }

    /// <summary>Counts the open caches and shares the budget out again (caller holds <c>_recyclersLock</c>).</summary>
    private void SetRecycleLimitLocked(int caches)
    {
        _recyclerCount = caches;
        Volatile.Write(ref _recycleLimit, Math.Clamp(_recycleBudget / Math.Max(1, caches), 1, PageRecycler.Capacity));
    }

    /// <summary>Frees every block parked in <paramref name="recycler"/> (any thread; a refill may take blocks at the same time).</summary>
    internal void DrainRecycler(PageRecycler recycler)
    {
        nint address;
        while ((address = recycler.TryTake()) != 0)
        {
            // Only a block of this allocator's arenas: an address whose arena is gone (a disposed allocator) may
            // name another allocator's block once the memory is reused.
            if (ArenaRegistry.Find(address) is Arena arena && arena.TryGetOwner(out PageAllocator? owner) && ReferenceEquals(owner, this))
            {
                FreeUncharged(arena, (int)((address - arena.BaseAddress) >> PageConstants.PageShift));
            }
        }
    }

    /// <summary>The cache is gone (disposed or collected): close its slots, free what they hold, forget them.</summary>
    internal void CloseRecycler(PageRecycler recycler)
    {
        recycler.Close();
        DrainRecycler(recycler);

        // The slots are closed and empty: thrown here, an interrupt would leave them on the list, counted as an open
        // cache (every other cache's share of the budget stays smaller) until the cache's finalizer, and its Dispose
        // would throw. Kept for the thread's next blocking call instead.
        bool interrupted = false;
        LockWait.EnterKeepingInterrupt(_recyclersLock, ref interrupted);
        try
        {
            if (recycler.Registered)
            {
                if (recycler.PrevRegistered is PageRecycler prev)
                {
                    prev.NextRegistered = recycler.NextRegistered;
                }
                else
                {
                    _recyclers = recycler.NextRegistered;
                }

                if (recycler.NextRegistered is PageRecycler next)
                {
                    next.PrevRegistered = recycler.PrevRegistered;
                }

                recycler.NextRegistered = null;
                recycler.PrevRegistered = null;
                recycler.Registered = false;
                SetRecycleLimitLocked(_recyclerCount - 1);
            }
        }
        finally
        {
            _recyclersLock.Exit();
            Arena.KeepInterrupt(interrupted);
        }
    }

    /// <summary>Blocks parked in recycle slots (a test hook).</summary>
    internal int RecycledBlocks
    {
        get
        {
            int n = 0;
            lock (_recyclersLock)
            {
                for (PageRecycler? r = _recyclers; r is not null; r = r.NextRegistered)
                {
                    n += r.Count;
                }
            }

            return n;
        }
    }

    /// <summary>Returns an uncharged block without references to the per-CPU list or the buddy lists.</summary>
    private void FreeUncharged(Arena arena, int head)
    {
        ref PageDescriptor d = ref arena.Pages[head];
        int order = d.Order;
        d.Flags = PageFlags.None;
        d.Pool = null;

        // Every page of the block keeps the block's last generation, so that a block later taken over any of them
        // gets a higher one (see TryAllocBlock): no stale handle of this block matches a later head.
        // All tails hold one generation: TryAllocBlock sets them to the block's, and only this loop changes them. So
        // the first tail tells whether the head moved on since (a fragment cache's reuse in place, a pool's
        // recycling); only then are the tails written.
        int generation = d.Generation;
        if (order > 0 && arena.Pages[head + 1].Generation != generation)
        {
            for (int i = 1; i < 1 << order; i++)
            {
                arena.Pages[head + i].Generation = generation;
            }
        }

        if (_disposed)
        {
            return;
        }

        // The block has no owner from here until it is on a list: a Thread.Interrupt while this thread waits for a
        // contended lock is kept for the thread's next blocking call instead of thrown, which would lose the block.
        bool interrupted = false;
        if (order <= PerCpuPages.MaxOrder)
        {
            PerCpuPages pcp = _perCpu[CurrentCpu()];
            LockWait.EnterKeepingInterrupt(pcp.Lock, ref interrupted);
            try
            {
                // Checked again under the list's lock: Dispose drains each list after setting _disposed.
                if (_disposed)
                {
                    return;
                }

                pcp.Push(order, arena, head);
                if (pcp.Counts[order] > PerCpuPages.High(order))
                {
                    // Order 3 (the fragment cache's page) first goes to the transfer stack, where another CPU's
                    // refill finds it without the buddy lock and without merging and splitting it again.
                    if (order != TransferStack.Order || !_transfer.TryPutBatch(pcp, ref interrupted))
                    {
                        LockWait.EnterKeepingInterrupt(_buddyLock, ref interrupted);
                        try
                        {
                            pcp.DrainTo(order, PerCpuPages.Batch(order), this);
                        }
                        finally
                        {
                            _buddyLock.Exit();
                        }
                    }
                }
            }
            finally
            {
                pcp.Lock.Exit();
                Arena.KeepInterrupt(interrupted);
            }
        }
        else
        {
            LockWait.EnterKeepingInterrupt(_buddyLock, ref interrupted);
            try
            {
                GiveToBuddy(arena, head, order);
            }
            finally
            {
                _buddyLock.Exit();
                Arena.KeepInterrupt(interrupted);
            }
        }
    }

    /// <summary>The locks a free of a block without references waits for (every per-CPU list's, then the buddy lock), for the tests that hold them.</summary>
    internal Lock[] FreeLocksForTests()
    {
        var locks = new Lock[_perCpu.Length + 1];
        for (int i = 0; i < _perCpu.Length; i++)
        {
            locks[i] = _perCpu[i].Lock;
        }

        locks[^1] = _buddyLock;
        return locks;
    }

    /// <summary>The caches whose recycle slots are on the list (a test hook).</summary>
    internal int OpenRecyclersForTests => Volatile.Read(ref _recyclerCount);

    /// <summary>The lock of the recycle slots' list (for the tests that hold it).</summary>
    internal Lock RecyclersLockForTests => _recyclersLock;

    /// <summary>The transfer stack's lock (for the tests that hold it).</summary>
    internal Lock TransferLockForTests => _transfer.LockForTests;

    private void GiveToBuddy(Arena arena, int head, int order)
    {
        // An arena dropped by Dispose is left to the garbage collector.
        if (!_disposed)
        {
            arena.Give(head, order);
        }
    }

    private bool TryCharge(int pages, AllocFlags flags, out bool pfmemalloc)
    {
        if (!_limited)
        {
            // No limit and no reserve: every charge succeeds, and the emergency reserve is never reached.
            Interlocked.Add(ref _counters[CounterSlot()].PagesCharged, pages);
            pfmemalloc = false;
            return true;
        }

        long watermark = _maxPages - _reservePages;
        long limit = (flags & AllocFlags.MayUseReserve) != 0 && (flags & AllocFlags.Opportunistic) == 0 ? _maxPages : watermark;
        long current = Volatile.Read(ref _pagesInUse);
        while (true)
        {
            long next = current + pages;
            if (next > limit)
            {
                PageFragEventSource.Log.LimitReached(limit * PageConstants.PageSize, current * PageConstants.PageSize, (long)pages * PageConstants.PageSize);
                pfmemalloc = false;
                return false;
            }

            long seen = Interlocked.CompareExchange(ref _pagesInUse, next, current);
            if (seen == current)
            {
                pfmemalloc = next > watermark;
                return true;
            }

            current = seen;
        }
    }

    private bool TryTakePerCpu(int order, bool mayGrow, out Arena? arena, out int index)
    {
        PerCpuPages pcp = _perCpu[CurrentCpu()];
        lock (pcp.Lock)
        {
            if (pcp.Counts[order] == 0 && (order != TransferStack.Order || !_transfer.TryTakeBatch(pcp)))
            {
                lock (_buddyLock)
                {
                    int batch = PerCpuPages.Batch(order);
                    for (int i = 0; i < batch; i++)
                    {
                        if (!TryTakeBuddyLocked(order, mayGrow && i == 0, out Arena? a, out int idx))
                        {
                            break;
                        }

                        pcp.Push(order, a!, idx);
                    }
                }
            }

            return pcp.TryPop(order, out arena, out index);
        }
    }

    private bool TryTakeBuddy(int order, bool mayGrow, out Arena? arena, out int index)
    {
        lock (_buddyLock)
        {
            return TryTakeBuddyLocked(order, mayGrow, out arena, out index);
        }
    }

    private bool TryTakeBuddyLocked(int order, bool mayGrow, out Arena? arena, out int index)
    {
        foreach (Arena a in _arenas)
        {
            if (a.FreePages >= 1 << order && order <= a.MaxOrder && a.TryTake(order, out index))
            {
                arena = a;
                return true;
            }
        }

        // An allocator without any arena is a machine that has not booted its memory yet: even an
        // opportunistic attempt may create the first arena, or the fragment cache's first page would always
        // be order 0. Opportunistic attempts never add a second one.
        if ((mayGrow || _arenas.Length == 0) && TryGrowLocked() is Arena grown && grown.TryTake(order, out index))
        {
            arena = grown;
            return true;
        }

        arena = null;
        index = -1;
        return false;
    }

    /// <summary>Adds an arena if the limit allows. Caller holds the buddy lock.</summary>
    private Arena? TryGrowLocked()
    {
        if (_disposed || _arenas.Length >= _maxArenas)
        {
            return null;
        }

        Arena grown;
        try
        {
            grown = new Arena(this, _nextArenaId++, _arenaSize);
        }
        catch (OutOfMemoryException)
        {
            return null;
        }

        ArenaRegistry.Register(grown);
        _arenas = [.. _arenas, grown];
        return grown;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private int CurrentCpu() => (int)((uint)Thread.GetCurrentProcessorId() % (uint)_perCpu.Length);

    /// <summary>
    /// Free order-3 blocks between the per-CPU lists and the buddy lists (a transfer cache, as in tcmalloc):
    /// a CPU whose list is over its high mark puts a batch here, a CPU whose list is empty takes a batch from
    /// here before it goes to the buddy lists. When one thread frees the pages another allocates (a fragment
    /// cache's 32 KiB pages freed on a consumer thread), they cycle through here instead of through the buddy
    /// lock, the merges up to the arena's order and the splits back down. Bounded by one batch per per-CPU list
    /// (the lists are the caches it serves); beyond it batches go to the buddy lists as before. Blocks here count
    /// as cached pages and keep the PerCpu flag.
    /// </summary>
    private sealed class TransferStack
    {
        public const int Order = PageConstants.FragCacheMaxOrder;

        /// <summary>
        /// The most blocks it ever holds: 8 batches of 4, 1 MiB of order-3 blocks (what it held on every machine
        /// before session 9), reached with 8 CPUs.
        /// </summary>
        public const int MaxCapacity = 32;

        private readonly Lock _lock = new();
        private readonly Arena?[] _arenas;
        private readonly int[] _indexes;
        private int _count;

        /// <summary>
        /// One batch per per-CPU list, at most <see cref="MaxCapacity"/>: a list that spills a batch here is
        /// the one whose CPU frees what another CPU's list refills, so one batch in flight per list is enough
        /// to spare the buddy lock, and every block beyond it was free memory kept resident for no one (a 2-CPU
        /// Kestrel server's stack was full, 1 MiB, after its runs: bench/README.md "Session 9"; the kernel test
        /// took the same time with 8 blocks as with 32).
        /// </summary>
        public TransferStack(int lists)
        {
            int capacity = Math.Clamp(PerCpuPages.Batch(Order) * lists, PerCpuPages.Batch(Order), MaxCapacity);
            _arenas = new Arena?[capacity];
            _indexes = new int[capacity];
        }

        /// <summary>The most blocks this stack holds.</summary>
        public int Capacity => _arenas.Length;

        /// <summary>Blocks held; exact when read under the lock, a snapshot otherwise.</summary>
        public int Count => Volatile.Read(ref _count);

        /// <summary>The stack's lock (a test hook).</summary>
        public Lock LockForTests => _lock;

        /// <summary>
        /// Moves one batch from <paramref name="pcp"/> here; false when full. Caller holds the list's lock, on a free's
        /// path: an interrupt while waiting for this lock is noted in <paramref name="interrupted"/> (the free is done,
        /// its block is on the list, and must not throw).
        /// </summary>
        public bool TryPutBatch(PerCpuPages pcp, ref bool interrupted)
        {
            int batch = PerCpuPages.Batch(Order);
            LockWait.EnterKeepingInterrupt(_lock, ref interrupted);
            try
            {
                if (_count + batch > Capacity)
                {
                    return false;
                }

                for (int i = 0; i < batch && pcp.TryPop(Order, out Arena? arena, out int index); i++)
                {
                    arena!.Pages[index].Flags = PageFlags.PerCpu;
                    _arenas[_count] = arena;
                    _indexes[_count] = index;
                    _count++;
                }

                return true;
            }
            finally
            {
                _lock.Exit();
            }
        }

        /// <summary>Moves up to one batch from here to <paramref name="pcp"/>; false when empty. Caller holds the list's lock.</summary>
        public bool TryTakeBatch(PerCpuPages pcp)
        {
            if (Volatile.Read(ref _count) == 0)
            {
                return false;
            }

            int batch = PerCpuPages.Batch(Order);
            lock (_lock)
            {
                int moved = 0;
                for (; moved < batch && _count > 0; moved++)
                {
                    _count--;
                    Arena arena = _arenas[_count]!;
                    _arenas[_count] = null;
                    pcp.Push(Order, arena, _indexes[_count]);
                }

                return moved > 0;
            }
        }

        /// <summary>
        /// Gives every block back to the buddy lists (or forgets it once the allocator is disposed). An interrupt while
        /// waiting for a lock is noted in <paramref name="interrupted"/> (see <see cref="DrainPerCpuLists"/>).
        /// </summary>
        public void DrainTo(PageAllocator owner, ref bool interrupted)
        {
            LockWait.EnterKeepingInterrupt(_lock, ref interrupted);
            try
            {
                LockWait.EnterKeepingInterrupt(owner._buddyLock, ref interrupted);
                try
                {
                    while (_count > 0)
                    {
                        _count--;
                        Arena arena = _arenas[_count]!;
                        _arenas[_count] = null;
                        arena.Pages[_indexes[_count]].Flags = PageFlags.None;
                        owner.GiveToBuddy(arena, _indexes[_count], Order);
                    }
                }
                finally
                {
                    owner._buddyLock.Exit();
                }
            }
            finally
            {
                _lock.Exit();
            }
        }
    }

    /// <summary>One CPU's counters, alone on their cache line (64 bytes of padding before them, 40 after).</summary>
    [StructLayout(LayoutKind.Explicit, Size = 128)]
    private struct StripedCounters
    {
        // Pages charged and given back on this slot: both only grow, so that a reader can order its reads (see
        // PagesInUse).
        [FieldOffset(64)]
        public long PagesCharged;

        [FieldOffset(72)]
        public long Allocations;

        [FieldOffset(80)]
        public long PagesUncharged;
    }

    /// <summary>
    /// One CPU's stash of free blocks of orders 0–3 (the kernel's per_cpu_pages), refilled from and drained
    /// to the buddy lists in batches so that the shared lock is taken once per batch.
    /// </summary>
    private sealed class PerCpuPages
    {
        public const int MaxOrder = PageConstants.CostlyOrder;

        public readonly Lock Lock = new();
        public readonly int[] Counts = new int[MaxOrder + 1];
        private readonly Arena?[][] _arenas = new Arena?[MaxOrder + 1][];
        private readonly int[][] _indexes = new int[MaxOrder + 1][];

        public PerCpuPages()
        {
            for (int o = 0; o <= MaxOrder; o++)
            {
                _arenas[o] = new Arena?[High(o) + 1];
                _indexes[o] = new int[High(o) + 1];
            }
        }

        /// <summary>Blocks moved per refill or drain: 32 pages' worth for order 0, down to 4 blocks for order 3.</summary>
        public static int Batch(int order) => Math.Max(4, 32 >> order);

        /// <summary>
        /// Above this many blocks a list drains a batch back: three batches for orders 0 to 2, two for order 3, whose
        /// batches go to the transfer stack first (another CPU's refill takes them from there without the buddy
        /// lock), so a third batch on the list kept 128 KiB per CPU resident for nothing.
        /// </summary>
        public static int High(int order) => Batch(order) * (order == TransferStack.Order ? 2 : 3);

        public void Push(int order, Arena arena, int index)
        {
            int n = Counts[order];
            _arenas[order][n] = arena;
            _indexes[order][n] = index;
            arena.Pages[index].Flags = PageFlags.PerCpu;
            arena.Pages[index].Order = (byte)order;
            Counts[order] = n + 1;
        }

        public bool TryPop(int order, out Arena? arena, out int index)
        {
            int n = Counts[order];
            if (n == 0)
            {
                arena = null;
                index = -1;
                return false;
            }

            n--;
            arena = _arenas[order][n];
            index = _indexes[order][n];
            _arenas[order][n] = null;
            Counts[order] = n;
            arena!.Pages[index].Flags = PageFlags.None;
            return true;
        }

        /// <summary>Moves up to <paramref name="count"/> blocks to the buddy lists. Caller holds both locks.</summary>
        public void DrainTo(int order, int count, PageAllocator owner)
        {
            for (int i = 0; i < count && TryPop(order, out Arena? arena, out int index); i++)
            {
                owner.GiveToBuddy(arena!, index, order);
            }
        }
    }
}
