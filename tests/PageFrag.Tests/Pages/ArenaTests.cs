using System.Runtime.InteropServices;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;
using static PageFrag.Tests.Pages.PageTestKit;

namespace PageFrag.Tests.Pages;

public class ArenaTests
{
    [Fact]
    public unsafe void Page_addresses_do_not_move_across_compacting_full_collections()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        Page page = Alloc(allocator, 2);
        nint before = page.Address;
        page.Span.Fill(0x5A);

        for (int round = 0; round < 3; round++)
        {
            // Garbage in front of the arena gives a compacting collection a reason to slide objects down.
            for (int i = 0; i < 1000; i++)
            {
                GC.KeepAlive(new byte[100]);
            }

            GC.Collect(2, GCCollectionMode.Forced, blocking: true, compacting: true);
            GC.WaitForPendingFinalizers();
            Assert.Equal(before, page.Address);
            fixed (byte* p = page.Span)
            {
                Assert.Equal(before, (nint)p);
            }
        }

        Assert.Equal(0x5A, *(byte*)before);
        Assert.Equal(0x5A, *((byte*)before + page.Length - 1));
        allocator.FreePages(page);
        AssertClean(allocator);
    }

    [Fact]
    public unsafe void Page_memory_is_a_segment_of_a_pinned_heap_array_at_the_page_address()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        Page page = Alloc(allocator, 1);

        // Sockets need TryGetArray to succeed; the array must live on the pinned object heap (reported as gen 2).
        Assert.True(MemoryMarshal.TryGetArray(page.Memory, out ArraySegment<byte> segment));
        Assert.NotNull(segment.Array);
        Assert.Equal(GC.MaxGeneration, GC.GetGeneration(segment.Array));
        fixed (byte* start = segment.Array)
        {
            Assert.Equal(page.Address, (nint)(start + segment.Offset));
        }

        Assert.Equal(page.Length, segment.Count);
        allocator.FreePages(page);
        AssertClean(allocator);
    }

    [Theory]
    [InlineData(32 * 1024)]
    [InlineData(64 * 1024)]
    [InlineData(256 * 1024)]
    public void Every_block_of_every_order_starts_on_a_4096_byte_address_and_on_a_multiple_of_its_size_within_the_arena(int arenaSize)
    {
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize);
        for (int order = 0; order <= allocator.MaxOrder; order++)
        {
            var held = new List<Page>();
            for (int i = 0; i < 3; i++)
            {
                Page page = Alloc(allocator, order);
                held.Add(page);
                Assert.Equal(0, page.Address % PageConstants.PageSize);
                Assert.Equal(0, (page.Address - page.Arena!.BaseAddress) % (PageConstants.PageSize << order));
            }

            foreach (Page page in held)
            {
                allocator.FreePages(page);
            }
        }

        AssertClean(allocator);
    }

    [Fact]
    public void The_default_arena_is_4_MiB_with_blocks_up_to_order_10()
    {
        using var allocator = new PageAllocator();
        Assert.Equal(4 << 20, PageAllocatorOptions.DefaultArenaSize);
        Assert.Equal(PageAllocatorOptions.DefaultArenaSize, allocator.Options.ArenaSize);
        Assert.Equal(10, allocator.MaxOrder);

        Page page = Alloc(allocator, 10);
        Assert.Equal(4 << 20, page.Length);
        PageAllocatorStats stats = allocator.GetStats();
        Assert.Equal(1, stats.Arenas);
        Assert.Equal([1024], stats.PagesPerArena);
        Assert.Equal(1024, stats.TotalPages);
        Assert.Equal(-1, stats.MaxPages);
        allocator.FreePages(page);
        AssertClean(allocator);
    }

    [Theory]
    [InlineData(32 * 1024, 3)]
    [InlineData(64 * 1024, 4)]
    [InlineData(1024 * 1024, 8)]
    public void The_arena_size_sets_the_page_count_and_the_highest_order(int arenaSize, int maxOrder)
    {
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize);
        Assert.Equal(maxOrder, allocator.MaxOrder);
        Page whole = Alloc(allocator, maxOrder);
        Assert.Equal(arenaSize, whole.Length);
        Page second = Alloc(allocator, 0);

        PageAllocatorStats stats = allocator.GetStats();
        Assert.Equal(2, stats.Arenas);
        Assert.Equal([arenaSize / 4096, arenaSize / 4096], stats.PagesPerArena);
        Assert.Equal(maxOrder + 1, stats.FreeBlocksPerOrder.Count);
        allocator.FreePages(whole);
        allocator.FreePages(second);
        AssertClean(allocator);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    [InlineData(5)]
    [InlineData(6)]
    public unsafe void Span_memory_and_address_cover_the_same_4096_shl_order_bytes(int order)
    {
        using PageAllocator allocator = Leaks.NewAllocator(256 * 1024);
        Page page = Alloc(allocator, order);
        int expected = 4096 << order;
        Assert.Equal(order, page.Order);
        Assert.Equal(expected, page.Length);
        Assert.Equal(expected, page.Span.Length);
        Assert.Equal(expected, page.Memory.Length);

        page.Span[0] = 1;
        page.Span[^1] = 2;
        Assert.Equal(1, page.Memory.Span[0]);
        Assert.Equal(2, page.Memory.Span[^1]);
        Assert.Equal(1, *(byte*)page.Address);
        Assert.Equal(2, *((byte*)page.Address + expected - 1));
        allocator.FreePages(page);
        AssertClean(allocator);
    }

    [Fact]
    public void Blocks_held_at_the_same_time_never_overlap()
    {
        using PageAllocator allocator = Leaks.NewAllocator(128 * 1024);
        var held = new List<Page>();
        int[] orders = [0, 3, 1, 0, 2, 4, 0, 1, 3, 2, 0, 0, 1, 4, 2];
        for (int i = 0; i < orders.Length; i++)
        {
            Page page = Alloc(allocator, orders[i]);
            page.Span.Fill((byte)(i + 1));
            held.Add(page);
        }

        for (int i = 0; i < held.Count; i++)
        {
            Assert.True(held[i].Span.IndexOfAnyExcept((byte)(i + 1)) < 0, $"block {i} was overwritten by another block");
        }

        held.Sort((a, b) => a.Address.CompareTo(b.Address));
        for (int i = 1; i < held.Count; i++)
        {
            Assert.True(held[i - 1].Address + held[i - 1].Length <= held[i].Address, $"{held[i - 1]} overlaps {held[i]}");
        }

        foreach (Page page in held)
        {
            allocator.FreePages(page);
        }

        AssertClean(allocator);
    }
}
