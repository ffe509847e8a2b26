using PageFrag.Frag;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;
using static PageFrag.Tests.Pages.PageTestKit;

namespace PageFrag.Tests.Pages;

/// <summary>
/// Natural alignment of buddy blocks (issue 11, kernel fidelity) and the extreme sizes of the page layer's
/// public entry points (issue 11 item 1).
/// </summary>
public class AlignmentAndLimitsTests
{
    /// <summary>The highest order whose blocks are aligned to their own size (docs/kernel-map.md).</summary>
    private const int AlignedOrders = 3;

    private static void AssertNaturallyAligned(Page page, int arenaSize)
    {
        long size = page.Length;
        long guaranteed = page.Order <= AlignedOrders ? size : Math.Min(arenaSize, 4096 << AlignedOrders);
        Assert.True(page.Address % guaranteed == 0, $"order-{page.Order} block at 0x{page.Address:x} is not aligned to {guaranteed}");
    }

    [Theory]
    [InlineData(32 * 1024)]
    [InlineData(64 * 1024)]
    [InlineData(1 << 20)]
    [InlineData(4 << 20)]
    public void Every_block_of_every_order_is_aligned_to_its_size_across_arenas(int arenaSize)
    {
        // Several arenas, each filled with a mix of orders, then each arena's largest block on its own.
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize, maxBytes: 3L * arenaSize);
        var held = new List<Page>();
        var rng = new Random(arenaSize);
        int maxOrder = allocator.MaxOrder;
        int failures = 0;
        while (failures < 50)
        {
            int order = rng.Next(0, Math.Min(maxOrder, AlignedOrders + 2) + 1);
            if (allocator.TryAllocPages(order, AllocFlags.None, out Page p))
            {
                Assert.Equal(order, p.Order);
                AssertNaturallyAligned(p, arenaSize);
                held.Add(p);
            }
            else
            {
                failures++;
            }
        }

        Assert.Equal(3, allocator.GetStats().Arenas);
        for (int order = 0; order <= maxOrder; order++)
        {
            while (allocator.TryAllocPages(order, AllocFlags.None, out Page p))
            {
                AssertNaturallyAligned(p, arenaSize);
                held.Add(p);
            }
        }

        Assert.Equal(0, allocator.GetStats().FreePages);
        foreach (Page p in held)
        {
            allocator.FreePages(p);
        }

        allocator.DrainPerCpuLists();
        for (int arena = 0; arena < 3; arena++)
        {
            Page whole = Alloc(allocator, maxOrder);
            AssertNaturallyAligned(whole, arenaSize);
            held[arena] = whole;
        }

        for (int arena = 0; arena < 3; arena++)
        {
            allocator.FreePages(held[arena]);
        }

