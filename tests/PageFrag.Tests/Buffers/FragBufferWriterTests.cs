using System.Runtime.CompilerServices;
using System.Buffers;
using CsCheck;
using PageFrag.Buffers;
using PageFrag.Frag;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;
using static PageFrag.Tests.Buffers.BufferTestSupport;

namespace PageFrag.Tests.Buffers;

public class FragBufferWriterTests
{
    [Fact]
    public void GetMemory_returns_the_rest_of_a_reservation_that_grows_in_place_up_to_the_whole_page()
    {
        using PageAllocator allocator = WarmAllocator();
        var cache = new PageFragCache(allocator);
        using (var writer = new FragBufferWriter(cache))
        {
            // 1 KiB reserved, then grown in place by 4 KiB and 16 KiB, then up to the end of the page.
            Assert.Equal(1024, writer.GetMemory(100).Length);
            writer.Advance(100);
            Assert.Equal(1024 - 100, writer.GetMemory(1).Length);
            Assert.Equal(1024 - 100 + 4096, writer.GetMemory(1000).Length);
            writer.Advance(1024 - 100 + 4096);
            Assert.Equal(16384, writer.GetMemory(1).Length);
            writer.Advance(16384);
            Assert.Equal(PageFragCache.MaxFragmentSize - 1024 - 4096 - 16384, writer.GetMemory(1).Length);
            Assert.Equal(PageFragCache.MaxFragmentSize, cache.Offset);

            // One fragment and one page reference for all of it.
            Assert.Equal(1, writer.SegmentCount);
            Assert.Equal(PageFragCache.MaxFragmentSize + 1 - 1, cache.Bias);
        }

        cache.Drain();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_size_hint_of_zero_returns_a_non_empty_buffer_even_when_the_page_is_full()
    {
        using PageAllocator allocator = WarmAllocator();
        var cache = new PageFragCache(allocator);
        using (var writer = new FragBufferWriter(cache))
        {
            Assert.NotEqual(0, writer.GetMemory().Length);
            writer.Advance(writer.GetMemory(PageFragCache.MaxFragmentSize).Length);
            Assert.Equal(0, cache.CurrentPageSize - cache.Offset);
            Memory<byte> next = writer.GetMemory(0);
            Assert.False(next.IsEmpty);
            Assert.NotEqual(0, writer.GetSpan(0).Length);
        }

        cache.Drain();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Contiguous_writes_extend_one_fragment_and_take_a_single_page_reference()
    {
        using PageAllocator allocator = WarmAllocator();
        var cache = new PageFragCache(allocator);
        using (var writer = new FragBufferWriter(cache))
        {
            long written = 0;
            for (int i = 0; i < 10; i++)
            {
                Span<byte> span = writer.GetSpan(50);
                Fill(span[..50], written);
                writer.Advance(50);
                written += 50;
            }

            Assert.Equal(1, writer.SegmentCount);
            Assert.Equal(500, writer.WrittenCount);
            // One fragment, one reference: the cache's bias went down once (commit) and not for the nine
            // coalescing commits (commit_noref).
            Assert.Equal(PageFragCache.MaxFragmentSize + 1 - 1, cache.Bias);
            AssertPattern(writer.WrittenSequence, 500);
        }

        cache.Drain();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Another_allocation_between_writes_takes_the_bytes_after_the_reservation_never_the_writers()
    {
        using PageAllocator allocator = WarmAllocator();
        var cache = new PageFragCache(allocator);
        FragmentChain chain;
        using (var writer = new FragBufferWriter(cache))
        {
            Span<byte> first = writer.GetSpan(10);
            nint reservation = AddressOf(first);
            Fill(first[..10], 0);
            writer.Advance(10);
            Assert.True(cache.TryAlloc(64, out PageFragment other));
            Assert.Equal(reservation + 1024, other.Address);
            other.Span.Fill(0xAB);

            // The rest of the reservation is still the writer's: same fragment, no new reference.
            Fill(writer.GetSpan(10)[..10], 10);
            writer.Advance(10);
            Assert.Equal(1, writer.SegmentCount);

            // More than the reservation holds: it cannot grow over the other fragment, so a new one starts after it.
            Fill(writer.GetSpan(2000)[..2000], 20);
            writer.Advance(2000);
            Assert.Equal(2, writer.SegmentCount);
            AssertPattern(writer.WrittenSequence, 2020);
            Assert.True(other.Span.IndexOfAnyExcept((byte)0xAB) < 0);
            other.Free();

            // The first reservation's unwritten rest stays with the chain (the cache moved past it); the second
            // was the cache's most recent allocation, so its rest went back.
            chain = writer.Detach();
            Assert.Equal(1024 + 2000, chain.TrueSize);
            Assert.Equal(reservation + 1024 + 64 + 2000, cache.CurrentPage.Address + cache.Offset);
        }

        AssertPattern(chain.Sequence, 2020);
        chain.Dispose();

        cache.Drain();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_fragment_that_ends_its_page_block_is_not_extended_into_the_next_block()
    {
        // Two adjacent order-3 blocks, handed to the cache lower one first: the bytes after the first page
        // are address-contiguous with it, but belong to another block.
        using PageAllocator allocator = Leaks.NewAllocator();
        (Page low, Page high) = TakeAdjacentBlocks(allocator);
        var cache = new PageFragCache(allocator);
        using (var writer = new FragBufferWriter(cache))
        {
            GiveBack(allocator, low);
            Fill(writer.GetSpan(PageFragCache.MaxFragmentSize), 0);
            Assert.Equal(low, cache.CurrentPage);
            writer.Advance(PageFragCache.MaxFragmentSize);
            GiveBack(allocator, high);
            Span<byte> next = writer.GetSpan(100);
            Assert.Equal(high, cache.CurrentPage);
            Fill(next[..100], PageFragCache.MaxFragmentSize);
            writer.Advance(100);
            Assert.Equal(2, writer.SegmentCount);
            Assert.Equal(PageFragCache.MaxFragmentSize + 1 - 1, cache.Bias);
            AssertPattern(writer.WrittenSequence, PageFragCache.MaxFragmentSize + 100);
        }

        cache.Drain();
        Leaks.AssertNone(allocator);
    }

    private static unsafe nint AddressOf(Span<byte> span)
    {
        fixed (byte* p = span)
        {
            return (nint)p;
        }
    }

    /// <summary>Allocates both order-3 blocks of a fresh 64 KiB arena, lower one first in the result.</summary>
    private static (Page Low, Page High) TakeAdjacentBlocks(PageAllocator allocator)
    {
        Assert.True(allocator.TryAllocPages(3, AllocFlags.None, out Page a));
        Assert.True(allocator.TryAllocPages(3, AllocFlags.None, out Page b));
        return a.Index < b.Index ? (a, b) : (b, a);
    }

    /// <summary>
    /// Frees a block and moves it to the buddy lists, so that the next refill gets it whichever CPU the
    /// thread runs on (a block left on one CPU's per-CPU list is invisible from another).
    /// </summary>
    private static void GiveBack(PageAllocator allocator, Page block)
    {
        allocator.FreePages(block);
        allocator.DrainPerCpuLists();
    }

    [Fact]
    public void CommitNoRef_refuses_to_extend_a_fragment_into_the_next_page_block()
    {
        // Regression test for PageFragCache.CommitNoRef(in, int, ref): it used to accept a previous
        // fragment that ends its own block when the next block had the same generation.
        using PageAllocator allocator = Leaks.NewAllocator();
        (Page low, Page high) = TakeAdjacentBlocks(allocator);
        var cache = new PageFragCache(allocator);
        GiveBack(allocator, low);
        Assert.True(cache.TryAlloc(PageFragCache.MaxFragmentSize, out PageFragment first));
        GiveBack(allocator, high);
        Assert.True(cache.TryPrepare(1, out PreparedFragment prepared));
        Assert.Equal(high, prepared.Page);
        Assert.Equal(first.Address + first.Length, prepared.Address);
        Assert.Equal(first.Generation, cache.CurrentPage.Descriptor.Generation);

        PageFragment previous = first;
        var e = Assert.Throws<InvalidOperationException>(() => cache.CommitNoRef(in prepared, 100, ref previous));
        Assert.Equal("The previous fragment does not end where the preparation starts, so the new bytes cannot be coalesced with it.", e.Message);
        Assert.Equal(first, previous);

        first.Free();
        cache.Drain();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_hint_above_what_the_cache_can_give_gets_a_dedicated_block_whose_tail_serves_the_next_writes()
    {
        using PageAllocator allocator = WarmAllocator(arenaSize: 256 * 1024);
        var cache = new PageFragCache(allocator);
        using (var writer = new FragBufferWriter(cache))
        {
            Memory<byte> big = writer.GetMemory(40_000);
            Assert.Equal(64 * 1024, big.Length);
            Fill(big.Span[..40_000], 0);
            writer.Advance(40_000);

            Memory<byte> tail = writer.GetMemory(1000);
            Assert.Equal(64 * 1024 - 40_000, tail.Length);
            Fill(tail.Span[..1000], 40_000);
            writer.Advance(1000);

            Assert.Equal(1, writer.SegmentCount);
            AssertPattern(writer.WrittenSequence, 41_000);
            using FragmentChain chain = writer.Detach();
            Assert.Equal(64 * 1024, chain.TrueSize);
        }

        cache.Drain();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public unsafe void A_writers_dedicated_block_cannot_be_freed_through_its_page_found_by_address()
    {
        using PageAllocator allocator = WarmAllocator(arenaSize: 256 * 1024);
        var cache = new PageFragCache(allocator);
        using (var writer = new FragBufferWriter(cache))
        {
            Memory<byte> big = writer.GetMemory(40_000); // above the cache's 32 KiB: a block of its own
            Fill(big.Span[..40_000], 0);
            writer.Advance(40_000);
            nint address;
            using (MemoryHandle pin = big.Pin())
            {
                address = (nint)pin.Pointer;
            }

            long inUse = allocator.PagesInUse;
            Assert.True(PageAllocator.TryGetPage(address, out Page page));

            // The block is the writer's: freeing it here would give bytes the writer still holds to the next allocation.
            Assert.Throws<InvalidOperationException>(() => allocator.FreePages(page));
            Assert.Equal(inUse, allocator.PagesInUse);
            Assert.True(allocator.TryAllocPages(4, AllocFlags.None, out Page other));
            other.Span.Fill(0xEE);
            AssertPattern(writer.WrittenSequence, 40_000);
            allocator.FreePages(other);

            // A reference taken with AddRef is the only one FreePages drops; the writer's goes when the chain goes.
            page.AddRef();
            allocator.FreePages(page);
            using FragmentChain chain = writer.Detach();
            AssertPattern(chain.Sequence, 40_000);
        }

        cache.Drain();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_hint_above_4096_on_an_order_0_page_gets_a_block_of_the_smallest_sufficient_order()
    {
        // Order-3 allocations fail, so the cache lives on order-0 pages (memory "too fragmented").
        using PageAllocator allocator = WarmAllocator(faults: new FaultInjection { FailOrderAtLeast = 3 });
        var cache = new PageFragCache(allocator);
        using (var writer = new FragBufferWriter(cache))
        {
            writer.GetSpan(10);
            Assert.Equal(PageConstants.PageSize, cache.CurrentPageSize);
            Memory<byte> memory = writer.GetMemory(5000);
            Assert.Equal(8192, memory.Length);
            Fill(memory.Span[..5000], 0);
            writer.Advance(5000);
            AssertPattern(writer.WrittenSequence, 5000);
        }

        cache.Drain();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_hint_above_the_largest_block_gets_a_pinned_array_and_still_works_with_sockets()
    {
        using PageAllocator allocator = WarmAllocator();
        var cache = new PageFragCache(allocator);
        using (var writer = new FragBufferWriter(cache))
        {
            int huge = (PageConstants.PageSize << allocator.MaxOrder) + 1;
            Memory<byte> memory = writer.GetMemory(huge);
            Assert.True(memory.Length >= huge);
            Fill(memory.Span[..huge], 0);
            writer.Advance(huge);
            Fill(writer.GetSpan(10)[..10], huge);
            writer.Advance(10);
            AssertPattern(writer.WrittenSequence, huge + 10);
            using FragmentChain chain = writer.Detach();
            Assert.Equal(2, chain.AsArraySegments().Count);
        }

        cache.Drain();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void An_unused_dedicated_block_is_given_back_when_the_writer_moves_on()
    {
        using PageAllocator allocator = WarmAllocator(arenaSize: 256 * 1024);
        var cache = new PageFragCache(allocator);
        using (var writer = new FragBufferWriter(cache))
        {
            writer.GetMemory(100_000);
            long inUse = allocator.PagesInUse;
            Assert.Equal(32, inUse);
            writer.GetMemory(100_000);
            Assert.Equal(inUse, allocator.PagesInUse);
            writer.GetMemory(10);
            Assert.Equal(0, allocator.PagesInUse - cache.CurrentPageSize / PageConstants.PageSize);
        }

        cache.Drain();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Writes_of_any_sizes_read_back_as_the_same_bytes_and_free_every_page()
    {
        Gen.Select(Gen.Int[0, 40_000], Gen.Int[0, 100]).Array[1, 40].Sample(writes =>
        {
            using PageAllocator allocator = WarmAllocator(arenaSize: 256 * 1024);
            var cache = new PageFragCache(allocator);
            var writer = new FragBufferWriter(cache);
            long written = 0;
            foreach ((int hint, int percent) in writes)
            {
                Memory<byte> memory = writer.GetMemory(hint);
                Assert.True(memory.Length >= Math.Max(hint, 1));
                int count = (int)((long)memory.Length * percent / 100);
                Fill(memory.Span[..count], written);
                writer.Advance(count);
                written += count;
            }

            Assert.Equal(written, writer.WrittenCount);
            FragmentChain chain = writer.Detach();
            AssertPattern(chain.Sequence, written);
            Assert.True(chain.TrueSize >= written);
            Assert.Equal(0, writer.WrittenCount);
            writer.Dispose();
            chain.Dispose();
            cache.Drain();
            Leaks.AssertNone(allocator);
        }, iter: 60);
    }

    [Fact]
    public void Advancing_past_the_buffer_throws_like_ArrayBufferWriter_and_changes_nothing()
    {
        using PageAllocator allocator = WarmAllocator();
        var cache = new PageFragCache(allocator);
        using (var writer = new FragBufferWriter(cache))
        {
            int length = writer.GetMemory(10).Length;
            var e = Assert.Throws<InvalidOperationException>(() => writer.Advance(length + 1));
            Assert.Equal($"Cannot advance past the end of the buffer, which has a size of {length}.", e.Message);
            Assert.Equal(0, writer.WrittenCount);

            // The buffer is still the current one: a valid Advance works.
            Fill(writer.GetSpan(10)[..10], 0);
            writer.Advance(10);
            AssertPattern(writer.WrittenSequence, 10);
        }

        cache.Drain();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_buffer_cannot_be_advanced_again_after_Advance()
    {
        using PageAllocator allocator = WarmAllocator();
        var cache = new PageFragCache(allocator);
        using (var writer = new FragBufferWriter(cache))
        {
            var e = Assert.Throws<InvalidOperationException>(() => writer.Advance(1));
            Assert.Equal("Cannot advance past the end of the buffer, which has a size of 0.", e.Message);

            writer.GetMemory(10);
            writer.Advance(10);
            e = Assert.Throws<InvalidOperationException>(() => writer.Advance(1));
            Assert.Equal("Cannot advance past the end of the buffer, which has a size of 0.", e.Message);
            writer.Advance(0);
            Assert.Equal(10, writer.WrittenCount);
        }

        cache.Drain();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Negative_hints_and_counts_throw_ArgumentException_like_ArrayBufferWriter()
    {
        using PageAllocator allocator = WarmAllocator();
        var cache = new PageFragCache(allocator);
        using (var writer = new FragBufferWriter(cache))
        {
            var e = Assert.Throws<ArgumentException>(() => writer.GetMemory(-1));
            Assert.Equal("sizeHint", e.ParamName);
            Assert.StartsWith("sizeHint must be zero or positive, but was -1.", e.Message);
            e = Assert.Throws<ArgumentException>(() => writer.GetSpan(-5));
            Assert.Equal("sizeHint", e.ParamName);

            writer.GetMemory(10);
            e = Assert.Throws<ArgumentException>(() => writer.Advance(-1));
            Assert.Equal("count", e.ParamName);
            Assert.StartsWith("count must be zero or positive, but was -1.", e.Message);

            // .NET's own writer throws the same types for the same calls.
            var reference = new ArrayBufferWriter<byte>();
            Assert.Throws<ArgumentException>(() => reference.GetMemory(-1));
            Assert.Throws<ArgumentException>(() => reference.Advance(-1));

            writer.Advance(10);
            Assert.Equal(10, writer.WrittenCount);
        }

        cache.Drain();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Advance_after_someone_else_used_the_cache_commits_bytes_that_were_the_writers_all_along()
    {
        using PageAllocator allocator = WarmAllocator();
        var cache = new PageFragCache(allocator);
        using (var writer = new FragBufferWriter(cache))
        {
            Span<byte> span = writer.GetSpan(10);
            Assert.True(cache.TryAlloc(64, out PageFragment intruder));
            intruder.Span.Fill(0xAB);
            Fill(span[..10], 0);
            writer.Advance(10);
            AssertPattern(writer.WrittenSequence, 10);
            Assert.True(intruder.Address >= AddressOf(span) + span.Length);
            Assert.True(intruder.Span.IndexOfAnyExcept((byte)0xAB) < 0);
            intruder.Free();
        }

        cache.Drain();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void When_the_allocator_refuses_a_page_GetMemory_throws_and_the_writer_keeps_what_it_wrote()
    {
        using PageAllocator allocator = WarmAllocator(maxBytes: 64 * 1024);
        var cache = new PageFragCache(allocator);
        using (var writer = new FragBufferWriter(cache))
        {
            Fill(writer.GetSpan(100)[..100], 0);
            writer.Advance(100);
            allocator.FaultInjection = new FaultInjection { FailEveryNth = 1 };

            var e = Assert.Throws<InsufficientMemoryException>(() => writer.GetMemory(40_000));
            Assert.Equal("The PageAllocator could not supply 40000 bytes: its memory limit is reached or an allocation fault was injected.", e.Message);
            Assert.Equal(100, writer.WrittenCount);

            allocator.FaultInjection = null;
            Fill(writer.GetSpan(100)[..100], 100);
            writer.Advance(100);
            AssertPattern(writer.WrittenSequence, 200);
        }

        cache.Drain();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Reset_frees_what_was_written_and_the_writer_can_be_reused()
    {
        using PageAllocator allocator = WarmAllocator();
        var cache = new PageFragCache(allocator);
        using (var writer = new FragBufferWriter(cache))
        {
            writer.GetMemory(40_000);
            writer.Advance(40_000);
            writer.GetMemory(10);
            writer.Advance(10);
            writer.Reset();
            Assert.Equal(0, writer.WrittenCount);
            Assert.Equal(0, allocator.PagesInUse - cache.CurrentPageSize / PageConstants.PageSize);
            writer.GetMemory(10);
            writer.Advance(10);
            Assert.Equal(10, writer.WrittenCount);
        }

        cache.Drain();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_disposed_writer_throws_ObjectDisposedException_and_a_second_Dispose_does_nothing()
    {
        using PageAllocator allocator = WarmAllocator();
        var cache = new PageFragCache(allocator);
        var writer = new FragBufferWriter(cache);
        writer.GetMemory(10);
        writer.Advance(10);
        writer.Dispose();
        writer.Dispose();
        var e = Assert.Throws<ObjectDisposedException>(() => writer.GetMemory(1));
        Assert.Equal(nameof(FragBufferWriter), e.ObjectName);
        Assert.Throws<ObjectDisposedException>(() => writer.Advance(0));
        Assert.Throws<ObjectDisposedException>(() => writer.Detach());

        cache.Drain();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Detach_gives_the_unwritten_rest_of_the_reservation_back_to_the_cache()
    {
        using PageAllocator allocator = WarmAllocator();
        var cache = new PageFragCache(allocator);
        using (var writer = new FragBufferWriter(cache))
        {
            Span<byte> span = writer.GetSpan(100);
            nint start = AddressOf(span);
            Fill(span[..100], 0);
            writer.Advance(100);
            Assert.Equal(1024, cache.Offset);

            using FragmentChain chain = writer.Detach();
            Assert.Equal(100, chain.Length);
            Assert.Equal(100, chain.TrueSize);
            Assert.Equal(100, cache.Offset);
            AssertPattern(chain.Sequence, 100);

            // The next chain starts right after the bytes handed over, on the same page reference scheme.
            Assert.Equal(start + 100, AddressOf(writer.GetSpan(10)));
            writer.Advance(10);
            Assert.Equal(PageFragCache.MaxFragmentSize + 1 - 2, cache.Bias);
        }

        cache.Drain();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_reservation_nobody_wrote_into_goes_back_to_the_cache_on_Detach_Reset_and_Dispose()
    {
        using PageAllocator allocator = WarmAllocator();
        var cache = new PageFragCache(allocator);
        var writer = new FragBufferWriter(cache);
        writer.GetSpan(10);
        Assert.Equal(1024, cache.Offset);
        using (FragmentChain chain = writer.Detach())
        {
            Assert.Equal(0, chain.Length);
            Assert.Equal(0, chain.SegmentCount);
            Assert.True(chain.Sequence.IsEmpty);
        }

        // The abort keeps the reservation's start granule (8 bytes): a copy of an aborted handle never names the next
        // fragment (session 8).
        Assert.Equal(8, cache.Offset);
        Assert.Equal(PageFragCache.MaxFragmentSize + 1, cache.Bias);

        writer.GetSpan(3000);
        writer.Advance(0);
        writer.Reset();
        Assert.Equal(16, cache.Offset);
        Assert.Equal(0, writer.WrittenCount);

        writer.GetMemory(2000);
        writer.Dispose();
        Assert.Equal(24, cache.Offset);
        Assert.Equal(PageFragCache.MaxFragmentSize + 1, cache.Bias);
        cache.Drain();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Advancing_past_a_dedicated_block_throws_and_the_block_still_serves_the_write()
    {
        using PageAllocator allocator = WarmAllocator(arenaSize: 256 * 1024);
        var cache = new PageFragCache(allocator);
        using (var writer = new FragBufferWriter(cache))
        {
            Memory<byte> big = writer.GetMemory(40_000);
            Assert.Equal(64 * 1024, big.Length);
            var e = Assert.Throws<InvalidOperationException>(() => writer.Advance(64 * 1024 + 1));
            Assert.Equal("Cannot advance past the end of the buffer, which has a size of 65536.", e.Message);
            Assert.Equal(0, writer.WrittenCount);

            Fill(big.Span[..40_000], 0);
            writer.Advance(40_000);
            AssertPattern(writer.WrittenSequence, 40_000);
        }

        cache.Drain();
        Leaks.AssertNone(allocator);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void WriteAndDropWriters(PageFragCache cache)
    {
        // One writer with bytes in a grown reservation, one with a reservation it never wrote into.
        var written = new FragBufferWriter(cache);
        written.GetSpan(100);
        written.Advance(100);
        written.GetSpan(5000);
        written.Advance(3000);
        var reserved = new FragBufferWriter(cache);
        reserved.GetSpan(10);
        GC.KeepAlive(written);
        GC.KeepAlive(reserved);
    }

    [Fact]
    public void A_writer_dropped_with_an_open_reservation_gives_its_bytes_back_when_collected()
    {
        using PageAllocator allocator = WarmAllocator();
        var cache = new PageFragCache(allocator);
        WriteAndDropWriters(cache);
        cache.Drain();
        Assert.NotEqual(0, allocator.PagesInUse);
        for (int i = 0; i < 3; i++)
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
        }

        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void The_detached_chain_owns_the_bytes_and_can_be_freed_on_another_thread()
    {
        using PageAllocator allocator = WarmAllocator();
        var cache = new PageFragCache(allocator);
        FragmentChain chain;
        using (var writer = new FragBufferWriter(cache))
        {
            for (int i = 0; i < 5; i++)
            {
                Fill(writer.GetSpan(3000)[..3000], i * 3000);
                writer.Advance(3000);
                Assert.True(cache.TryAlloc(64, out PageFragment gap));
                gap.Free();
            }

            chain = writer.Detach();
        }

        Assert.Equal(5, chain.SegmentCount);
        cache.Drain();
        var thread = new Thread(() =>
        {
            AssertPattern(chain.Sequence, 15_000);
            chain.Dispose();
        });
        thread.Start();
        thread.Join();
        Leaks.AssertNone(allocator);
    }
}

[Collection(AllocationMeasurements.Name)]
public class FragBufferWriterAllocationTests
{
    [Fact]
    public void A_chain_of_hundreds_of_pages_allocates_nothing_once_warm()
    {
        // About 10 MiB per chain: some 320 segments, ten times the 32 spare segments a chain used to keep.
        using PageAllocator allocator = WarmAllocator(arenaSize: 4 << 20);
        var cache = new PageFragCache(allocator);
        using (var writer = new FragBufferWriter(cache))
        {
            int segments = 0;
            void Loop()
            {
                for (int round = 0; round < 2; round++)
                {
                    for (int i = 0; i < 50_000; i++)
                    {
                        int size = 10 + (i % 291);
                        writer.GetSpan(size)[size - 1] = 1;
                        writer.Advance(size);
                    }

                    using FragmentChain chain = writer.Detach();
                    segments = chain.SegmentCount;
                }
            }

            Loop();
            Assert.InRange(segments, 200, 400);
            AssertAllocatesNothing(Loop);
        }

        cache.Drain();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Writing_and_detaching_allocate_nothing_once_warm()
    {
        // A 1 MiB arena: see PageFragMemoryPoolAllocationTests.
        using PageAllocator allocator = WarmAllocator(arenaSize: 1 << 20);
        var cache = new PageFragCache(allocator);
        using (var writer = new FragBufferWriter(cache))
        {
            void Loop()
            {
                for (int round = 0; round < 1000; round++)
                {
                    for (int i = 0; i < 20; i++)
                    {
                        writer.GetSpan(100 + i)[0] = 1;
                        writer.Advance(100 + i);
                        if (i % 5 == 0)
                        {
                            // Something else on the cache: the next write starts a new fragment.
                            Assert.True(cache.TryAlloc(64, out PageFragment f));
                            f.Free();
                        }
                    }

                    using FragmentChain chain = writer.Detach();
                    _ = chain.AsArraySegments();
                }
            }

            Loop();
            AssertAllocatesNothing(Loop);
        }

        cache.Drain();
        Leaks.AssertNone(allocator);
    }
}
