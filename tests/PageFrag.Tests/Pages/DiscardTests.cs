using PageFrag.Frag;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;
using static PageFrag.Tests.Pages.PageTestKit;

namespace PageFrag.Tests.Pages;

/// <summary>
/// <see cref="PageAllocator.DiscardFreeMemory"/>: free blocks' physical memory goes back to the operating system
/// (Linux), they read zeros afterwards, and nothing anyone holds is ever touched.
/// </summary>
public class DiscardTests
{
    private const int ArenaBytes = 256 * 1024;

    [Fact]
    public void A_discarded_free_block_reads_zeros_when_taken_again_and_its_fragment_states_read_zero()
    {
        using PageAllocator allocator = Leaks.NewAllocator(ArenaBytes, maxBytes: ArenaBytes);
        Page held = Alloc(allocator, 3);
        held.Span.Fill(0xC3);
        Page block = Alloc(allocator, 5);
        int index = block.Index;
        block.Span.Fill(0x5A);

        // Stand-ins for resident state bytes (a free block's are all 0, which would not show whether they were
        // given back): the bytes inside whole system pages must read 0 afterwards, the others stay as they are.
        Arena arena = block.Arena!;
        int first = (index << PageConstants.PageShift) >> Arena.MarkShift;
        int count = (PageConstants.PageSize << 5) >> Arena.MarkShift;
        Span<byte> states = arena.FragStates.AsSpan(first, count);
        states.Fill(0x77);
        allocator.FreePages(block);

        long given = allocator.DiscardFreeMemory();
        if (!PhysicalMemory.IsSupported)
        {
            Assert.Equal(0, given);
            states.Clear();
            allocator.FreePages(held);
            AssertClean(allocator);
            return;
        }

        // Everything free of order 3 or more: the arena but the held block (the per-CPU lists were drained first).
        Assert.Equal(ArenaBytes - (PageConstants.PageSize << 3), given);
        Assert.Equal(given, allocator.BytesDiscarded);
        long pageSize = PhysicalMemory.SystemPageSize;
        long start = arena.FragStatesAddress + first;
        int zeroFrom = (int)(((start + pageSize - 1) & ~(pageSize - 1)) - start);
        int zeroTo = (int)(((start + count) & ~(pageSize - 1)) - start);
        Assert.True(zeroTo - zeroFrom >= count - 2 * pageSize, "the states of an order-5 block span whole system pages");
        Assert.True(states[zeroFrom..zeroTo].IndexOfAnyExcept((byte)0) < 0, "the states of the given-back block read 0");
        Assert.True(states[..zeroFrom].IndexOfAnyExcept((byte)0x77) < 0, "no state byte before the block's whole pages was touched");
        Assert.True(states[zeroTo..].IndexOfAnyExcept((byte)0x77) < 0, "no state byte after the block's whole pages was touched");
        states.Clear();

        Page again = Alloc(allocator, 5);
        Assert.Equal(index, again.Index);
        Assert.True(again.Span.IndexOfAnyExcept((byte)0) < 0, "a given-back block reads zeros");
        Assert.True(held.Span.IndexOfAnyExcept((byte)0xC3) < 0, "a held block keeps its bytes");
        allocator.FreePages(again);
        allocator.FreePages(held);
        AssertClean(allocator);
    }

    [Fact]
    public void A_second_pass_skips_what_the_first_gave_back_until_the_blocks_change()
    {
        using PageAllocator allocator = Leaks.NewAllocator(ArenaBytes, maxBytes: ArenaBytes);
        Page held = Alloc(allocator, 3);
        long first = allocator.DiscardFreeMemory();
        Assert.Equal(0, allocator.DiscardFreeMemory());
        if (PhysicalMemory.IsSupported)
        {
            Assert.Equal(ArenaBytes - (PageConstants.PageSize << 3), first);

            // A split and a merge drop the mark: the order-5 block that comes back is given back again.
            allocator.FreePages(Alloc(allocator, 5));
            Assert.Equal(PageConstants.PageSize << 5, allocator.DiscardFreeMemory());
        }
        else
        {
            Assert.Equal(0, first);
        }

        PageAllocatorStats stats = allocator.GetStats();
        Assert.Equal(1, stats.Arenas);
        allocator.FreePages(held);
        AssertClean(allocator);
    }

    [Fact]
    public void Trim_gives_back_the_memory_of_the_arenas_it_releases()
    {
        using PageAllocator allocator = Leaks.NewAllocator(ArenaBytes);
        Page kept = Alloc(allocator, 6);
        kept.Span.Fill(0x11);
        Page released = Alloc(allocator, 6);
        released.Span.Fill(0x22);
        Assert.Equal(2, allocator.GetStats().Arenas);
        allocator.FreePages(released);

        Assert.Equal(1, allocator.Trim());
        if (PhysicalMemory.IsSupported)
        {
            Assert.Equal(ArenaBytes, allocator.BytesDiscarded);

            // Read through the stale handle (the arena's array lives on until collected): the pages were given back.
            Assert.True(released.Span.IndexOfAnyExcept((byte)0) < 0, "the released arena reads zeros");
        }
        else
        {
            Assert.Equal(0, allocator.BytesDiscarded);
        }

        Assert.True(kept.Span.IndexOfAnyExcept((byte)0x11) < 0, "the kept arena keeps its bytes");
        allocator.FreePages(kept);
        AssertClean(allocator);
    }

