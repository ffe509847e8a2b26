using PageFrag.Frag;
using PageFrag.Pages;
using PageFrag.Tests.Frag;
using PageFrag.Tests.Infrastructure;

namespace PageFrag.Tests.Review;

/// <summary>
/// A handle's generation is the generation of its block's head when it was carved. A free by handle looks up
/// the head of the fragment's page as it is now: after the block went back and its pages were handed out again
/// at another order, that head is another page with a generation counter of its own, which can hold the same
/// value. The stale handle must still be refused.
/// </summary>
public class StaleHandleAcrossSplitTests
{
    [Fact]
    public void A_stale_handle_from_an_order3_page_does_not_free_a_fragment_of_an_order0_page_carved_from_its_second_4KiB()
    {
        // One arena of 16 pages and no growth: two order-3 blocks.
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 64 * 1024, maxBytes: 64 * 1024);
        // Move the order-3 heads' generations ahead, so that the order-0 page below can catch up with them.
        for (int i = 0; i < 20; i++)
        {
            Assert.True(allocator.TryAllocPages(3, AllocFlags.None, out Page b0));
            Assert.True(allocator.TryAllocPages(3, AllocFlags.None, out Page b1));
            allocator.FreePages(b0);
            allocator.FreePages(b1);
        }

        var first = new PageFragCache(allocator);
        Assert.True(first.TryAlloc(4096, out PageFragment a0));
        Assert.True(first.TryAlloc(4096, out PageFragment stale));
        Assert.Equal(3, stale.Page.Order);
        Arena arena = stale.Arena!;
        int pageIndex = stale.ArenaOffset >> PageConstants.PageShift;
        Assert.Equal(stale.ArenaOffset, pageIndex << PageConstants.PageShift);
        PageFragCache.Free(stale);
        PageFragCache.Free(a0);
        first.Dispose();
        Assert.Equal(0, allocator.GetStats().PagesInUse);

        // Hand the page to fresh caches again and again: its generation passes the stale handle's on the way
        // (before the fix, exactly then the stale free freed the live fragment).
        AssertTheStaleFreeNeverReachesTheNextOwners(allocator, stale, rounds: 64);
    }
    [Fact]
    public void A_stale_handle_from_a_reused_generation_of_an_order3_page_does_not_free_a_fragment_carved_from_its_second_4KiB()
    {
        // The page's head moves on by reuse in place while its tails keep the generation the block was allocated
        // with: the block's release must lift the tails to the head's last generation, or the second 4 KiB, handed
        // out alone later, starts from below the stale handle's generation and reaches it.
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 64 * 1024, maxBytes: 64 * 1024);
        var first = new PageFragCache(allocator);
        var carved = new PageFragment[8];
        for (int reuse = 0; reuse < 2; reuse++)
        {
            for (int i = 0; i < carved.Length; i++)
            {
                Assert.True(first.TryAlloc(4096, out carved[i]));
            }

            foreach (PageFragment f in carved)
            {
                PageFragCache.Free(f);
            }
        }

        long reusedBefore = first.PagesReused;
        Assert.True(first.TryAlloc(4096, out PageFragment a0));
        Assert.True(first.TryAlloc(4096, out PageFragment stale));
        Assert.Equal(reusedBefore + 1, first.PagesReused);
        Assert.Equal(2, first.PagesReused);
        Assert.Equal(3, stale.Page.Order);
        Assert.Equal(stale.ArenaOffset, a0.ArenaOffset + 4096);
        PageFragCache.Free(stale);
        PageFragCache.Free(a0);
        first.Dispose();
        Assert.Equal(0, allocator.GetStats().PagesInUse);

        AssertTheStaleFreeNeverReachesTheNextOwners(allocator, stale, rounds: 8);
    }

    /// <summary>
    /// Holds every page but the stale fragment's as an order-0 page, so that a fragment cache can only get that page,
    /// at order 0 (each handout moves its own generation on by one); then, <paramref name="rounds"/> times, a fresh
    /// cache carves a victim there, the stale free must be refused and the victim's bytes left alone. Ends with no
    /// page leaked.
    /// </summary>
    private static void AssertTheStaleFreeNeverReachesTheNextOwners(PageAllocator allocator, PageFragment stale, int rounds)
    {
        var held = new List<Page>();
        while (allocator.TryAllocPages(0, AllocFlags.None, out Page p))
        {
            held.Add(p);
        }

        Page target = held.Single(p => p.Address == stale.Address);
        held.Remove(target);
        allocator.FreePages(target);
        for (int round = 0; round < rounds; round++)
        {
            var second = new PageFragCache(allocator);
            Assert.True(second.TryAlloc(100, out PageFragment victim));
            Assert.Equal(stale.ArenaOffset, victim.ArenaOffset);
            Assert.Equal(0, victim.Page.Order);
            FragKit.Fill(victim, 5);
            Assert.Throws<PageFragDoubleFreeException>(() => PageFragCache.Free(stale));
            Assert.True(FragKit.IsIntact(victim, 5));
            PageFragCache.Free(victim);
            second.Dispose();
        }

        foreach (Page p in held)
        {
            allocator.FreePages(p);
        }

        Leaks.AssertNone(allocator);
    }
}
