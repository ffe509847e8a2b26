using System.Runtime.CompilerServices;
using PageFrag.Pages;

namespace PageFrag.Pool;

// The public pool is a thin finalizable shell around PagePoolCore (issue 12 item 2): the pages' descriptors and
// the shared release worker point at the core, so only users hold this object, and when they drop it without
// Dispose its finalizer destroys the core. The hot paths pay one field load (Core) per call.

/// <summary>
/// A page pool (the kernel's <c>page_pool</c>): recycles pages, with their device mapping, for one receive
/// queue. Pages are handed out whole (<see cref="TryAllocNetMem"/>) or carved into fragments
/// (<see cref="TryAllocFrag"/>, <see cref="TryAlloc"/>), and come back to the pool instead of the allocator when
/// their last user lets go.
/// </summary>
/// <remarks>
/// <para><b>Where a page comes from</b>, fastest first:</para>
/// <code>
///   alloc cache  128 entries, owner thread only, no atomics         (stat: fast)
///      ↑ refill up to 64 when empty
///   recycle ring pool_size entries, lock-free, any thread pushes    (refill / empty / waive)
///      ↑
///   allocator    64 order-0 pages per batch (1 returned, 63 cached) or one high-order page
///                (slow / slow_high_order), or the memory provider
/// </code>
/// <para><b>Where it goes back</b>: every pool page carries a pool reference count (<c>pp_ref_count</c>) that
/// starts at 1 for a whole page ("mono-frag") or at a large bias for a fragment page. A put drops references
/// with one rule for both: if the count equals what is dropped, the caller was last and nothing is written;
/// otherwise an atomic subtract, and reaching zero resets the count to 1. The last put recycles the page: into
/// the cache when called on the owner thread with <c>allowDirect</c> (cached, or cache_full), else into the
/// ring (ring, or ring_full and the page goes back to the allocator). A page that someone else also holds (its
/// page reference count is not 1) or that came from the emergency reserve is released instead
/// (released_refcnt).</para>
/// <para><b>Threading.</b> The pool has an owner thread (the kernel's NAPI context): the thread that created it,
/// or the last one that called <see cref="SetOwnerThread"/>. Only the owner allocates (other threads get an
/// <see cref="InvalidOperationException"/>), and only puts made on the owner thread with <c>allowDirect</c> use
/// the cache; <c>allowDirect</c> from any other thread is ignored and the page takes the ring. Puts, frees and
/// <see cref="GetStats()"/> are safe from any thread. Moving ownership is the caller's job: the old owner must
/// have stopped using the pool before the new one calls <see cref="SetOwnerThread"/>.</para>
/// <para><b>Release.</b> <see cref="Dispose"/> (page_pool_destroy) empties the cache and the ring; pages still in
/// flight keep the pool alive and are returned to the allocator as they come back. A timer retries every
/// <see cref="PagePoolOptions.ReleaseRetryPeriod"/> and raises <see cref="Warning"/> after each
/// <see cref="PagePoolOptions.StallWarningInterval"/>; the last page returned frees the pool
/// (<see cref="IsReleased"/>). Call <see cref="Dispose"/> on the owner thread, or after the owner has stopped.</para>
/// <para><b>Safety net.</b> A pool that becomes unreachable without <see cref="Dispose"/> is destroyed by its
/// finalizer as if disposed: its cache, its ring and its current fragment page's bias go back to the allocator,
/// pages still held come back as they are freed (buffers stay valid until then), and
/// <see cref="PageFragEventSource"/> reports <c>LeakReclaimed("PagePool", pages, bytes, stack)</c> (the creation
/// stack when the allocator's <see cref="PageAllocatorOptions.DetectMisuse"/> is on). Pages in flight do not keep
/// the pool object alive: they point at its internal state. A pool with a <see cref="MemoryProvider"/> is not
/// reclaimed this way (the provider's hooks take the pool, so its state keeps it): dispose it.</para>
/// </remarks>
public sealed class PagePool : IDisposable
{
    /// <summary>Entries of the owner's array cache (PP_ALLOC_CACHE_SIZE).</summary>
    public const int AllocCacheSize = PagePoolCore.AllocCacheSize;

    /// <summary>Pages moved per refill from the ring, and pages per bulk allocation (PP_ALLOC_CACHE_REFILL).</summary>
    public const int AllocCacheRefill = PagePoolCore.AllocCacheRefill;

    /// <summary>Fragment sizes are rounded up to this (the DMA cache alignment: one cache line).</summary>
    public const int FragmentAlignment = PagePoolCore.FragmentAlignment;

    /// <summary>The fragment page bias (largest pp_ref_count), for tests.</summary>
    internal const long BiasMax = PagePoolCore.BiasMax;

