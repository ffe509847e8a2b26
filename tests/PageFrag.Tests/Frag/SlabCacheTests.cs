using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using PageFrag.Frag;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;

namespace PageFrag.Tests.Frag;

/// <summary>
/// The slab cache on one thread: size classes, reuse of freed slots in place, blocks given back when empty,
/// bad input, allocation failure, the views of a fragment, zero allocation, and the safety net.
/// </summary>
public class SlabCacheTests
{
    [Theory]
    [InlineData(1, 16)]
    [InlineData(12, 16)]
    [InlineData(16, 16)]
    [InlineData(17, 32)]
    [InlineData(64, 64)]
    [InlineData(256, 256)]
    [InlineData(257, 288)]
    [InlineData(576, 576)]
    [InlineData(808, 832)]
    [InlineData(1500, 1536)]
    [InlineData(2049, 2304)]
    [InlineData(4096, 4096)]
    public void A_size_takes_the_slot_of_its_class(int size, int slot) => Assert.Equal(slot, SlabCache.SlotSize(size));

    [Fact]
    public void Every_size_gets_a_slot_at_least_as_large_wasting_at_most_an_eighth_above_256_bytes()
    {
        for (int size = 1; size <= SlabCache.MaxSize; size++)
        {
            int slot = SlabCache.SlotSize(size);
            Assert.True(slot >= size && slot % 16 == 0, $"{size} -> {slot}");
            Assert.True(size <= 256 ? slot - size < 16 : (slot - size) * 8 < size, $"{size} -> {slot}");
        }
    }

    [Fact]
    public void Live_fragments_never_overlap_and_keep_their_bytes_until_freed()
    {
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 1 << 20);
        var cache = new SlabCache(allocator);
        var random = new Random(7);
        var live = new List<(SlabFragment Fragment, byte Stamp)>();
        for (int i = 0; i < 3000; i++)
        {
            if (live.Count > 0 && random.Next(3) == 0)
            {
                int k = random.Next(live.Count);
                (SlabFragment f, byte stamp) = live[k];
                Assert.True(f.Span.IndexOfAnyExcept(stamp) < 0, "a live fragment's bytes were overwritten");
                f.Free();
                live[k] = live[^1];
                live.RemoveAt(live.Count - 1);
            }

            int size = random.Next(1, SlabCache.MaxSize + 1) >> random.Next(0, 8);
            Assert.True(cache.TryAlloc(Math.Max(1, size), out SlabFragment fragment));
            Assert.Equal(Math.Max(1, size), fragment.Length);
            Assert.Equal(SlabCache.SlotSize(Math.Max(1, size)), fragment.TrueSize);
            byte b = (byte)(i | 1);
            fragment.Span.Fill(b);
            live.Add((fragment, b));
        }

        var spans = live.Select(l => (Start: (long)l.Fragment.Address, End: (long)l.Fragment.Address + l.Fragment.TrueSize)).OrderBy(s => s.Start).ToArray();
        for (int i = 1; i < spans.Length; i++)
        {
            Assert.True(spans[i].Start >= spans[i - 1].End, "two live fragments share bytes");
        }

        foreach ((SlabFragment f, byte stamp) in live)
        {
            Assert.True(f.Span.IndexOfAnyExcept(stamp) < 0);
            f.Free();
        }

        cache.Dispose();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_freed_slot_is_reused_while_the_rest_of_its_page_lives()
    {
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 1 << 20);
        using var cache = new SlabCache(allocator);
        var fragments = new SlabFragment[64 * 8];
        for (int i = 0; i < fragments.Length; i++)
        {
            Assert.True(cache.TryAlloc(64, out fragments[i]));
        }

        long held = cache.PagesHeld;
        Assert.Equal(8, held);

        // Free one slot in every page, at random, and allocate as many again: no page is added.
        var random = new Random(3);
        for (int round = 0; round < 200; round++)
        {
            int k = random.Next(fragments.Length);
            nint address = fragments[k].Address;
            fragments[k].Free();
            Assert.True(cache.TryAlloc(64, out fragments[k]));
            Assert.Equal(held, cache.PagesHeld);
            Assert.Equal(address, fragments[k].Address);
        }

        foreach (SlabFragment f in fragments)
        {
            f.Free();
        }

