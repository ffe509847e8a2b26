using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;
using static PageFrag.Tests.Pages.PageTestKit;

namespace PageFrag.Tests.Pages;

public class RefCountTests
{
    [Fact]
    public void A_block_returns_to_the_allocator_only_when_its_last_reference_is_dropped()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        Page page = Alloc(allocator, 2);
        Assert.Equal(1, page.RefCount);
        page.AddRef();
        page.AddRef();
        Assert.Equal(3, page.RefCount);

        allocator.FreePages(page);
        allocator.FreePages(page);
        Assert.Equal(1, page.RefCount);
        Assert.Equal(4, allocator.PagesInUse);
        Assert.True(PageAllocator.TryGetPage(page.Address, out Page found));
        Assert.Equal(page, found);

        allocator.FreePages(page);
        Assert.Equal(0, page.RefCount);
        Assert.Equal(0, allocator.PagesInUse);
        AssertClean(allocator);
    }

    [Fact]
    public void A_reference_taken_through_an_address_lookup_keeps_the_block_alive()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        Page page = Alloc(allocator, 3);
        Assert.True(PageAllocator.TryGetPage(page.Address + 20000, out Page viaAddress));
        viaAddress.AddRef();
        allocator.FreePages(page);
        Assert.Equal(8, allocator.PagesInUse);
        allocator.FreePages(viaAddress);
        AssertClean(allocator);
    }

    [Fact]
    public void Freeing_an_empty_page_throws_ArgumentException_and_changes_nothing()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        Page held = Alloc(allocator, 0);

        // A real failed allocation's handle is as empty as default: the arena cannot give a whole order-4 block.
        Assert.False(allocator.TryAllocPages(4, AllocFlags.Opportunistic, out Page failed));
        Assert.True(failed.IsEmpty);
        PageAllocatorStats before = allocator.GetStats();

        foreach (Page empty in (Page[])[default, failed])
        {
            ArgumentException ex = Assert.Throws<ArgumentException>(() => allocator.FreePages(empty));
            Assert.Equal("page", ex.ParamName);
            Assert.StartsWith("The page is empty: it came from a failed or default allocation.", ex.Message);
        }

        AssertUnchanged(before, allocator.GetStats());
        allocator.FreePages(held);
        allocator.FreePages(Alloc(allocator, 1));
        AssertClean(allocator);
    }

    [Fact]
    public void Freeing_a_page_of_another_allocator_throws_ArgumentException_and_leaves_both_intact()
    {
        using PageAllocator mine = Leaks.NewAllocator();
        using PageAllocator theirs = Leaks.NewAllocator();
        Page foreign = Alloc(theirs, 1);
        PageAllocatorStats mineBefore = mine.GetStats();
        PageAllocatorStats theirsBefore = theirs.GetStats();

        ArgumentException ex = Assert.Throws<ArgumentException>(() => mine.FreePages(foreign));
        Assert.Equal("page", ex.ParamName);
        Assert.StartsWith("The page belongs to another PageAllocator.", ex.Message);

        Assert.Equal(1, foreign.RefCount);
        AssertUnchanged(mineBefore, mine.GetStats());
        AssertUnchanged(theirsBefore, theirs.GetStats());
        mine.FreePages(Alloc(mine, 0));
        theirs.FreePages(foreign);
        AssertClean(mine);
        AssertClean(theirs);
    }

    [Theory]
    [InlineData(0, false)]
    [InlineData(3, false)]
    [InlineData(3, true)]
    [InlineData(4, false)]
    public void Freeing_a_block_twice_throws_PageFragDoubleFreeException_and_leaves_the_counts_intact(int order, bool drainFirst)
    {
        using PageAllocator allocator = Leaks.NewAllocator(128 * 1024);
        Page other = Alloc(allocator, 0);
        Page page = Alloc(allocator, order);
        allocator.FreePages(page);
        if (drainFirst)
        {
            allocator.DrainPerCpuLists();
        }

        PageAllocatorStats before = allocator.GetStats();
        PageFragDoubleFreeException ex = Assert.Throws<PageFragDoubleFreeException>(() => allocator.FreePages(page));
        Assert.Equal("The page is not allocated: it was already returned to the allocator.", ex.Message);
        Assert.IsAssignableFrom<InvalidOperationException>(ex);

        PageAllocatorStats after = allocator.GetStats();
        AssertUnchanged(before, after);
        Assert.Equal(before.CachedPages, after.CachedPages);
        Assert.Equal(before.FreeBlocksPerOrder, after.FreeBlocksPerOrder);
        Assert.Equal(0, page.RefCount);

        // Still works, and the freed block is handed out once, not twice.
        Page again = Alloc(allocator, order);
        AssertDisjoint(again, other);
        allocator.FreePages(again);
        allocator.FreePages(other);
        AssertClean(allocator);
    }

    [Fact]
    public void Taking_a_reference_on_a_freed_page_throws_InvalidOperationException_and_leaves_it_free()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        Page page = Alloc(allocator, 1);
        allocator.FreePages(page);
        PageAllocatorStats before = allocator.GetStats();

        InvalidOperationException ex = Assert.Throws<InvalidOperationException>(page.AddRef);
        Assert.Equal("Cannot take a reference on a page that has none: it was already freed.", ex.Message);
        Assert.Equal(0, page.RefCount);
        AssertUnchanged(before, allocator.GetStats());
        AssertClean(allocator);
    }

    [Fact]
    public void An_empty_page_reports_IsEmpty_and_throws_on_every_access_to_its_memory()
    {
        Page empty = default;
        Assert.True(empty.IsEmpty);
        Assert.Equal("Page(empty)", empty.ToString());
        const string message = "The page is empty: it came from a failed or default allocation.";
        Assert.Equal(message, Assert.Throws<InvalidOperationException>(empty.AddRef).Message);
        Assert.Equal(message, Assert.Throws<InvalidOperationException>(() => empty.Address).Message);
        Assert.Equal(message, Assert.Throws<InvalidOperationException>(() => empty.Span.Length).Message);
        Assert.Equal(message, Assert.Throws<InvalidOperationException>(() => empty.Memory).Message);
        Assert.Equal(message, Assert.Throws<InvalidOperationException>(() => empty.Allocator).Message);
        Assert.Equal(message, Assert.Throws<InvalidOperationException>(() => empty.RefCount).Message);
    }

    [Fact]
    public void Handles_to_the_same_block_are_equal_and_handles_to_different_blocks_are_not()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        Page a = Alloc(allocator, 0);
        Page b = Alloc(allocator, 0);
        Assert.True(PageAllocator.TryGetPage(a.Address + 1, out Page a2));
        Assert.True(a == a2);
        Assert.Equal(a.GetHashCode(), a2.GetHashCode());
        Assert.True(a != b);
        Assert.False(a.Equals((object)b));
        Assert.NotEqual(default, a);
        Assert.Contains("order 0", a.ToString(), StringComparison.Ordinal);
        allocator.FreePages(a);
        allocator.FreePages(b);
        AssertClean(allocator);
    }

    private static void AssertDisjoint(Page a, Page b) =>
        Assert.True(a.Address + a.Length <= b.Address || b.Address + b.Length <= a.Address, $"{a} overlaps {b}");

    [Fact]
    public void A_stale_handle_cannot_free_the_block_after_it_was_handed_to_a_new_owner()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        Page old = Alloc(allocator, 0);
        allocator.FreePages(old);

        // Order-0 blocks come back LIFO from the per-CPU list: the same block goes to the next owner.
        Page reused = Alloc(allocator, 0);
        Assert.Equal(old.Address, reused.Address);

        var ex = Assert.Throws<PageFragDoubleFreeException>(() => allocator.FreePages(old));
        Assert.Contains("stale", ex.Message);
        Assert.Throws<InvalidOperationException>(() => old.AddRef());
        Assert.Equal(1, reused.RefCount);
        Assert.Equal(1, allocator.PagesInUse);

        allocator.FreePages(reused);
        AssertClean(allocator);
    }
}
