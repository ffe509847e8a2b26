using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;
using static PageFrag.Tests.Pages.PageTestKit;

namespace PageFrag.Tests.Pages;

public class PerCpuListTests
{
    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public void Freeing_a_block_of_order_0_to_3_parks_it_on_a_per_CPU_list_until_a_drain(int order)
    {
        using PageAllocator allocator = OneArena();
        Page page = Alloc(allocator, order);
        PageAllocatorStats stats = allocator.GetStats();
        Assert.True(stats.IsConsistent);
        Assert.Equal(1L << order, stats.PagesInUse);

        allocator.FreePages(page);
        stats = allocator.GetStats();
        Assert.True(stats.IsConsistent);
        Assert.Equal(0, stats.PagesInUse);

        // A refill batch is 32 pages' worth, more than the 16-page arena: the whole arena is now parked.
        Assert.Equal(16, stats.CachedPages);
        Assert.Equal(0, stats.FreePages);

        allocator.DrainPerCpuLists();
        stats = allocator.GetStats();
        Assert.True(stats.IsConsistent);
        Assert.Equal(0, stats.CachedPages);
        Assert.Equal(16, stats.FreePages);
        Assert.Equal(Blocks(5, (4, 1)), stats.FreeBlocksPerOrder);
        AssertClean(allocator);
    }

    [Fact]
    public void Per_CPU_lists_spill_to_the_buddy_lists_beyond_their_high_mark()
    {
        using PageAllocator allocator = OneArena(1024 * 1024);
        var pages = new List<Page>();
        for (int i = 0; i < 256; i++)
        {
            pages.Add(Alloc(allocator, 0));
        }

        foreach (Page page in pages)
        {
            allocator.FreePages(page);
        }

        // Each CPU's order-0 list holds at most 96 pages (3 batches) before it gives a batch back.
        PageAllocatorStats stats = allocator.GetStats();
        Assert.True(stats.IsConsistent);
        Assert.True(stats.CachedPages <= 96L * Environment.ProcessorCount, $"{stats.CachedPages} pages parked");
        Assert.Equal(256, stats.CachedPages + stats.FreePages);
        AssertClean(allocator);
    }

    [Fact]
    public void Stats_add_up_after_every_step_of_a_mixed_sequence()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        var held = new List<Page>();
        int[] orders = [0, 0, 1, 3, 2, 4, 0, 3, 1, 1, 2, 0];
        long expectedInUse = 0;
        foreach (int order in orders)
        {
            held.Add(Alloc(allocator, order));
            expectedInUse += 1L << order;
            PageAllocatorStats stats = allocator.GetStats();
            Assert.True(stats.IsConsistent, $"after allocating order {order}: {stats}");
            Assert.Equal(expectedInUse, stats.PagesInUse);
        }

        for (int i = held.Count - 1; i >= 0; i -= 2)
        {
            allocator.FreePages(held[i]);
            expectedInUse -= held[i].Length / 4096;
            held.RemoveAt(i);
            PageAllocatorStats stats = allocator.GetStats();
            Assert.True(stats.IsConsistent, stats.ToString());
            Assert.Equal(expectedInUse, stats.PagesInUse);
        }

        allocator.DrainPerCpuLists();
        Assert.True(allocator.GetStats().IsConsistent);
        foreach (Page page in held)
        {
            allocator.FreePages(page);
        }

        AssertClean(allocator);
        Assert.Equal(orders.Length, allocator.GetStats().Allocations);
    }

    [Fact]
    public void An_opportunistic_allocation_does_not_drain_per_CPU_lists_but_an_ordinary_one_does()
    {
        using PageAllocator allocator = OneArena();
        allocator.FreePages(Alloc(allocator, 0));
        Assert.Equal(16, allocator.GetStats().CachedPages);

        // All 16 pages are free but parked: only a draining allocation can merge them into an order-4 block.
        AssertAllocFails(allocator, 4, AllocFlags.Opportunistic);
        Assert.Equal(16, allocator.GetStats().CachedPages);

        Page whole = Alloc(allocator, 4);
        Assert.Equal(0, allocator.GetStats().CachedPages);
        allocator.FreePages(whole);
        AssertClean(allocator);
    }
}
