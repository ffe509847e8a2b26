using System.Collections.Concurrent;
using System.Diagnostics.Tracing;
using System.Runtime.CompilerServices;
using PageFrag.Pages;
using PageFrag.Pool;
using PageFrag.Tests.Infrastructure;
using static PageFrag.Tests.Pool.PoolTesting;

namespace PageFrag.Tests.Pool;

/// <summary>
/// Issue 12 item 2 for the page pool: a pool dropped without <c>Dispose</c> gives its cache, ring and fragment
/// page back when collected and reports it; buffers still held stay valid until freed.
/// </summary>
[Collection(PageFrag.Tests.Buffers.FinalizerReclaim.Name)]
public class PagePoolLeakReclaimTests
{
    private sealed class PoolLeakListener : EventListener
    {
        public readonly ConcurrentQueue<(long Count, long Bytes, string Stack)> Events = new();

        protected override void OnEventSourceCreated(EventSource source)
        {
            if (source.Name == "PageFrag")
            {
                EnableEvents(source, EventLevel.Verbose);
            }
        }

        protected override void OnEventWritten(EventWrittenEventArgs e)
        {
            if (e.EventId == 1 && e.Payload is { Count: 4 } p && (string)p[0]! == "PagePool")
            {
                Events.Enqueue(((long)p[1]!, (long)p[2]!, (string)p[3]!));
            }
        }
    }

    private static void CollectEverything()
    {
        for (int i = 0; i < 3; i++)
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
        }
    }

    /// <summary>Uses a pool so that it ends with pages in its cache, its ring and a current fragment page, then drops it.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static PagePool UseAndDrop(PageAllocator allocator)
    {
        PagePool pool = NewPool(allocator, poolSize: 256);
        var pages = new PagePoolBuffer[AllocCacheSizePlus(40)];
        for (int i = 0; i < pages.Length; i++)
        {
            Assert.True(pool.TryAllocPage(out pages[i]));
        }

        // Half freed by another thread (into the ring), half by the owner (into the cache).
        OnOtherThread(() =>
        {
            for (int i = 0; i < pages.Length / 2; i++)
            {
                pages[i].Free();
            }
        });
        for (int i = pages.Length / 2; i < pages.Length; i++)
        {
            pages[i].Free();
        }

        Assert.True(pool.TryAllocFrag(1000, out PagePoolBuffer frag));
        frag.Free(); // the fragment page stays the pool's current page, with its bias
        Assert.True(pool.CachedPages > 0);
        Assert.True(pool.RingPages > 0);
        Assert.True(pool.FragmentOffset > 0);
        return pool;
    }

    // The pools stay reachable until every one is made and the pages are counted: a collection during the loop
    // would reclaim the first pools early, and their pages would be reported without being counted. A method of its
    // own, so that no local of the caller keeps the last pool alive.
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static long MakePoolsAndCountPages(PageAllocator allocator, int pools)
    {
        var made = new List<PagePool>(pools);
        for (int i = 0; i < pools; i++)
        {
            made.Add(UseAndDrop(allocator));
        }

        long held = allocator.PagesInUse;
        GC.KeepAlive(made);
        return held;
    }

    private static int AllocCacheSizePlus(int extra) => PagePool.AllocCacheSize + extra;

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static (PagePoolBuffer Page, PagePoolBuffer Frag, WeakReference Pool) DropWhileHolding(PageAllocator allocator)
    {
        PagePool pool = NewPool(allocator);
        Assert.True(pool.TryAllocPage(out PagePoolBuffer page));
        Assert.True(pool.TryAllocFrag(512, out PagePoolBuffer frag));
        Assert.True(pool.TryAllocPage(out PagePoolBuffer cached));
        cached.Free();
        return (page, frag, new WeakReference(pool));
    }

    [Fact]
    public void PagePool_is_IDisposable_and_a_disposed_pool_is_not_reported()
    {
        Assert.True(typeof(IDisposable).IsAssignableFrom(typeof(PagePool)));
        CollectEverything();
        using var listener = new PoolLeakListener();
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 1 << 20);
        CreateUseDispose(allocator);
        CollectEverything();
        Assert.Empty(listener.Events);
        Leaks.AssertNone(allocator);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void CreateUseDispose(PageAllocator allocator)
    {
        using PagePool pool = NewPool(allocator);
        Assert.True(pool.TryAllocPage(out PagePoolBuffer b));
        b.Free();
    }

    [Fact]
    public void Many_pools_dropped_without_Dispose_give_back_cache_ring_and_fragment_page_and_are_reported()
    {
        CollectEverything();
        using var listener = new PoolLeakListener();
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 4 << 20);
        const int pools = 40;
        long held = MakePoolsAndCountPages(allocator, pools);
        Assert.True(held >= pools * PagePool.AllocCacheSize, $"{held} pages in use before the collection");
        CollectEverything();

        Leaks.AssertNone(allocator);
        (long Count, long Bytes, string Stack)[] events = listener.Events.ToArray();
        Assert.True(events.Length >= pools, $"{events.Length} LeakReclaimed(PagePool) events");
        Assert.All(events, e => Assert.Equal(e.Count * 4096, e.Bytes));
        Assert.Equal(held, events.Sum(e => e.Count)); // every page the dropped pools held, reported
    }

    [Fact]
    public void A_dropped_pool_s_buffers_still_held_stay_usable_until_freed_and_then_go_back()
    {
        CollectEverything();
        using var listener = new PoolLeakListener();
        using PageAllocator allocator = new(new PageAllocatorOptions { ArenaSize = 1 << 20, DetectMisuse = true });
        (PagePoolBuffer page, PagePoolBuffer frag, WeakReference poolRef) = DropWhileHolding(allocator);
        long held = allocator.PagesInUse; // the two held pages, the cached one and the rest of the bulk
        CollectEverything();

        Assert.False(poolRef.IsAlive, "the pool object should be collected while its pages are out");
        (long Count, long Bytes, string Stack) reported = Assert.Single(listener.Events);
        Assert.Equal(held - 2, reported.Count); // all but the page and the fragment page, still held
        Assert.Contains(nameof(DropWhileHolding), reported.Stack); // detection mode: the creation stack
        Assert.Equal(2, allocator.PagesInUse);

        // Still valid (the detection mode would throw on a stale handle) and usable.
        page.Span.Fill(0x5A);
        frag.Span.Fill(0xA5);
        Assert.All(page.Span.ToArray(), x => Assert.Equal(0x5A, x));
        Assert.All(frag.Span.ToArray(), x => Assert.Equal(0xA5, x));
        Assert.Null(page.NetMem.Pool);

        page.Free();
        Assert.Equal(1, allocator.PagesInUse);
        frag.Free();
        Assert.Throws<PageFragDoubleFreeException>(() => page.Free());
        Leaks.AssertNone(allocator);
    }
}
