using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;
using static PageFrag.Tests.Pages.PageTestKit;

namespace PageFrag.Tests.Pages;

public class BuddyTests
{
    [Fact]
    public void Taking_one_page_from_a_fresh_arena_leaves_one_free_block_of_each_lower_order_at_its_buddy_index()
    {
        using PageAllocator owner = Leaks.NewAllocator();

        // The arena alone (not registered, no per-CPU list in between) shows the exact buddy split.
        var arena = new Arena(owner, id: -1, SmallArena);
        Assert.Equal(4, arena.MaxOrder);
        Assert.Equal(1, arena.CountFreeBlocks(4));

        Assert.True(arena.TryTake(0, out int index));
        Assert.Equal(0, index);
        Assert.Equal(15, arena.FreePages);
        for (int order = 0; order <= 3; order++)
        {
            Assert.Equal(1, arena.CountFreeBlocks(order));
            int buddy = 1 << order;
            Assert.Equal(PageFlags.BuddyFree, arena.Pages[buddy].Flags);
            Assert.Equal(order, arena.Pages[buddy].Order);
        }

        Assert.Equal(0, arena.CountFreeBlocks(4));

        arena.Give(0, 0);
        Assert.True(arena.IsEntirelyFree);
        Assert.Equal(1, arena.CountFreeBlocks(4));
        for (int order = 0; order <= 3; order++)
        {
            Assert.Equal(0, arena.CountFreeBlocks(order));
        }
    }

    [Fact]
    public void A_block_merges_only_once_its_buddy_of_the_same_order_is_free()
    {
        using PageAllocator owner = Leaks.NewAllocator();
        var arena = new Arena(owner, id: -1, SmallArena);
        Assert.True(arena.TryTake(0, out int first));
        Assert.True(arena.TryTake(0, out int second));
        Assert.True(arena.TryTake(1, out int pair));
        Assert.Equal((0, 1, 2), (first, second, pair));

        // Page 1's buddy (page 0) is in use: page 1 stays an order-0 block.
        arena.Give(second, 0);
        Assert.Equal(1, arena.CountFreeBlocks(0));
        Assert.Equal(0, arena.CountFreeBlocks(1));

        // Page 0 joins page 1 into an order-1 block, whose buddy (pages 2-3) is still in use.
        arena.Give(first, 0);
        Assert.Equal(0, arena.CountFreeBlocks(0));
        Assert.Equal(1, arena.CountFreeBlocks(1));
        Assert.Equal(1, arena.CountFreeBlocks(2));
        Assert.Equal(0, arena.CountFreeBlocks(4));

        arena.Give(pair, 1);
        Assert.True(arena.IsEntirelyFree);
        Assert.Equal(1, arena.CountFreeBlocks(4));
    }

    [Fact]
    public void An_order_4_block_from_a_fresh_256_KiB_arena_splits_it_and_merges_back_on_free_without_a_per_CPU_list()
    {
        using PageAllocator allocator = OneArena(256 * 1024);
        Assert.Equal(6, allocator.MaxOrder);

        Page page = Alloc(allocator, 4);
        Assert.Equal(Blocks(7, (4, 1), (5, 1)), FreeBlocks(allocator));
        PageAllocatorStats stats = allocator.GetStats();
        Assert.Equal(16, stats.PagesInUse);
        Assert.Equal(48, stats.FreePages);
        Assert.Equal(0, stats.CachedPages);

        // Orders above 3 bypass the per-CPU lists: no drain needed to see the merge.
        allocator.FreePages(page);
        Assert.Equal(Blocks(7, (6, 1)), FreeBlocks(allocator));
        Assert.Equal(0, allocator.GetStats().CachedPages);
        AssertClean(allocator);
    }