        Assert.Equal(held, cache.Trim());
        Assert.Equal(0, cache.PagesHeld);
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Under_random_release_of_an_IMIX_window_the_cache_keeps_about_the_bytes_that_are_live()
    {
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 4 << 20);
        var cache = new SlabCache(allocator);
        int[] mix = [12, 12, 12, 64, 64, 64, 64, 576, 576, 576, 576, 1500];
        const int Window = 4000;
        var random = new Random(11);
        var slots = new SlabFragment[Window];
        long held = 0;
        double worst = 0;
        for (int i = 0; i < Window * 6; i++)
        {
            int k = i < Window ? i : random.Next(Window);
            if (i >= Window)
            {
                held -= slots[k].Length;
                slots[k].Free();
            }

            Assert.True(cache.TryAlloc(mix[random.Next(mix.Length)], out slots[k]));
            held += slots[k].Length;
            if (i >= Window * 2)
            {
                worst = Math.Max(worst, (double)allocator.PagesInUse * PageConstants.PageSize / held);
            }
        }

        // The fragment cache keeps about 4 bytes per byte here (a 32 KiB page lives as long as its longest
        // fragment); reuse in place keeps the live bytes plus the class rounding and one partial block per class.
        Assert.True(worst < 1.3, $"kept {worst:0.000} bytes per byte held");

        foreach (SlabFragment f in slots)
        {
            f.Free();
        }

        cache.Dispose();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Entirely_free_blocks_go_back_to_the_allocator_as_the_cache_moves_on_keeping_at_most_the_one_it_fills()
    {
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 1 << 20);
        using var cache = new SlabCache(allocator);
        var batch = new SlabFragment[1024];

        // FIFO: fill four blocks of 16-byte slots, free them all, fill again. The next fill takes one emptied
        // block at a time and gives back the ones it passes while another is on hand, so the cache holds no
        // more than one fill needs plus the block it fills.
        for (int round = 0; round < 20; round++)
        {
            for (int i = 0; i < batch.Length; i++)
            {
                Assert.True(cache.TryAlloc(16, out batch[i]));
            }

            foreach (SlabFragment f in batch)
            {
                f.Free();
            }

            Assert.True(cache.PagesHeld <= 5, $"round {round}: {cache.PagesHeld} pages held");
            Assert.Equal(cache.PagesHeld, allocator.PagesInUse);
        }

