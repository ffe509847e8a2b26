using PageFrag.Frag;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;

namespace PageFrag.Tests.Review;

/// <summary>
/// Session 7 review of the recycle slots (PageRecycler): a park racing the allocator's Dispose, and an address in a
/// cache's slots that no longer names one of its allocator's blocks.
/// </summary>
public class RecycleSlotReviewTests
{
    private const int Frag = 2048;
    private const int PerPage = 32768 / Frag;

    private static PageRecycler RecyclerOf(PageFragment fragment)
    {
        Arena arena = ArenaRegistry.Find(fragment.Address)!;
        int page = (int)((fragment.Address - arena.BaseAddress) >> PageConstants.PageShift);
        return arena.Recyclers[arena.Pages[page].HeadIndex >> PageRecycler.Order]!;
    }

    /// <summary>
    /// The slots hold addresses, resolved through the process-wide arena registry. An address left in a cache's slots
    /// after its allocator dropped its arenas (a park that read the allocator as not disposed before its Dispose, and
    /// swapped its address in after the Dispose's drain) resolves, once the dropped arena's memory is reused, to
    /// another allocator's block. The cache's drain must not free that block into its own allocator's lists (the
    /// block would be handed out twice). Here the stale address is put in the slots directly, naming a live block of
    /// a second allocator.
    /// </summary>
    [Fact]
    public void A_drain_of_the_slots_leaves_alone_an_address_of_another_allocators_block()
    {
        using PageAllocator a = Leaks.NewAllocator(4 << 20);
        using PageAllocator b = Leaks.NewAllocator(4 << 20);
        var cacheA = new PageFragCache(a);
        var cacheB = new PageFragCache(b);
        Assert.True(cacheA.TryAlloc(Frag, out PageFragment fa));
        Assert.True(cacheB.TryAlloc(Frag, out PageFragment fb));
        PageRecycler slots = RecyclerOf(fa);
        Assert.True(slots.TryPut(0, fb.Address & ~(nint)32767));

        cacheA.Dispose(); // closes and drains its slots
        Assert.Equal(0, slots.Count);

        // b's page is still b's, live, and frees normally; a's lists did not get it.
        PageFragCache.Free(fb);
        PageFragCache.Free(fa);
        cacheB.Dispose();
        Leaks.AssertNone(a);
        Leaks.AssertNone(b);
        a.DrainPerCpuLists();
        b.DrainPerCpuLists();
        Assert.Equal(a.GetStats().TotalPages, a.GetStats().FreePages);
        Assert.Equal(b.GetStats().TotalPages, b.GetStats().FreePages);
    }

    /// <summary>
    /// A last free on another thread (which parks the cache's left page) races the allocator's Dispose: after both,
    /// no address may stay in the cache's slots (it would outlive the dropped arena; see the test above).
    /// </summary>
    [Fact]
    public void A_park_racing_the_allocators_Dispose_leaves_nothing_in_the_slots()
    {
        var deadline = DateTime.UtcNow.AddSeconds(2);
        int rounds = 0;
        PageFragment? last = null;
        PageAllocator? allocator = null;
        using var gate = new RaceGate(() =>
        {
            if (last is PageFragment f)
            {
                PageFragCache.Free(f);
            }
        });
        while (DateTime.UtcNow < deadline)
        {
            allocator = Leaks.NewAllocator(4 << 20);
            var cache = new PageFragCache(allocator);
            var fragments = new List<PageFragment>();
            for (int i = 0; i < PerPage; i++)
            {
                Assert.True(cache.TryAlloc(Frag, out PageFragment f));
                fragments.Add(f);
            }

            Assert.True(cache.TryAlloc(Frag, out PageFragment next)); // the first page is left
            for (int i = 1; i < PerPage; i++)
            {
                PageFragCache.Free(fragments[i]);
            }

            PageRecycler slots = RecyclerOf(fragments[0]);
            last = fragments[0];
            PageAllocator current = allocator;
            gate.Race(current.Dispose);
            Assert.Null(gate.Failure);
            Assert.Equal(0, slots.Count);
            PageFragCache.Free(next);
            cache.Dispose();
            Assert.Equal(0, current.RecycledBlocks);
            Assert.Equal(0, current.GetStats().PagesInUse); // every page given back, though its arena was dropped
            rounds++;
        }

        Assert.True(rounds > 10, $"only {rounds} rounds");
    }
    /// <summary>
    /// A page handle taken by address while the page sat parked (free) is stale once a refill takes the page again, as
    /// a handle taken while a block is free on the buddy lists is once the block is handed out again: its AddRef
    /// must not take a reference on the new use's page.
    /// </summary>
    [Fact]
    public void A_page_handle_taken_while_the_page_was_parked_is_stale_after_the_refill_takes_it()
    {
        using PageAllocator allocator = Leaks.NewAllocator(4 << 20);
        var cache = new PageFragCache(allocator);
        var first = new List<PageFragment>();
        for (int i = 0; i < PerPage; i++)
        {
            Assert.True(cache.TryAlloc(Frag, out PageFragment f));
            first.Add(f);
        }

        Assert.True(cache.TryAlloc(Frag, out PageFragment next));
        OtherThread.Run(() =>
        {
            foreach (PageFragment f in first)
            {
                PageFragCache.Free(f);
            }
        });
        Assert.Equal(1, allocator.RecycledBlocks);
        Assert.True(PageAllocator.TryGetPage(first[0].Address, out Page parked));
        Assert.Contains("has none: it was already freed", Assert.Throws<InvalidOperationException>(parked.AddRef).Message);

        var second = new List<PageFragment> { next };
        for (int i = 1; i <= PerPage; i++)
        {
            Assert.True(cache.TryAlloc(Frag, out PageFragment f));
            second.Add(f);
        }

        Assert.Equal(1, cache.PagesRecycled);
        Assert.Equal(first[0].Address, second[PerPage].Address);
        Assert.Contains("stale handle", Assert.Throws<InvalidOperationException>(parked.AddRef).Message);
        Assert.Equal(0, parked.Descriptor.CallerRefs);

        foreach (PageFragment f in second)
        {
            PageFragCache.Free(f);
        }

        cache.Dispose();
        Leaks.AssertNone(allocator);
    }
}
