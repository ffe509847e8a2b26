using System.Numerics;
using System.Diagnostics;
using System.Runtime.CompilerServices;

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
    private readonly long _maxPages;
    private readonly long _reservePages;
    private readonly int _maxArenas;
    private readonly int _arenaSize;
    private readonly bool _isShared;
    private Arena[] _arenas = [];
    private FaultInjection? _faultInjection;
    private int _nextArenaId;
    private volatile bool _disposed;

    private long _pagesInUse;
    private long _allocations;
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
        DetectDoubleFree = options.DetectDoubleFree;
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
            _maxArenas = (int)Math.Min(int.MaxValue, options.MaxBytes / _arenaSize);
            _maxPages = (long)_maxArenas * arenaPages;
            _reservePages = options.ReserveBytes >> PageConstants.PageShift;
        }

        MaxOrder = BitOperations.Log2((uint)arenaPages);
        _perCpu = new PerCpuPages[Math.Max(1, Environment.ProcessorCount)];
        for (int i = 0; i < _perCpu.Length; i++)
        {
            _perCpu[i] = new PerCpuPages();
        }

    }

    /// <summary>The options this allocator was created with.</summary>
    public PageAllocatorOptions Options { get; }

    /// <summary>The highest order a block can have: log2(ArenaSize / 4096).</summary>
    public int MaxOrder { get; }

    /// <summary>Whether fragment frees are checked for double frees (see <see cref="PageAllocatorOptions.DetectDoubleFree"/>).</summary>
    public bool DetectDoubleFree { get; }

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

        if (TryAllocBlock(order, flags, out Arena? arena, out int index))
        {
            page = new Page(arena, index);
            return true;
        }

        page = default;
        return false;
    }

    /// <summary>
    /// Drops one reference to <paramref name="page"/> (put_page); the block returns to the allocator when
    /// the count reaches zero.
    /// </summary>
    /// <exception cref="ArgumentException">The page is empty or belongs to another allocator.</exception>
    /// <exception cref="PageFragDoubleFreeException">The block has no reference left, or the handle is stale (the block was freed and reallocated since).</exception>
    public void FreePages(Page page)
    {
        if (page.Arena is null)
        {
            ThrowHelper.Argument(nameof(page), "The page is empty: it came from a failed or default allocation.");
        }

        if (!ReferenceEquals(page.Arena.Owner, this))
        {
            ThrowHelper.Argument(nameof(page), "The page belongs to another PageAllocator.");
        }

        if (page.Arena.Pages[page.Index].Generation != page.Generation)
        {
            ThrowHelper.DoubleFree("The page handle is stale: the block was freed and handed out again since, so this free would drop another owner's reference.");
        }

        PutBlockRef(page.Arena, page.Index);
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
    public int Trim()
    {
        DrainPerCpuLists();
        int released = 0;
        lock (_buddyLock)
        {
            if (_arenas.Length == 0)
            {
                return 0;
            }

            var keep = new List<Arena>(_arenas.Length);
            foreach (Arena arena in _arenas)
            {
                if (arena.IsEntirelyFree)
                {
                    ArenaRegistry.Unregister(arena);
                    released++;
                }
                else
                {
                    keep.Add(arena);
                }
            }

            _arenas = keep.ToArray();
            _arenasTrimmed += released;
        }

        return released;
    }

    /// <summary>
    /// Moves every page parked on the per-CPU lists back to the buddy lists (drain_all_pages).
    /// </summary>
    public void DrainPerCpuLists()
    {
        foreach (PerCpuPages pcp in _perCpu)
        {
            lock (pcp.Lock)
            {
                lock (_buddyLock)
                {
                    for (int order = 0; order <= PerCpuPages.MaxOrder; order++)
                    {
                        pcp.DrainTo(order, pcp.Counts[order], this);
                    }
                }
            }
        }
    }

    /// <summary>A snapshot of the allocator's counters.</summary>
    public PageAllocatorStats GetStats()
    {
        long cached = 0;
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
                PagesInUse = Volatile.Read(ref _pagesInUse),
                FreeBlocksPerOrder = perOrder,
                Allocations = Volatile.Read(ref _allocations),
                Failures = Volatile.Read(ref _failures),
                PfMemallocAllocations = Volatile.Read(ref _pfmemallocAllocations),
                ArenasTrimmed = _arenasTrimmed,
                MaxPages = _maxArenas == int.MaxValue ? -1 : _maxPages,
                ReservePages = _reservePages,
            };
        }
    }

    /// <summary>Pages currently handed out (not free and not on a per-CPU list).</summary>
    public long PagesInUse => Volatile.Read(ref _pagesInUse);

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
    internal bool TryAllocBlock(int order, AllocFlags flags, [System.Diagnostics.CodeAnalysis.NotNullWhen(true)] out Arena? arena, out int index)
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
        bool ok = order <= PerCpuPages.MaxOrder
            ? TryTakePerCpu(order, !opportunistic, out arena, out index)
            : TryTakeBuddy(order, !opportunistic, out arena, out index);
        if (!ok && !opportunistic)
        {
            // Before failing, pull back what the per-CPU lists hoard: it may merge into the block we need.
            DrainPerCpuLists();
            ok = TryTakeBuddy(order, mayGrow: true, out arena, out index);
        }

        if (!ok)
        {
            Interlocked.Add(ref _pagesInUse, -pages);
            Interlocked.Increment(ref _failures);
            arena = null;
            index = -1;
            return false;
        }

        ref PageDescriptor d = ref arena!.Pages[index];
        d.Order = (byte)order;
        d.Flags = pfmemalloc ? PageFlags.Head | PageFlags.PfMemalloc : PageFlags.Head;
        d.HeadIndex = index;
        d.Generation++;
        d.TinyFragments = false;
        d.Pool = null;
        d.PpRefCount = 0;
        d.DmaAddress = 0;
        for (int i = 1; i < pages; i++)
        {
            ref PageDescriptor t = ref arena.Pages[index + i];
            t.HeadIndex = index;
            t.Flags = PageFlags.Tail;
        }

        Volatile.Write(ref d.RefCount, 1);
        Interlocked.Increment(ref _allocations);
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

            arena.Owner.ReleaseBlock(arena, head);
        }
    }

    /// <summary>Returns a block whose reference count reached zero to the per-CPU list or the buddy lists.</summary>
    internal void ReleaseBlock(Arena arena, int head)
    {
        ref PageDescriptor d = ref arena.Pages[head];
        Debug.Assert(Volatile.Read(ref d.RefCount) == 0, "only a block without references is released");
        int order = d.Order;
        d.Flags = PageFlags.None;
        d.Pool = null;
        Interlocked.Add(ref _pagesInUse, -(1L << order));
        if (_disposed)
        {
            return;
        }

        if (order <= PerCpuPages.MaxOrder)
        {
            PerCpuPages pcp = _perCpu[CurrentCpu()];
            lock (pcp.Lock)
            {
                // Checked again under the list's lock: Dispose drains each list after setting _disposed.
                if (_disposed)
                {
                    return;
                }

                pcp.Push(order, arena, head);
                if (pcp.Counts[order] > PerCpuPages.High(order))
                {
                    lock (_buddyLock)
                    {
                        pcp.DrainTo(order, PerCpuPages.Batch(order), this);
                    }
                }
            }
        }
        else
        {
            lock (_buddyLock)
            {
                GiveToBuddy(arena, head, order);
            }
        }
    }

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
            if (pcp.Counts[order] == 0)
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

        /// <summary>Above this many blocks a list drains a batch back.</summary>
        public static int High(int order) => Batch(order) * 3;

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
