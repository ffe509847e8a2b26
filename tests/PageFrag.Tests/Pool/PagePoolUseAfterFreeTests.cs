using PageFrag.Pages;
using PageFrag.Pool;
using PageFrag.Tests.Infrastructure;
using static PageFrag.Tests.Pool.PoolTesting;

namespace PageFrag.Tests.Pool;

/// <summary>Issue 11, item 7 for pool buffers: CPU accessors of a buffer whose page moved on.</summary>
public class PagePoolUseAfterFreeTests
{
    private static PageAllocator NewAllocator(bool detectMisuse) =>
        new(new PageAllocatorOptions { ArenaSize = 256 * 1024, DetectMisuse = detectMisuse });

    private static void AssertEveryAccessorThrows(PagePoolBuffer stale)
    {
        AssertUseAfterFree(() => _ = stale.Span.Length);
        AssertUseAfterFree(() => _ = stale.Memory.Length);
        AssertUseAfterFree(() => _ = stale.ArraySegment.Count);
        AssertUseAfterFree(() => _ = stale.Address);
        AssertUseAfterFree(() => { unsafe { _ = (nint)stale.Pointer; } });
        AssertUseAfterFree(() => _ = stale.NetMem.Span.Length);
        AssertUseAfterFree(() => _ = stale.NetMem.Memory.Length);
        AssertUseAfterFree(() => _ = stale.NetMem.Address);
    }

    private static void AssertUseAfterFree(Action access)
    {
        var ex = Assert.Throws<InvalidOperationException>(access);
        Assert.Contains("Use after free", ex.Message);
    }

    [Fact]
    public void Detection_mode_a_freed_page_buffer_refuses_every_accessor_and_the_new_owner_keeps_its_bytes()
    {
        using PageAllocator allocator = NewAllocator(detectMisuse: true);
        PagePool pool = NewPool(allocator);
        Assert.True(pool.TryAllocPage(out PagePoolBuffer a));
        a.Span.Fill(0x11);
        a.Free();

        // Recycled through the cache: the same page comes back under a new generation.
        Assert.True(pool.TryAllocPage(out PagePoolBuffer b));
        Assert.Equal(a.NetMem.Index, b.NetMem.Index);
        b.Span.Fill(0x22);

        AssertEveryAccessorThrows(a);
        Assert.All(b.Span.ToArray(), x => Assert.Equal(0x22, x));

        // The live buffer passes every accessor.
        Assert.Equal(pool.PageSize, b.Memory.Length);
        Assert.Equal(pool.PageSize, b.ArraySegment.Count);
        b.Free();
        DisposeAndAssertNoLeak(pool, allocator);
    }

    [Fact]
    public void Detection_mode_a_freed_page_is_refused_while_in_the_cache_and_after_it_went_back_to_the_allocator()
    {
        using PageAllocator allocator = NewAllocator(detectMisuse: true);
        PagePool pool = NewPool(allocator);
        Assert.True(pool.TryAllocPage(out PagePoolBuffer a));
        a.Free();
        AssertEveryAccessorThrows(a); // in the cache

        pool.Dispose(); // the page leaves the pool for the allocator
        AssertEveryAccessorThrows(a);
        Assert.True(pool.IsReleased);
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Detection_mode_a_fragment_whose_page_was_recycled_is_refused()
    {
        using PageAllocator allocator = NewAllocator(detectMisuse: true);
        PagePool pool = NewPool(allocator);
        Assert.True(pool.TryAllocFrag(2048, out PagePoolBuffer f1));
        Assert.True(pool.TryAllocFrag(2048, out PagePoolBuffer f2));
        Assert.True(pool.TryAllocFrag(2048, out PagePoolBuffer f3)); // a new page: the first one is drained
        Assert.NotEqual(f1.NetMem.Index, f3.NetMem.Index);

        // A fragment of a page still in use keeps working after its own free: its page did not move on (the
        // fragment marks catch its double free, not its reads).
        f1.Free();
        _ = f1.Span.Length;
        f2.Free(); // last user: the page is recycled
        AssertEveryAccessorThrows(f1);
        AssertEveryAccessorThrows(f2);
        f3.Span.Fill(1);
        f3.Free();
        DisposeAndAssertNoLeak(pool, allocator);
    }

    [Fact]
    public void Detection_mode_refusing_a_stale_handle_leaves_the_pool_intact()
    {
        using PageAllocator allocator = NewAllocator(detectMisuse: true);
        PagePool pool = NewPool(allocator);
        Assert.True(pool.TryAllocPage(out PagePoolBuffer a));
        a.Free();
        AssertUseAfterFree(() => _ = a.Span.Length);
        Assert.Throws<PageFragDoubleFreeException>(() => a.Free());
        Assert.True(pool.TryAllocPage(out PagePoolBuffer b));
        Assert.Equal(1, b.NetMem.PpRefCount);
        b.Free();
        DisposeAndAssertNoLeak(pool, allocator);
    }

    [Fact]
    public void Default_mode_does_not_catch_a_use_after_free_the_stale_span_writes_into_the_new_owner()
    {
        // Documented: without DetectMisuse the accessors do not check, to keep them free of cost; a stale
        // buffer aliases whoever holds its page now.
        using PageAllocator allocator = NewAllocator(detectMisuse: false);
        PagePool pool = NewPool(allocator);
        Assert.True(pool.TryAllocPage(out PagePoolBuffer a));
        a.Free();
        Assert.True(pool.TryAllocPage(out PagePoolBuffer b));
        b.Span.Fill(0x22);

        a.Span.Fill(0xCC);

        Assert.All(b.Span.ToArray(), x => Assert.Equal(0xCC, x));
        b.Free();
        DisposeAndAssertNoLeak(pool, allocator);
    }
}
