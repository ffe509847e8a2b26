using System.Buffers;
using PageFrag.Buffers;
using PageFrag.Frag;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;

namespace PageFrag.Tests.Frag;

/// <summary>
/// Session 8, trust: a kept copy of an aborted fragment handle must not free the fragment carved after the abort.
/// Before the fix the abort rewound the offset to the aborted start, the next fragment got the same start and the
/// same state tag, and the copy's free released it (a use after free freeing someone else's memory).
/// </summary>
public class AbortStaleCopyTests
{
    public static TheoryData<int, int, bool> Cases => new()
    {
        { 100, 1, false },
        { 100, 1, true },
        { 4, 1, false },
        { 8, 1, true },
        { 64, 64, false },
        { 200, 64, true },
        { 4096, 4096, false },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void A_copy_of_an_aborted_fragment_cannot_free_the_next_fragment(int size, int alignment, bool prepareCommit)
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(24, out PageFragment keeper));
        PageFragment aborted = Carve(cache, size, alignment, prepareCommit);
        PageFragment copy = aborted;
        cache.Abort(aborted);

        PageFragment next = Carve(cache, size, alignment, prepareCommit);
        Assert.Equal(aborted.Page.Index, next.Page.Index); // the same page: the case that matters
        next.Span.Fill(0x5A);

        Assert.Throws<PageFragDoubleFreeException>(() => PageFragCache.Free(copy));
        Assert.ThrowsAny<Exception>(() => PageFragCache.Free(copy.Address));
        Assert.ThrowsAny<Exception>(() => cache.FreeLocal(copy));
        Assert.ThrowsAny<Exception>(() => cache.Abort(copy));

        // The next fragment is still live and whole: its own free works once.
        Assert.True(next.Span.IndexOfAnyExcept((byte)0x5A) < 0);
        Assert.True(next.Address >= aborted.Address + 8 || next.Address + next.Length <= aborted.Address);
        PageFragCache.Free(next);
        Assert.Throws<PageFragDoubleFreeException>(() => PageFragCache.Free(next));
        PageFragCache.Free(keeper);
        cache.Dispose();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Aborts_in_a_row_keep_one_granule_each_and_the_page_still_adds_up()
    {
        // The cost of the rule: each abort keeps its fragment's first granule (8 bytes) until the page is reused.
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(16, out PageFragment first));
        int offset = cache.Offset;
        var copies = new List<PageFragment>();
        for (int i = 0; i < 100; i++)
        {
            Assert.True(cache.TryAlloc(256, out PageFragment f));
            copies.Add(f);
            cache.Abort(f);
            Assert.Equal(offset + 8 * (i + 1), cache.Offset);
        }

        Assert.True(cache.TryAlloc(256, out PageFragment live));
        foreach (PageFragment copy in copies)
        {
            Assert.Throws<PageFragDoubleFreeException>(() => PageFragCache.Free(copy));
        }

        PageFragCache.Free(live);
        PageFragCache.Free(first);
        cache.Dispose();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_writer_gives_back_its_unwritten_tail_in_place_and_a_copy_of_its_reservation_frees_nothing_else()
    {
        // FragBufferWriter gave its unwritten tail back by an abort and a new commit at the same address; it now
        // shortens the fragment in place (the same start, state and reference).
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        var writer = new FragBufferWriter(cache);
        Span<byte> span = writer.GetSpan(100);
        span[..100].Fill(7);
        writer.Advance(100);
        using (FragmentChain chain = writer.Detach())
        {
            Assert.Equal(100, chain.Length);
            Assert.True(cache.TryAlloc(64, out PageFragment after));

            // The tail went back: the next fragment starts right after the written bytes' granules.
            ReadOnlySequence<byte> seq = chain.Sequence;
            Assert.True(seq.ToArray().AsSpan().IndexOfAnyExcept((byte)7) < 0);
            PageFragCache.Free(after);
        }

        writer.Dispose();
        cache.Dispose();
        Leaks.AssertNone(allocator);
    }

    private static PageFragment Carve(PageFragCache cache, int size, int alignment, bool prepareCommit)
    {
        if (prepareCommit)
        {
            Assert.True(cache.TryPrepare(size, alignment, out PreparedFragment prepared));
            return cache.Commit(prepared, size);
        }

        Assert.True(cache.TryAlloc(size, alignment, out PageFragment fragment));
        return fragment;
    }
}
