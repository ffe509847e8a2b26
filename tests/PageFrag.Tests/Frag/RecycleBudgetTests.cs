using PageFrag.Frag;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;

namespace PageFrag.Tests.Frag;

/// <summary>
/// The recycle slots of one allocator's caches share a budget (eight blocks per CPU, at least one slot per cache), so
/// that a server with many thread caches does not keep 256 KiB of free pages per thread resident under load (issue 14,
/// aim 6); parked pages are free memory that <see cref="PageAllocator.DiscardFreeMemory"/> gives back.
/// </summary>
public class RecycleBudgetTests
{
    private const int Frag = 2048;
    private const int PerPage = 32768 / Frag;

    /// <summary>Fills <paramref name="pages"/> pages and starts the next; returns the fragments of the full pages.</summary>
    private static List<PageFragment> FillPages(PageFragCache cache, int pages, out PageFragment next)
    {
        var fragments = new List<PageFragment>();
        for (int i = 0; i < pages * PerPage; i++)
        {
            Assert.True(cache.TryAlloc(Frag, out PageFragment f));
            fragments.Add(f);
        }

        Assert.True(cache.TryAlloc(Frag, out next));
        Assert.NotEqual(fragments[^1].Address & ~(nint)32767, next.Address & ~(nint)32767);
        return fragments;
    }

    private static void FreeOnOtherThread(IEnumerable<PageFragment> fragments) =>
        OtherThread.Run(() =>
        {
            foreach (PageFragment f in fragments)
            {
                PageFragCache.Free(f);
            }
        });

    [Fact]
    public void Caches_of_one_allocator_share_its_recycle_budget_and_a_closed_cache_gives_its_share_back()
    {
        using PageAllocator allocator = Leaks.NewAllocator(4 << 20);
        Assert.Equal(PageRecycler.Capacity * Environment.ProcessorCount, allocator.RecycleBudget);
        Assert.Equal(PageRecycler.Capacity, allocator.RecycleLimit);

        var cache = new PageFragCache(allocator);
        Assert.Equal(PageRecycler.Capacity, allocator.RecycleLimit);

        // As many caches again as the budget has blocks: every cache keeps one slot.
        var others = new List<PageFragCache>();
        for (int i = 0; i < allocator.RecycleBudget; i++)
        {
            others.Add(new PageFragCache(allocator));
        }

        Assert.Equal(1, allocator.RecycleLimit);

        // Three pages whose last fragments another thread frees: one is parked, the other two go to the per-CPU lists.
        List<PageFragment> first = FillPages(cache, 3, out PageFragment next);
        FreeOnOtherThread(first);
        Assert.Equal(1, allocator.RecycledBlocks);
        PageAllocatorStats stats = allocator.GetStats();
        Assert.True(stats.IsConsistent);
        Assert.Equal(8, stats.PagesInUse); // only the current page is charged
        Assert.True(stats.CachedPages >= 3 * 8);

        // Closing the other caches hands their shares back: the cache may park in all its slots again.
        foreach (PageFragCache other in others)
        {
            other.Dispose();
        }

        Assert.Equal(Math.Min(PageRecycler.Capacity, allocator.RecycleBudget), allocator.RecycleLimit);
        var second = new List<PageFragment> { next };
        for (int i = 1; i < PerPage; i++)
        {
            Assert.True(cache.TryAlloc(Frag, out PageFragment f));
            second.Add(f);
        }

        second.AddRange(FillPages(cache, 2, out PageFragment last));
        Assert.Equal(0, allocator.RecycledBlocks); // the refills took the parked page first
        FreeOnOtherThread(second);
        Assert.Equal(3, allocator.RecycledBlocks);
        Assert.True(allocator.GetStats().IsConsistent);

        PageFragCache.Free(last);
        cache.Dispose();
        Assert.Equal(0, allocator.RecycledBlocks);
        Assert.Equal(PageRecycler.Capacity, allocator.RecycleLimit);
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_limit_that_shrinks_leaves_blocks_parked_above_it_for_the_next_refills_and_the_drain()
    {
        using PageAllocator allocator = Leaks.NewAllocator(4 << 20);
        var cache = new PageFragCache(allocator);
        List<PageFragment> first = FillPages(cache, 4, out PageFragment next);
        FreeOnOtherThread(first);
        Assert.Equal(4, allocator.RecycledBlocks);

        // Other caches arrive: the limit drops to one, the four parked blocks stay where they are.
        var others = new List<PageFragCache>();
        for (int i = 0; i < allocator.RecycleBudget; i++)
        {
            others.Add(new PageFragCache(allocator));
        }

        Assert.Equal(1, allocator.RecycleLimit);
        Assert.Equal(4, allocator.RecycledBlocks);

        // The refills take them (slots above the limit included), each in a new generation.
        var second = new List<PageFragment> { next };
        for (int i = 1; i < PerPage; i++)
        {
            Assert.True(cache.TryAlloc(Frag, out PageFragment f));
            second.Add(f);
        }

        second.AddRange(FillPages(cache, 2, out PageFragment last));
        Assert.Equal(1, allocator.RecycledBlocks); // three refills took three of the four
        Assert.Equal(3, cache.PagesRecycled);
        Assert.Throws<PageFragDoubleFreeException>(() => PageFragCache.Free(first[0]));

        // The drain takes the rest.
        allocator.DrainPerCpuLists();
        Assert.Equal(0, allocator.RecycledBlocks);
        FreeOnOtherThread(second);
        Assert.Equal(1, allocator.RecycledBlocks);
        PageFragCache.Free(last);
        foreach (PageFragCache other in others)
        {
            other.Dispose();
        }

        cache.Dispose();
        Assert.Equal(0, allocator.RecycledBlocks);
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void DiscardFreeMemory_gives_back_the_memory_of_parked_pages()
    {
        if (!OperatingSystem.IsLinux())
        {
            return;
        }

        using PageAllocator allocator = Leaks.NewAllocator(4 << 20);
        var cache = new PageFragCache(allocator);
        List<PageFragment> first = FillPages(cache, 2, out PageFragment next);
        foreach (PageFragment f in first)
        {
            f.Span.Fill(0x5A); // resident
        }

        FreeOnOtherThread(first);
        Assert.Equal(2, allocator.RecycledBlocks);

        long given = allocator.DiscardFreeMemory();
        Assert.Equal(0, allocator.RecycledBlocks);
        Assert.True(given >= 2 * 32768, $"{given} bytes given back");

        // The parked pages were free: the next refills read zeros there, and the cache still works.
        for (int i = 1; i < PerPage; i++)
        {
            Assert.True(cache.TryAlloc(Frag, out PageFragment f));
            PageFragCache.Free(f);
        }

        PageFragCache.Free(next);
        cache.Dispose();
        Leaks.AssertNone(allocator);
    }
}