        AssertClean(allocator);
    }

    [Fact]
    public void A_fragment_caches_32_KiB_page_is_aligned_to_32_KiB_so_fragments_can_be_aligned_to_it()
    {
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 1 << 20);
        var cache = new PageFragCache(allocator);
        var fragments = new List<PageFragment>();
        for (int i = 0; i < 200; i++)
        {
            Assert.True(cache.TryAlloc(3000, out PageFragment f));
            fragments.Add(f);
            Page page = cache.CurrentPage;
            Assert.Equal(PageConstants.FragCacheMaxOrder, page.Order);
            Assert.Equal(0, page.Address % PageConstants.FragCacheMaxSize);
        }

        foreach (PageFragment f in fragments)
        {
            PageFragCache.Free(f);
        }

        cache.Drain();
        AssertClean(allocator);
    }

    [Fact]
    public void A_1_GiB_arena_hands_out_its_whole_block_and_its_last_byte_is_addressable()
    {
        // 1 GiB of address space; only the pages written below become resident.
        using var allocator = new PageAllocator(new PageAllocatorOptions { ArenaSize = 1 << 30 });
        Assert.Equal(18, allocator.MaxOrder);
        Page whole = Alloc(allocator, 18);
        Assert.Equal(1 << 30, whole.Length);
        Assert.Equal(1 << 30, whole.Span.Length);
        Assert.Equal(1 << 30, whole.Memory.Length);
        AssertNaturallyAligned(whole, 1 << 30);
        whole.Span[^1] = 0x5A;
        Assert.Equal(0x5A, whole.Memory.Span[(1 << 30) - 1]);
        Assert.True(PageAllocator.TryGetPage(whole.Address + (1 << 30) - 1, out Page found));
        Assert.Equal(whole, found);
        allocator.FreePages(whole);

        // Two halves: the upper one starts 512 MiB in, its offsets stay positive.
        Page low = Alloc(allocator, 17);
        Page high = Alloc(allocator, 17);
        Assert.Equal(1L << 29, Math.Abs((long)high.Address - low.Address));
        Page upper = high.Address > low.Address ? high : low;
        upper.Span[^1] = 0x11;
        Assert.Equal(0x11, upper.Memory.Span[^1]);
        Assert.True(System.Runtime.InteropServices.MemoryMarshal.TryGetArray(upper.Memory, out ArraySegment<byte> seg));
        Assert.True(seg.Offset > 0 && (long)seg.Offset + seg.Count <= seg.Array!.Length);
        allocator.FreePages(low);
        allocator.FreePages(high);
        AssertClean(allocator);
    }

    [Theory]
    [InlineData(19)]
    [InlineData(31)]
    [InlineData(32)]
    [InlineData(int.MaxValue)]
    [InlineData(-1)]
    [InlineData(int.MinValue)]
    public void An_order_beyond_a_1_GiB_arenas_18_is_rejected_without_taking_memory(int order)
    {
        using var allocator = new PageAllocator(new PageAllocatorOptions { ArenaSize = 1 << 30 });
        ArgumentOutOfRangeException ex = Assert.Throws<ArgumentOutOfRangeException>(() => allocator.TryAllocPages(order, AllocFlags.None, out _));
        Assert.Equal("order", ex.ParamName);
        Assert.Equal(0, allocator.GetStats().Arenas);
        AssertClean(allocator);
    }

    [Theory]
    [InlineData(32 * 1024)]
    [InlineData(1 << 30)]
    public void A_limit_near_long_MaxValue_with_a_huge_reserve_still_allocates_below_the_watermark(int arenaSize)
    {
        long maxBytes = long.MaxValue - 1;
        long reserve = 1L << 60;
        using var allocator = new PageAllocator(new PageAllocatorOptions { ArenaSize = arenaSize, MaxBytes = maxBytes, ReserveBytes = reserve });
        Assert.Equal(maxBytes / arenaSize * (arenaSize / 4096), allocator.GetStats().MaxPages);
        Assert.Equal(reserve / 4096, allocator.GetStats().ReservePages);
        Page page = Alloc(allocator, 0);
        Assert.False(page.IsPfMemalloc);
        allocator.FreePages(page);
        AssertClean(allocator);
    }

    [Fact]
    public void The_largest_reserve_under_a_limit_near_long_MaxValue_leaves_one_ordinary_page()
    {
        const int arenaSize = 32 * 1024;
        long maxBytes = long.MaxValue - 1;
        long effective = maxBytes / arenaSize * arenaSize;
        using var allocator = new PageAllocator(new PageAllocatorOptions { ArenaSize = arenaSize, MaxBytes = maxBytes, ReserveBytes = effective - 4096 });
        Page ordinary = Alloc(allocator, 0);
        Assert.False(ordinary.IsPfMemalloc);
        AssertAllocFails(allocator, 0);
        Page reserve = Alloc(allocator, 3, AllocFlags.MayUseReserve);
        Assert.True(reserve.IsPfMemalloc);
        allocator.FreePages(ordinary);
        allocator.FreePages(reserve);
        AssertClean(allocator);
    }

    [Fact]
    public void AddRef_at_int_MaxValue_references_throws_instead_of_wrapping_and_changes_nothing()
    {
        using PageAllocator allocator = OneArena();
        Page page = Alloc(allocator, 0);
        Volatile.Write(ref page.Descriptor.RefCount, int.MaxValue); // as if int.MaxValue - 1 AddRefs had been made
        InvalidOperationException ex = Assert.Throws<InvalidOperationException>(page.AddRef);
        Assert.Equal("Cannot take a reference: the page already has int.MaxValue references.", ex.Message);
        Assert.Equal(int.MaxValue, page.RefCount);
        Volatile.Write(ref page.Descriptor.RefCount, 1);
        allocator.FreePages(page);
        AssertClean(allocator);
    }
}