    [Fact]
    public void Clearing_a_pinned_array_by_giving_its_pages_back_leaves_every_byte_zero()
    {
        int pageSize = PhysicalMemory.SystemPageSize;
        foreach (int length in new[] { 1, 100, pageSize, 3 * pageSize + 100, 8 * pageSize })
        {
            byte[] array = GC.AllocateUninitializedArray<byte>(length, pinned: true);
            array.AsSpan().Fill(0xFF);
            PhysicalMemory.Clear(array);
            Assert.True(array.AsSpan().IndexOfAnyExcept((byte)0) < 0, $"a cleared array of {length} bytes reads zeros");
        }

        // A new arena's states start at 0 however the garbage collector's memory was used before.
        using PageAllocator allocator = Leaks.NewAllocator(ArenaBytes);
        Page page = Alloc(allocator, 0);
        Assert.True(page.Arena!.FragStates.AsSpan().IndexOfAnyExcept((byte)0) < 0);
        allocator.FreePages(page);
        AssertClean(allocator);
    }

    [Fact]
    public void Discarding_after_Dispose_throws_ObjectDisposedException()
    {
        PageAllocator allocator = Leaks.NewAllocator();
        allocator.FreePages(Alloc(allocator, 2));
        allocator.Dispose();
        ObjectDisposedException e = Assert.Throws<ObjectDisposedException>(() => allocator.DiscardFreeMemory());
        Assert.Contains(nameof(PageAllocator), e.Message);
        Assert.Equal(0, allocator.BytesDiscarded);
    }

    [Fact]
    public void A_discard_racing_allocations_and_frees_never_gives_back_a_held_page_or_fragment()
    {
        using PageAllocator allocator = Leaks.NewAllocator(1 << 20);
        var cache = new PageFragCache(allocator);
        var pages = new List<(Page Page, byte Pattern)>();
        var fragments = new List<(PageFragment Fragment, byte Pattern)>();
        var random = new Random(14);
        using var start = new Barrier(2);
        int stop = 0;
        long passes = 0;
        Exception? failure = null;
        var discarder = new Thread(() =>
        {
            try
            {
                start.SignalAndWait();
                while (Volatile.Read(ref stop) == 0)
                {
                    allocator.DiscardFreeMemory();
                    passes++;
                }
            }
            catch (Exception e)
            {
                failure = e;
            }
        });
        discarder.Start();
        start.SignalAndWait();

        byte next = 1;
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (clock.ElapsedMilliseconds < 1500 && Volatile.Read(ref failure) is null)
        {
            byte pattern = next;
            next = (byte)(next == 255 ? 1 : next + 1); // never 0: a page given back reads zeros
            if (random.Next(2) == 0)
            {
                Page page = Alloc(allocator, random.Next(0, 7));
                page.Span.Fill(pattern);
                pages.Add((page, pattern));
                if (pages.Count > 48)
                {
                    int victim = random.Next(pages.Count);
                    CheckAndFree(allocator, pages[victim]);
                    pages.RemoveAt(victim);
                }
            }
            else
            {
                Assert.True(cache.TryAlloc(random.Next(8, 4097), out PageFragment fragment));
                fragment.Span.Fill(pattern);
                fragments.Add((fragment, pattern));
                if (fragments.Count > 48)
                {
                    int victim = random.Next(fragments.Count);
                    CheckAndFree(cache, fragments[victim]);
                    fragments.RemoveAt(victim);
                }
            }
        }

        Volatile.Write(ref stop, 1);
        discarder.Join();
        Assert.Null(failure);
        foreach ((Page, byte) held in pages)
        {
            CheckAndFree(allocator, held);
        }

        foreach ((PageFragment, byte) held in fragments)
        {
            CheckAndFree(cache, held);
        }

        cache.Dispose();
        Assert.True(passes > 0);
        if (PhysicalMemory.IsSupported)
        {
            Assert.True(allocator.BytesDiscarded > 0, "the race gave memory back while pages were held");
        }

        allocator.Trim();
        AssertClean(allocator);
    }

    private static void CheckAndFree(PageAllocator allocator, (Page Page, byte Pattern) held)
    {
        Assert.True(held.Page.Span.IndexOfAnyExcept(held.Pattern) < 0, $"held {held.Page} lost its bytes");
        allocator.FreePages(held.Page);
    }

    private static void CheckAndFree(PageFragCache cache, (PageFragment Fragment, byte Pattern) held)
    {
        Assert.True(held.Fragment.Span.IndexOfAnyExcept(held.Pattern) < 0, $"held {held.Fragment} lost its bytes");

        // A fragment whose state byte was given back would read 0 here and its free would be refused.
        PageFragCache.Free(in held.Fragment);
    }
}