    // The state. Every method below forwards to it and ends with GC.KeepAlive(this) where the core may still
    // run owner-side code after the last use of `this`: otherwise the finalizer could destroy the pool under
    // a running allocation.
    internal readonly PagePoolCore Core;

    /// <summary>Creates a pool owned by the calling thread. No page is taken until the first allocation.</summary>
    /// <param name="options">Parameters, or null for the defaults (see <see cref="PagePoolOptions"/>).</param>
    /// <exception cref="ArgumentOutOfRangeException">An option is out of its documented range.</exception>
    /// <exception cref="ArgumentException">Inconsistent DMA flags.</exception>
    /// <remarks>Whatever the memory provider's <see cref="IMemoryProvider.Init"/> throws propagates.</remarks>
    public PagePool(PagePoolOptions? options = null)
    {
        try
        {
            Core = new PagePoolCore(options, this);
            Core.InitProvider();
        }
        catch
        {
            GC.SuppressFinalize(this);
            throw;
        }
    }

    /// <summary>The safety net: destroys a pool dropped without <see cref="Dispose"/> (see the remarks).</summary>
    ~PagePool()
    {
        Core.ReclaimUnreachable();
    }

    /// <summary>The parameters the pool was created with.</summary>
    public PagePoolOptions Options => Core.Options;

    /// <summary>A process-wide number naming the pool in warnings.</summary>
    public int Id => Core.Id;

    /// <summary>The allocator host pages come from.</summary>
    public PageAllocator Allocator => Core.Allocator;

    /// <summary>The memory provider, or null for host pages from <see cref="Allocator"/>.</summary>
    public IMemoryProvider? MemoryProvider => Core.MemoryProvider;

    /// <summary>The device mapper.</summary>
    public IDmaMapper DmaMapper => Core.DmaMapper;

    /// <summary>Order of the pool's pages.</summary>
    public int Order => Core.Order;

    /// <summary>Size of the pool's pages: 4096 &lt;&lt; <see cref="Order"/>.</summary>
    public int PageSize => Core.PageSize;

    /// <summary>Entries the recycle ring holds at most: exactly <see cref="PagePoolOptions.PoolSize"/> (ptr_ring).</summary>
    public int RingCapacity => Core.RingCapacity;

    /// <summary>The managed thread id of the owner thread (0 once disposed).</summary>
    public int OwnerThreadId => Core.OwnerThreadId;

    /// <summary>True when the calling thread is the pool's owner.</summary>
    public bool IsOwnerThread => Core.IsOwnerThread;

    /// <summary>The preferred memory node of recycled pages.</summary>
    public int Node => Core.Node;

    /// <summary>Pages in the owner's cache (owner thread for an exact value).</summary>
    public int CachedPages => Core.CachedPages;

    /// <summary>Pages in the recycle ring (exact when the pool is quiet).</summary>
    public int RingPages => Core.RingPages;

    /// <summary>Pages the pool has taken from the allocator or the provider (pages_state_hold_cnt).</summary>
    public long PagesHeld => Core.PagesHeld;

    /// <summary>Pages the pool has given back (pages_state_release_cnt).</summary>
    public long PagesReleased => Core.PagesReleased;

    /// <summary>Pages taken and not yet given back: in the cache, in the ring or in use.</summary>
    public long InFlight => Core.InFlight;

    /// <summary>True once <see cref="Dispose"/> was called (or the pool was reclaimed by the GC).</summary>
    public bool IsDisposed => Core.IsDisposed;

    /// <summary>True once the pool was disposed and every page came back: it holds nothing any more.</summary>
    public bool IsReleased => Core.IsReleased;

    /// <summary>Offset of the next fragment in the current fragment page (0 when there is none).</summary>
    public int FragmentOffset => Core.FragmentOffset;

    /// <summary>
    /// Raised from the release timer while a disposed pool waits for pages in flight (every
    /// <see cref="PagePoolOptions.StallWarningInterval"/>), and once if the in-flight count goes negative
    /// (a bug: more pages returned than taken). Handlers run on a thread-pool thread; their exceptions are
    /// traced and swallowed so that a diagnostic cannot kill the release. The sender is the pool, or null once
    /// it was collected.
    /// </summary>
    public event EventHandler<PagePoolWarningEventArgs>? Warning
    {
        add => Core.Warning += value;
        remove => Core.Warning -= value;
    }

    /// <inheritdoc cref="PagePoolCore.SetOwnerThread"/>
    public void SetOwnerThread()
    {
        Core.SetOwnerThread();
        GC.KeepAlive(this);
    }

