using System.Runtime.InteropServices;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;
using static PageFrag.Tests.Pages.PageTestKit;

namespace PageFrag.Tests.Pages;

public class AddressLookupTests
{
    [Fact]
    public void Any_address_inside_an_order_3_block_finds_its_head_page_including_tail_pages()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        Page neighbour = Alloc(allocator, 3);
        Page block = Alloc(allocator, 3);
        Assert.NotEqual(neighbour, block);

        for (int pageIndex = 0; pageIndex < 8; pageIndex++)
        {
            foreach (int offset in (int[])[0, 1, 2048, 4095])
            {
                nint address = block.Address + (pageIndex * 4096) + offset;
                Assert.True(PageAllocator.TryGetPage(address, out Page found), $"page {pageIndex} offset {offset}");
                Assert.Equal(block, found);
                Assert.Equal(block.Address, found.Address);
                Assert.Equal(3, found.Order);
                Assert.Same(allocator, found.Allocator);
            }
        }

        // The first byte past the block belongs to the other block or to nothing, never to this one.
        if (PageAllocator.TryGetPage(block.Address + block.Length, out Page after))
        {
            Assert.NotEqual(block, after);
        }

        allocator.FreePages(neighbour);
        allocator.FreePages(block);
        AssertClean(allocator);
    }

    [Fact]
    public void Neighbouring_order_0_pages_resolve_to_themselves()
    {
        using PageAllocator allocator = OneArena();
        var pages = new List<Page>();
        for (int i = 0; i < 16; i++)
        {
            pages.Add(Alloc(allocator, 0));
        }

        foreach (Page page in pages)
        {
            Assert.True(PageAllocator.TryGetPage(page.Address + 4095, out Page found));
            Assert.Equal(page, found);
            Assert.Equal(0, found.Order);
        }

        foreach (Page page in pages)
        {
            allocator.FreePages(page);
        }

        AssertClean(allocator);
    }

    [Fact]
    public void Lookup_finds_the_allocator_that_owns_the_address()
    {
        using PageAllocator first = Leaks.NewAllocator();
        using PageAllocator second = Leaks.NewAllocator();
        Page a = Alloc(first, 0);
        Page b = Alloc(second, 0);
        Assert.True(PageAllocator.TryGetPage(a.Address + 10, out Page foundA));
        Assert.True(PageAllocator.TryGetPage(b.Address + 10, out Page foundB));
        Assert.Same(first, foundA.Allocator);
        Assert.Same(second, foundB.Allocator);
        first.FreePages(a);
        second.FreePages(b);
        AssertClean(first);
        AssertClean(second);
    }

    [Fact]
    public unsafe void Addresses_of_ordinary_arrays_stack_memory_and_nonsense_are_not_found()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        Page page = Alloc(allocator, 0);

        byte[] plain = new byte[8192];
        fixed (byte* p = plain)
        {
            AssertNotFound((nint)p);
            AssertNotFound((nint)(p + 4096));
        }

        byte* stack = stackalloc byte[64];
        AssertNotFound((nint)stack);
        AssertNotFound(0);
        AssertNotFound(-1);
        AssertNotFound(nint.MinValue);
        AssertNotFound(nint.MaxValue);
        AssertNotFound(unchecked((nint)(1L << 60)));

        allocator.FreePages(page);
        AssertClean(allocator);
    }

    [Fact]
    public void The_bytes_just_before_and_after_an_arena_are_not_found()
    {
        using PageAllocator allocator = OneArena();
        Page whole = Alloc(allocator, 4);
        Assert.Equal(whole.Arena!.BaseAddress, whole.Address);

        // The alignment slack and the array header around the arena's pages belong to no page.
        AssertNotFound(whole.Address - 1);
        AssertNotFound(whole.Address + SmallArena);
        Assert.True(PageAllocator.TryGetPage(whole.Address + SmallArena - 1, out Page last));
        Assert.Equal(whole, last);
        allocator.FreePages(whole);
        AssertClean(allocator);
    }

    [Fact]
    public void Addresses_stop_resolving_after_Dispose_yet_held_pages_stay_readable_and_can_be_freed()
    {
        PageAllocator allocator = Leaks.NewAllocator();
        Page page = Alloc(allocator, 1);
        page.Span.Fill(7);
        nint address = page.Address;
        allocator.Dispose();

        // The handle keeps the arena array alive, so the address cannot be reused by another arena meanwhile.
        AssertNotFound(address);
        AssertNotFound(address + 5000);
        Assert.True(page.Span.IndexOfAnyExcept((byte)7) < 0);
        Assert.Equal(2, allocator.PagesInUse);

        allocator.FreePages(page);
        PageAllocatorStats stats = allocator.GetStats();
        Assert.Equal(0, stats.Arenas);
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Addresses_of_a_trimmed_arena_are_not_found()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        Page page = Alloc(allocator, 0);
        nint address = page.Address;
        allocator.FreePages(page);
        Assert.Equal(1, allocator.Trim());

        // The stale handle keeps the old array alive: no new arena can take its address range.
        AssertNotFound(address);
        GC.KeepAlive(page.Arena);
        AssertClean(allocator);
    }

    [Fact]
    public void The_address_registry_stays_small_however_many_arenas_exist()
    {
        // Eight 16 MiB arenas: 128 MiB of address space over 32 or more slots of 4 MiB.
        using var allocator = new PageAllocator(new PageAllocatorOptions { ArenaSize = 16 << 20 });
        var blocks = new List<Page>();
        for (int i = 0; i < 8; i++)
        {
            blocks.Add(Alloc(allocator, 12));
        }

        foreach (Page block in blocks)
        {
            Assert.True(PageAllocator.TryGetPage(block.Address + block.Length - 1, out Page found));
            Assert.Equal(block, found);
        }

        // A flat table over the whole address space was 64 MiB of references, all of them scanned (and so
        // made resident) by every full GC. The tables on the paths of these arenas are a few hundred KB.
        Assert.InRange(ArenaRegistry.TableBytes(), 1, 1 << 20);
        blocks.ForEach(allocator.FreePages);
        AssertClean(allocator);
    }

    private static void AssertNotFound(nint address)
    {
        Assert.False(PageAllocator.TryGetPage(address, out Page page), $"0x{address:x} was found");
        Assert.True(page.IsEmpty);
    }
}