    [Fact]
    public void One_order_0_page_from_a_fresh_1_MiB_arena_pulls_a_32_page_batch_and_everything_merges_back_after_a_drain()
    {
        using PageAllocator allocator = OneArena(1024 * 1024);
        Page page = Alloc(allocator, 0);

        // The refill took pages 0..31 one by one (a 32-page batch): what is left is 32@32, 64@64 and 128@128.
        PageAllocatorStats stats = allocator.GetStats();
        Assert.Equal(1, stats.PagesInUse);
        Assert.Equal(31, stats.CachedPages);
        Assert.Equal(224, stats.FreePages);
        Assert.Equal(Blocks(9, (5, 1), (6, 1), (7, 1)), stats.FreeBlocksPerOrder);

        allocator.FreePages(page);
        stats = allocator.GetStats();
        Assert.Equal(32, stats.CachedPages);
        Assert.Equal(Blocks(9, (5, 1), (6, 1), (7, 1)), stats.FreeBlocksPerOrder);

        allocator.DrainPerCpuLists();
        Assert.Equal(Blocks(9, (8, 1)), FreeBlocks(allocator));
        AssertClean(allocator);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    public void Every_order_from_0_to_MaxOrder_can_be_allocated_from_a_single_arena(int order)
    {
        using PageAllocator allocator = OneArena();
        Page page = Alloc(allocator, order);
        Assert.Equal(order, page.Order);
        Assert.Equal(4096 << order, page.Length);
        Assert.Equal(1, page.RefCount);
        Assert.Equal(1L << order, allocator.PagesInUse);
        Assert.Equal(1, allocator.GetStats().Allocations);
        allocator.FreePages(page);
        AssertClean(allocator);
    }

    [Fact]
    public void Blocks_of_orders_3_2_1_0_and_0_tile_a_64_KiB_arena_exactly()
    {
        using PageAllocator allocator = OneArena();
        Page[] pages = [Alloc(allocator, 3), Alloc(allocator, 2), Alloc(allocator, 1), Alloc(allocator, 0), Alloc(allocator, 0)];

        Assert.Equal(16, allocator.PagesInUse);
        AssertAllocFails(allocator, 0);
        long covered = pages.Sum(p => (long)p.Length);
        Assert.Equal(SmallArena, covered);
        Array.Sort(pages, (a, b) => a.Address.CompareTo(b.Address));
        for (int i = 1; i < pages.Length; i++)
        {
            Assert.Equal(pages[i - 1].Address + pages[i - 1].Length, pages[i].Address);
        }

        foreach (Page page in pages)
        {
            allocator.FreePages(page);
        }

        AssertClean(allocator);
        Assert.Equal(Blocks(5, (4, 1)), FreeBlocks(allocator));
    }

    [Fact]
    public void High_orders_fail_while_only_scattered_single_pages_are_free_and_succeed_once_their_buddies_return()
    {
        using PageAllocator allocator = OneArena();
        var pages = new List<Page>();
        for (int i = 0; i < 16; i++)
        {
            pages.Add(Alloc(allocator, 0));
        }

        pages.Sort((a, b) => a.Address.CompareTo(b.Address));
        for (int i = 0; i < 16; i += 2)
        {
            allocator.FreePages(pages[i]);
        }

        allocator.DrainPerCpuLists();
        Assert.Equal(Blocks(5, (0, 8)), FreeBlocks(allocator));

        // Eight pages are free, well within the limit, but no two are buddies and the arena cannot grow.
        for (int order = 1; order <= 4; order++)
        {
            PageAllocatorStats before = allocator.GetStats();
            AssertAllocFails(allocator, order);
            AssertUnchanged(before, allocator.GetStats(), addedFailures: 1);
        }

        Assert.Equal(1, allocator.GetStats().Arenas);
        allocator.FreePages(Alloc(allocator, 0));

        // Returning pages 1 and 3 rebuilds the order-2 block at pages 0-3.
        allocator.FreePages(pages[1]);
        allocator.FreePages(pages[3]);
        Page quad = Alloc(allocator, 2);
        Assert.Equal(pages[0].Address, quad.Address);
        AssertAllocFails(allocator, 3);

        allocator.FreePages(quad);
        for (int i = 5; i < 16; i += 2)
        {
            allocator.FreePages(pages[i]);
        }

        Page whole = Alloc(allocator, 4);
        Assert.Equal(SmallArena, whole.Length);
        allocator.FreePages(whole);
        AssertClean(allocator);
        Assert.Equal(5, allocator.GetStats().Failures);
    }
}