        cache.Trim();
        Assert.Equal(0, cache.PagesHeld);
        Leaks.AssertNone(allocator);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(-1)]
    [InlineData(4097)]
    [InlineData(int.MaxValue)]
    [InlineData(int.MinValue)]
    public void A_size_out_of_range_is_refused_and_leaves_the_cache_working(int size)
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        var cache = new SlabCache(allocator);
        Assert.True(cache.TryAlloc(100, out SlabFragment keep));

        FragKit.Throws<ArgumentOutOfRangeException>(() => cache.TryAlloc(size, out _), "size", "1 to 4096 bytes");
        FragKit.Throws<ArgumentOutOfRangeException>(() => SlabCache.SlotSize(size), "size", "1 to 4096 bytes");

        Assert.True(cache.TryAlloc(100, out SlabFragment next));
        Assert.NotEqual(keep.Address, next.Address);
        keep.Free();
        next.Free();
        cache.Dispose();
        Leaks.AssertNone(allocator);
    }

    [Theory]
    [InlineData(AllocFlags.Opportunistic)]
    [InlineData((AllocFlags)0x100)]
    public void Unsupported_flags_are_refused(AllocFlags flags)
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        FragKit.Throws<ArgumentOutOfRangeException>(() => new SlabCache(allocator, flags), "flags", "only MayUseReserve");
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void An_empty_handle_is_refused_by_free_and_by_every_view()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        using var cache = new SlabCache(allocator);
        SlabFragment empty = default;

        Assert.True(empty.IsEmpty);
        Assert.Equal(0, empty.TrueSize);
        FragKit.Throws<ArgumentException>(() => SlabCache.Free(empty), "fragment", "empty");
        FragKit.Throws<ArgumentException>(() => empty.Free(), "fragment", "empty");
        FragKit.Throws<InvalidOperationException>(() => _ = empty.Span.Length, null, "empty");
        FragKit.Throws<InvalidOperationException>(() => _ = empty.Memory, null, "empty");
        FragKit.Throws<InvalidOperationException>(() => _ = empty.ArraySegment, null, "empty");
        FragKit.Throws<InvalidOperationException>(() => _ = empty.Address, null, "empty");
        Assert.Equal("SlabFragment(empty)", empty.ToString());
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_double_free_throws_and_changes_nothing()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        var cache = new SlabCache(allocator);
        Assert.True(cache.TryAlloc(40, out SlabFragment a));
        SlabFragment copy = a;
        a.Free();

        FragKit.Throws<PageFragDoubleFreeException>(() => copy.Free(), null, "already freed");

        // The slot is free exactly once: the next two allocations get two different slots.
        Assert.True(cache.TryAlloc(40, out SlabFragment b));
        Assert.True(cache.TryAlloc(40, out SlabFragment c));
        Assert.NotEqual(b.Address, c.Address);
        b.Free();
        c.Free();
        cache.Dispose();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_stale_handle_to_a_reused_slot_can_neither_free_nor_touch_the_new_owners_bytes()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        var cache = new SlabCache(allocator);
        // One slot per 4 KiB block: the next allocation reuses the freed slot at once.
        Assert.True(cache.TryAlloc(4096, out SlabFragment first));
        SlabFragment stale = first;
        first.Free();
        Assert.True(cache.TryAlloc(4096, out SlabFragment owner));
        Assert.Equal(stale.Address, owner.Address);
        Assert.NotEqual(stale, owner);
        owner.Span.Fill(0x5A);

        FragKit.Throws<PageFragDoubleFreeException>(() => stale.Free(), null, "stale");
        FragKit.Throws<InvalidOperationException>(() => stale.Span.Fill(0xCC), null, "Use after free");
        FragKit.Throws<InvalidOperationException>(() => _ = stale.Memory, null, "Use after free");
        FragKit.Throws<InvalidOperationException>(() => _ = stale.ArraySegment, null, "Use after free");

        Assert.True(owner.Span.IndexOfAnyExcept((byte)0x5A) < 0);
        owner.Free();
        cache.Dispose();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_handle_kept_after_its_block_went_back_to_the_allocator_is_refused()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        var cache = new SlabCache(allocator);
        Assert.True(cache.TryAlloc(2000, out SlabFragment f));
        SlabFragment stale = f;
        f.Free();
        Assert.True(cache.Trim() > 0);
        Leaks.AssertNone(allocator);

        // The block may now be anyone's: the handle must not reach it.
        Assert.True(allocator.TryAllocPages(3, AllocFlags.None, out Page page));
        FragKit.Throws<PageFragDoubleFreeException>(() => stale.Free(), null, "already freed");
        FragKit.Throws<InvalidOperationException>(() => stale.Span.Fill(1), null, "Use after free");
        allocator.FreePages(page);
        cache.Dispose();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Other_release_paths_cannot_free_a_slab_slot_or_its_block()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        var cache = new SlabCache(allocator);
        Assert.True(cache.TryAlloc(64, out SlabFragment f));
        f.Span.Fill(3);

        // The fragment cache's free by address accepts only pages a fragment cache carves.
        Assert.Throws<ArgumentException>(() => PageFragCache.Free(f.Address));

        // The allocator refuses to free the block under the slab: its reference is the slab's.
        Assert.True(PageAllocator.TryGetPage(f.Address, out Page page));
        Assert.Throws<InvalidOperationException>(() => allocator.FreePages(page));

        Assert.True(f.Span.IndexOfAnyExcept((byte)3) < 0);
        f.Free();
        cache.Dispose();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void After_dispose_the_allocation_side_throws_and_live_fragments_stay_valid_until_their_free_returns_the_block()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        var cache = new SlabCache(allocator);
        Assert.True(cache.TryAlloc(100, out SlabFragment live));
        Assert.True(cache.TryAlloc(100, out SlabFragment freed));
        freed.Free();
        live.Span.Fill(9);

        cache.Dispose();
        cache.Dispose();
        FragKit.Throws<ObjectDisposedException>(() => cache.TryAlloc(100, out _), null, nameof(SlabCache));
        FragKit.Throws<ObjectDisposedException>(() => cache.Trim(), null, nameof(SlabCache));
        Assert.Equal(1, allocator.PagesInUse);
        Assert.True(live.Span.IndexOfAnyExcept((byte)9) < 0);

        live.Free();
        FragKit.Throws<PageFragDoubleFreeException>(() => live.Free(), null, "already freed");
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Allocation_failure_returns_an_empty_fragment_and_corrupts_nothing()
    {
        using PageAllocator allocator = Leaks.NewAllocator(maxBytes: 64 * 1024);
        var cache = new SlabCache(allocator);
        var taken = new List<SlabFragment>();
        SlabFragment fragment;
        while (cache.TryAlloc(4096, out fragment))
        {
            taken.Add(fragment);
        }

        Assert.True(fragment.IsEmpty);
        Assert.Equal(16, taken.Count);
        Assert.False(cache.TryAlloc(4096, out fragment));

        taken[3].Free();
        Assert.True(cache.TryAlloc(4096, out fragment));
        taken[3] = fragment;
        foreach (SlabFragment f in taken)
        {
            f.Free();
        }

        cache.Dispose();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void An_injected_fault_fails_the_allocation_that_needs_a_block_and_the_next_one_succeeds()
    {
        var faults = new FaultInjection { FailEveryNth = 2 };
        using PageAllocator allocator = Leaks.NewAllocator(faults: faults);
        var cache = new SlabCache(allocator);
        int failed = 0;
        var taken = new List<SlabFragment>();
        for (int i = 0; i < 8; i++)
        {
            if (cache.TryAlloc(4096, out SlabFragment f))
            {
                taken.Add(f);
            }
            else
            {
                Assert.True(f.IsEmpty);
                failed++;
            }
        }

        Assert.True(failed > 0 && taken.Count > 0);
        foreach (SlabFragment f in taken)
        {
            f.Free();
        }

        cache.Dispose();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Span_memory_array_segment_and_address_are_the_same_bytes()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        var cache = new SlabCache(allocator);
        Assert.True(cache.TryAlloc(300, out SlabFragment f));
        f.Span.Fill(0x11);
        Assert.Equal(300, f.Memory.Length);
        Assert.True(MemoryMarshal.TryGetArray<byte>(f.Memory, out ArraySegment<byte> viaMemory));
        Assert.Equal(f.ArraySegment, viaMemory);
        Assert.Equal(300, viaMemory.Count);
        Assert.All(viaMemory, b => Assert.Equal(0x11, b));
        unsafe
        {
            fixed (byte* p = f.Span)
            {
                Assert.Equal(f.Address, (nint)p);
            }
        }

        Assert.Equal(0, f.Address % 16);
        Assert.Contains("300 B, truesize 320", f.ToString(), StringComparison.Ordinal);
        f.Free();
        cache.Dispose();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Alloc_and_free_allocate_nothing_on_the_GC_heap_once_warm()
    {
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 1 << 20);
        var cache = new SlabCache(allocator);
        var held = new SlabFragment[512];
        int[] sizes = [12, 64, 576, 1500, 4096];
        var random = new Random(5);
        for (int i = 0; i < held.Length; i++)
        {
            Assert.True(cache.TryAlloc(sizes[i % sizes.Length], out held[i]));
        }

        ZeroAlloc.AssertSteadyState(() =>
        {
            for (int i = 0; i < 2000; i++)
            {
                int k = random.Next(held.Length);
                SlabCache.Free(in held[k]);
                cache.TryAlloc(sizes[k % sizes.Length], out held[k]);
            }
        });

        foreach (SlabFragment f in held)
        {
            f.Free();
        }

        cache.Dispose();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_cache_collected_without_dispose_gives_its_free_blocks_back()
    {
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 1 << 20);
        SlabFragment live = AllocAndForget(allocator);
        for (int i = 0; i < 3 && allocator.PagesInUse > 1; i++)
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
        }

        // Only the block of the fragment still live is left, and its free gives it back.
        Assert.Equal(1, allocator.PagesInUse);
        live.Free();
        Leaks.AssertNone(allocator);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static SlabFragment AllocAndForget(PageAllocator allocator)
    {
        var cache = new SlabCache(allocator);
        for (int i = 0; i < 100; i++)
        {
            Assert.True(cache.TryAlloc(64 + (i * 37 % 3000), out SlabFragment f));
            f.Free();
        }

        Assert.True(cache.TryAlloc(16, out SlabFragment live));
        return live;
    }
}