    /// <inheritdoc cref="PagePoolCore.SetNode"/>
    public void SetNode(int node)
    {
        Core.SetNode(node);
        GC.KeepAlive(this);
    }

    /// <inheritdoc cref="PagePoolCore.TryAllocNetMem"/>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool TryAllocNetMem(out NetMem netmem)
    {
        bool ok = Core.TryAllocNetMem(out netmem);
        GC.KeepAlive(this);
        return ok;
    }

    /// <inheritdoc cref="PagePoolCore.TryAllocPage"/>
    public bool TryAllocPage(out PagePoolBuffer buffer)
    {
        bool ok = Core.TryAllocPage(out buffer);
        GC.KeepAlive(this);
        return ok;
    }

    /// <inheritdoc cref="PagePoolCore.TryAllocFrag"/>
    public bool TryAllocFrag(int size, out PagePoolBuffer buffer)
    {
        bool ok = Core.TryAllocFrag(size, out buffer);
        GC.KeepAlive(this);
        return ok;
    }

    /// <inheritdoc cref="PagePoolCore.TryAlloc"/>
    public bool TryAlloc(int size, out PagePoolBuffer buffer)
    {
        bool ok = Core.TryAlloc(size, out buffer);
        GC.KeepAlive(this);
        return ok;
    }

    /// <inheritdoc cref="PagePoolCore.PutPage"/>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void PutPage(NetMem netmem, int dmaSyncSize, bool allowDirect)
    {
        Core.PutPage(netmem, dmaSyncSize, allowDirect);
        GC.KeepAlive(this);
    }

    /// <inheritdoc cref="PagePoolCore.PutFullPage"/>
    public void PutFullPage(NetMem netmem, bool allowDirect)
    {
        Core.PutPage(netmem, -1, allowDirect);
        GC.KeepAlive(this);
    }

    /// <inheritdoc cref="PagePoolCore.RecycleDirect"/>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void RecycleDirect(NetMem netmem)
    {
        Core.PutPage(netmem, -1, allowDirect: true);
        GC.KeepAlive(this);
    }

    /// <inheritdoc cref="PagePoolCore.PutBuffer"/>
    public void PutBuffer(in PagePoolBuffer buffer, bool allowDirect)
    {
        Core.PutBuffer(buffer, allowDirect);
        GC.KeepAlive(this);
    }

    /// <inheritdoc cref="PagePoolCore.Free"/>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Free(in PagePoolBuffer buffer) => PagePoolCore.Free(buffer);

    /// <inheritdoc cref="PagePoolCore.FragmentNetMem"/>
    public void FragmentNetMem(NetMem netmem, long count)
    {
        Core.FragmentNetMem(netmem, count);
        GC.KeepAlive(this);
    }

    /// <inheritdoc cref="PagePoolCore.UnrefNetMem"/>
    public long UnrefNetMem(NetMem netmem, long count)
    {
        long left = Core.UnrefNetMem(netmem, count);
        GC.KeepAlive(this);
        return left;
    }

    /// <inheritdoc cref="PagePoolCore.PutUnrefedNetMem"/>
    public void PutUnrefedNetMem(NetMem netmem, int dmaSyncSize, bool allowDirect)
    {
        Core.PutUnrefedNetMem(netmem, dmaSyncSize, allowDirect);
        GC.KeepAlive(this);
    }

    /// <inheritdoc cref="PagePoolCore.Dispose"/>
    public void Dispose()
    {
        // When the owner's side waits for a live owner thread (a Dispose on another thread), the finalizer stays
        // registered: once the pool is unreachable, no allocation can be running, and it gives that side back.
        if (Core.Dispose())
        {
            GC.SuppressFinalize(this);
        }
    }

    /// <inheritdoc cref="PagePoolCore.RetryRelease"/>
    public long RetryRelease() => Core.RetryRelease();

    /// <summary>Adds the pool's counters into <paramref name="stats"/> (page_pool_get_stats). Any thread.</summary>
    public void GetStats(ref PagePoolStats stats) => Core.GetStats(ref stats);

    /// <summary>A snapshot of the pool's counters. Any thread.</summary>
    public PagePoolStats GetStats() => Core.GetStats();

    /// <inheritdoc/>
    public override string ToString() => Core.ToString();

    /// <summary>Test hook: what a put that raced with <see cref="Dispose"/> does (recycle into the ring after the scrub).</summary>
    internal void RecycleIntoRingForTest(NetMem netmem) => Core.RecycleIntoRingForTest(netmem);

    /// <summary>Test hook: skews the release count.</summary>
    internal void CorruptReleaseCountForTest(long extra) => Core.CorruptReleaseCountForTest(extra);
}
