using PageFrag.Frag;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;

namespace PageFrag.Tests.Frag;

/// <summary>
/// <see cref="PageFragCache.FreeLocal"/>: the owner's free gives a fragment of the current page back to the
/// bias without touching the page's count, and frees anything else like the static free.
/// </summary>
public class PageFragCacheFreeLocalTests
{
    [Fact]
    public void A_fragment_of_the_current_page_goes_back_to_the_bias_and_leaves_the_count_alone()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(100, out PageFragment a));
        Assert.True(cache.TryAlloc(200, out PageFragment b));
        Page page = cache.CurrentPage;
        Assert.Equal(FragKit.RefBias - 1, cache.Bias);

        cache.FreeLocal(a);

        Assert.Equal(FragKit.FreshRefCount, page.RefCount);
        Assert.Equal(FragKit.RefBias, cache.Bias);
        Assert.Equal(300, cache.Offset); // the space is not given back: only the reference is

        cache.FreeLocal(b);
        Assert.Equal(FragKit.RefBias + 1, cache.Bias);
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void A_page_whose_fragments_were_all_freed_locally_is_reused_in_place()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        for (int i = 0; i < 3 * (FragKit.BigPage / 1000); i++) // 32 a page: two refills, both reuse in place
        {
            Assert.True(cache.TryAlloc(1000, out PageFragment f));
            cache.FreeLocal(f);
        }

        Assert.Equal(1, cache.PagesAllocated);
        Assert.Equal(2, cache.PagesReused);
        Assert.Equal(FragKit.FreshRefCount, cache.CurrentPage.RefCount);
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void A_fragment_of_a_page_the_cache_has_left_is_freed_through_the_page_count()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(30000, out PageFragment old));
        Page oldPage = old.Page;
        Assert.True(cache.TryAlloc(30000, out PageFragment current)); // moves the cache to a new page
        Assert.NotEqual(oldPage, cache.CurrentPage);
        Assert.Equal(1, oldPage.RefCount);
        long inUse = allocator.PagesInUse;

        cache.FreeLocal(old);

        Assert.Equal(inUse - 8, allocator.PagesInUse); // the old order-3 page went back to the allocator
        cache.FreeLocal(current);
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void A_fragment_of_another_cache_is_freed_through_its_page_count()
    {
        using PageAllocator allocator = FragKit.NewAllocator(arenaSize: 1 << 20);
        var owner = new PageFragCache(allocator);
        var other = new PageFragCache(allocator);
        Assert.True(other.TryAlloc(64, out PageFragment foreign));
        Assert.True(owner.TryAlloc(64, out PageFragment mine));
        int otherBias = other.Bias;
        int ownerBias = owner.Bias;

        owner.FreeLocal(foreign);

        Assert.Equal(FragKit.FreshRefCount - 1, other.CurrentPage.RefCount);
        Assert.Equal(otherBias, other.Bias);
        Assert.Equal(ownerBias, owner.Bias);
        owner.FreeLocal(mine);
        other.Drain();
        FragKit.DrainAndAssertNoLeak(owner, allocator);
    }

    [Fact]
    public void A_second_local_free_is_a_double_free_and_leaves_the_cache_intact()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(64, out PageFragment f));
        cache.FreeLocal(f);
        int bias = cache.Bias;

        FragKit.Throws<PageFragDoubleFreeException>(() => cache.FreeLocal(f), null, "already freed");
        FragKit.Throws<PageFragDoubleFreeException>(() => PageFragCache.Free(f), null, "already freed");

        Assert.Equal(bias, cache.Bias);
        FragKit.AssertStillWorks(cache);
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void A_local_free_after_a_free_on_another_thread_is_a_double_free()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(64, out PageFragment f));
        var t = new Thread(() => PageFragCache.Free(f));
        t.Start();
        t.Join();
        int bias = cache.Bias;

        FragKit.Throws<PageFragDoubleFreeException>(() => cache.FreeLocal(f), null, "already freed");

        Assert.Equal(bias, cache.Bias);
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void A_fragment_whose_page_was_reused_since_is_refused()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(20000, out PageFragment f));
        cache.FreeLocal(f);
        Assert.True(cache.TryAlloc(20000, out PageFragment next)); // the page is reused in place
        Assert.Equal(1, cache.PagesReused);
        Assert.Equal(f.Page, next.Page);

        FragKit.Throws<PageFragDoubleFreeException>(() => cache.FreeLocal(f), null, "reused");

        cache.FreeLocal(next);
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void An_empty_fragment_is_refused_even_by_a_cache_without_a_page()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);

        FragKit.Throws<ArgumentException>(() => cache.FreeLocal(default), "fragment", "empty");

        Assert.True(cache.TryAlloc(10, out PageFragment f));
        FragKit.Throws<ArgumentException>(() => cache.FreeLocal(default), "fragment", "empty");
        cache.FreeLocal(f);
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void Alloc_and_local_free_allocate_nothing()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        ZeroAlloc.AssertSteadyState(() =>
        {
            for (int i = 0; i < 10_000; i++)
            {
                if (!cache.TryAlloc(12 + (i & 127), out PageFragment f))
                {
                    Assert.Fail("allocation failed");
                }

                f.Span[0] = (byte)i;
                cache.FreeLocal(f);
            }
        });

        Assert.True(cache.PagesReused > 0);
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }
}
