using PageFrag.Frag;
using PageFrag.Pages;

namespace PageFrag.Tests.Frag;

/// <summary>The prepare / probe / commit / commit_noref / abort API of seed 000 (v22).</summary>
public class PageFragCachePrepareTests
{
    [Fact]
    public void Prepare_describes_all_the_space_left_without_taking_a_reference_or_moving_the_offset()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(12, out PageFragment a));
        Page page = cache.CurrentPage;

        Assert.True(cache.TryPrepare(100, out PreparedFragment prepared));

        Assert.False(prepared.IsEmpty);
        Assert.Equal(12, prepared.Offset);
        Assert.Equal(FragKit.BigPage - 12, prepared.Size);
        Assert.Equal(page, prepared.Page);
        Assert.Equal(page.Address + 12, prepared.Address);
        Assert.Equal(prepared.Size, prepared.Span.Length);
        Assert.Equal(prepared.Size, prepared.Memory.Length);
        Assert.Equal(12, cache.Offset);
        Assert.Equal(FragKit.RefBias, cache.Bias);
        Assert.Equal(FragKit.FreshRefCount, page.RefCount);
        Assert.Equal(1, cache.PagesAllocated);

        // Dropping a preparation uses nothing: the next allocation starts where it would have.
        Assert.True(cache.TryAlloc(8, out PageFragment b));
        Assert.Equal(12, b.PageOffset);

        a.Free();
        b.Free();
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void An_aligned_prepare_reports_the_space_from_the_aligned_offset()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(12, out PageFragment a));

        Assert.True(cache.TryPrepare(100, 64, out PreparedFragment prepared));
        Assert.Equal(64, prepared.Offset);
        Assert.Equal(FragKit.BigPage - 64, prepared.Size);
        Assert.Equal(0, prepared.Address % 64);
        Assert.Equal(12, cache.Offset);

        a.Free();
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void Prepare_on_an_empty_cache_refills_and_still_takes_no_reference()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);

        Assert.True(cache.TryPrepare(1, out PreparedFragment prepared));
        Assert.Equal(0, prepared.Offset);
        Assert.Equal(FragKit.BigPage, prepared.Size);
        Assert.Equal(1, cache.PagesAllocated);
        Assert.Equal(FragKit.RefBias + 1, cache.Bias);
        Assert.Equal(FragKit.FreshRefCount, cache.CurrentPage.RefCount);

        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void Prepare_refills_when_the_page_lacks_the_minimum()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(32000, out PageFragment held));

        Assert.True(cache.TryPrepare(1000, out PreparedFragment prepared));
        Assert.NotEqual(held.Page, prepared.Page);
        Assert.Equal(0, prepared.Offset);
        Assert.Equal(FragKit.BigPage, prepared.Size);
        Assert.Equal(2, cache.PagesAllocated);
        Assert.Equal(1, held.Page.RefCount);

        held.Free();
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void Probe_on_an_empty_cache_fails_and_takes_no_page()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);

        Assert.False(cache.TryProbe(1, out PreparedFragment prepared));
        Assert.True(prepared.IsEmpty);
        Assert.False(cache.TryProbe(1, 64, out _));
        Assert.Equal(0, cache.PagesAllocated);
        Assert.Equal(0, cache.CurrentPageSize);
        Assert.Equal(0, allocator.PagesInUse);

        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void Probe_never_refills_and_fails_when_the_page_lacks_room()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(32000, out PageFragment a));
        Page page = cache.CurrentPage;

        Assert.False(cache.TryProbe(1000, out PreparedFragment none));
        Assert.True(none.IsEmpty);
        Assert.Equal(page, cache.CurrentPage);
        Assert.Equal(32000, cache.Offset);
        Assert.Equal(1, cache.PagesAllocated);

        Assert.True(cache.TryProbe(768, out PreparedFragment exact));
        Assert.Equal(32000, exact.Offset);
        Assert.Equal(768, exact.Size);

        // Alignment counts: 32000 rounds up to 32256 for 512, which leaves 512 bytes.
        Assert.True(cache.TryProbe(512, 512, out PreparedFragment aligned));
        Assert.Equal(32256, aligned.Offset);
        Assert.Equal(512, aligned.Size);
        Assert.False(cache.TryProbe(513, 512, out _));

        a.Free();
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void Probe_reports_the_whole_rest_of_an_order3_page_not_only_up_to_the_next_4KiB_boundary()
    {
        // The v22 review asked for PAGE_SIZE - (offset % PAGE_SIZE); the author kept the whole rest of the
        // page so that callers can fill an order-3 page, and PageFrag keeps that.
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(12, out PageFragment a));

        Assert.True(cache.TryProbe(1, out PreparedFragment probed));
        Assert.Equal(12, probed.Offset);
        Assert.Equal(FragKit.BigPage - 12, probed.Size);
        Assert.True(probed.Size > PageConstants.PageSize);

        // And the commit may use all of it, well past PAGE_SIZE.
        PageFragment b = cache.Commit(probed, 20000);
        Assert.Equal(20000, b.Length);
        Assert.Equal(20012, cache.Offset);

        a.Free();
        b.Free();
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void Prepare_and_probe_agree_on_the_address_and_the_space()
    {
        // The selftest's "wrong va" / "wrong probed info" checks.
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        var held = new List<PageFragment>();
        foreach ((int size, int alignment) in new[] { (12, 1), (75, 64), (2048, 1), (1, 4096), (300, 8) })
        {
            Assert.True(cache.TryPrepare(size, alignment, out PreparedFragment prepared));
            Assert.True(cache.TryProbe(size, alignment, out PreparedFragment probed));
            Assert.Equal(prepared.Address, probed.Address);
            Assert.Equal(prepared.Offset, probed.Offset);
            Assert.Equal(prepared.Size, probed.Size);
            Assert.Equal(prepared.Page, probed.Page);
            held.Add(cache.Commit(prepared, size));
        }

        foreach (PageFragment f in held)
        {
            f.Free();
        }

        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void Commit_takes_one_reference_and_a_fragment_whose_true_size_includes_the_padding()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(12, out PageFragment a));
        Page page = cache.CurrentPage;
        Assert.True(cache.TryPrepare(100, 64, out PreparedFragment prepared));
        prepared.Span[..200].Fill(0xC3);

        PageFragment b = cache.Commit(prepared, 200);

        Assert.Equal(prepared.Address, b.Address);
        Assert.Equal(64, b.PageOffset);
        Assert.Equal(200, b.Length);
        Assert.Equal(64 - 12 + 200, b.TrueSize);
        Assert.Equal(264, cache.Offset);
        Assert.Equal(FragKit.RefBias - 1, cache.Bias);
        Assert.Equal(FragKit.FreshRefCount, page.RefCount);
        Assert.False(b.Span.ContainsAnyExcept((byte)0xC3));

        a.Free();
        b.Free();
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void Committing_the_whole_preparation_fills_the_page_exactly()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(100, out PageFragment a));
        Assert.True(cache.TryPrepare(1, out PreparedFragment prepared));

        PageFragment rest = cache.Commit(prepared, prepared.Size);
        Assert.Equal(FragKit.BigPage, cache.Offset);
        Assert.False(cache.TryProbe(1, out _));

        a.Free();
        rest.Free();
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void CommitNoRef_moves_the_offset_without_a_reference_and_returns_the_true_size()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(12, out PageFragment a));
        Page page = cache.CurrentPage;
        Assert.True(cache.TryPrepare(1, 64, out PreparedFragment prepared));

        int trueSize = cache.CommitNoRef(prepared, 36);

        Assert.Equal(64 - 12 + 36, trueSize);
        Assert.Equal(100, cache.Offset);
        Assert.Equal(FragKit.RefBias, cache.Bias);
        Assert.Equal(FragKit.FreshRefCount, page.RefCount);

        // The only reference out is a's: freeing it and draining returns the page.
        a.Free();
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void CommitNoRef_with_the_previous_fragment_coalesces_the_bytes_into_it()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(100, out PageFragment previous));
        previous.Span.Fill(1);
        nint start = previous.Address;
        Assert.True(cache.TryProbe(50, out PreparedFragment probed));
        probed.Span[..50].Fill(2);

        int added = cache.CommitNoRef(probed, 50, ref previous);

        Assert.Equal(50, added);
        Assert.Equal(start, previous.Address);
        Assert.Equal(0, previous.PageOffset);
        Assert.Equal(150, previous.Length);
        Assert.Equal(150, previous.TrueSize);
        Assert.Equal(150, previous.Span.Length);
        Assert.False(previous.Span[..100].ContainsAnyExcept((byte)1));
        Assert.False(previous.Span[100..].ContainsAnyExcept((byte)2));
        Assert.Equal(150, cache.Offset);
        Assert.Equal(FragKit.RefBias, cache.Bias);

        // A prepare without alignment coalesces just the same.
        Assert.True(cache.TryPrepare(10, out PreparedFragment prepared));
        Assert.Equal(10, cache.CommitNoRef(prepared, 10, ref previous));
        Assert.Equal(160, previous.Length);

        // Still one fragment, one reference: a single free returns everything.
        previous.Free();
        Assert.Equal(FragKit.RefBias, cache.CurrentPage.RefCount);
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void TryCommitNoRef_coalesces_when_contiguous_and_otherwise_changes_nothing()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(100, out PageFragment previous));

        // Contiguous: grown in place, no new reference.
        Assert.True(cache.TryPrepare(20, out PreparedFragment prepared));
        Assert.True(cache.TryCommitNoRef(prepared, 20, ref previous));
        Assert.Equal(120, previous.Length);
        Assert.Equal(120, cache.Offset);
        Assert.Equal(FragKit.RefBias, cache.Bias);

        // An aligned preparation leaves a gap: refused, nothing moves, and the bytes commit on their own.
        Assert.True(cache.TryPrepare(20, 64, out PreparedFragment aligned));
        PageFragment before = previous;
        Assert.False(cache.TryCommitNoRef(aligned, 20, ref previous));
        Assert.Equal(before, previous);
        Assert.Equal(120, cache.Offset);
        Assert.Equal(FragKit.RefBias, cache.Bias);
        PageFragment own = cache.Commit(aligned, 20);
        Assert.Equal(128, own.PageOffset);

        // A fragment that is not the last one: refused too.
        Assert.True(cache.TryPrepare(8, out PreparedFragment next));
        Assert.False(cache.TryCommitNoRef(next, 8, ref previous));
        Assert.Equal(120, previous.Length);

        // Bad input still throws: a size beyond the preparation, a stale preparation.
        FragKit.Throws<ArgumentOutOfRangeException>(() => cache.TryCommitNoRef(next, next.Size + 1, ref own), "usedSize", "between 1 and the prepared size");
        cache.Commit(next, 8).Free();
        FragKit.Throws<InvalidOperationException>(() => cache.TryCommitNoRef(next, 8, ref own), null, "stale");

        previous.Free();
        own.Free();
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void TryRefill_is_a_prepare_and_commit_of_exactly_the_size()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryRefill(12, out PageFragment a));
        Assert.True(cache.TryRefill(10, 64, out PageFragment b));

        Assert.Equal(0, a.PageOffset);
        Assert.Equal(12, a.Length);
        Assert.Equal(64, b.PageOffset);
        Assert.Equal(62, b.TrueSize);
        Assert.Equal(74, cache.Offset);
        Assert.Equal(FragKit.RefBias - 1, cache.Bias);

        a.Free();
        b.Free();
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void Abort_gives_the_reference_and_the_bytes_after_the_start_granule_back()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(12, out PageFragment a));
        Assert.True(cache.TryAlloc(100, 64, out PageFragment b));
        Assert.Equal(164, cache.Offset);
        Assert.Equal(FragKit.RefBias - 1, cache.Bias);

        cache.Abort(b);

        // The start granule of b (8 bytes at 64) and its padding stay consumed: a copy of b never names the next
        // fragment (session 8; the kernel rewinds to 12).
        Assert.Equal(72, cache.Offset);
        Assert.Equal(FragKit.RefBias, cache.Bias);
        Assert.Equal(FragKit.FreshRefCount, cache.CurrentPage.RefCount);
        Assert.True(cache.TryAlloc(100, 64, out PageFragment c));
        Assert.Equal(b.Address + 64, c.Address);
        Assert.Equal(156, c.TrueSize);

        // After an abort the fragment before the aborted one is not the most recent any more.
        cache.Abort(c);
        Assert.Equal(136, cache.Offset);
        Assert.Throws<InvalidOperationException>(() => cache.Abort(a));
        Assert.Equal(FragKit.RefBias, cache.Bias);
        a.Free();
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void Abort_undoes_a_commit_and_a_coalesced_fragment_as_a_whole()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(10, out PageFragment a));
        Assert.True(cache.TryPrepare(40, 32, out PreparedFragment prepared));
        PageFragment b = cache.Commit(prepared, 40);
        Assert.True(cache.TryProbe(20, out PreparedFragment probed));
        cache.CommitNoRef(probed, 20, ref b);
        Assert.Equal(92, cache.Offset);
        Assert.Equal(82, b.TrueSize);

        cache.Abort(b);
        Assert.Equal(40, cache.Offset); // b started at 32; its start granule stays consumed
        Assert.Equal(FragKit.RefBias, cache.Bias);

        a.Free();
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void After_an_abort_the_page_is_still_reused_in_place_once_the_other_fragments_are_freed()
    {
        // The aborted reference went back to the bias; had it leaked, the count could never reach zero.
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(30000, out PageFragment a));
        Assert.True(cache.TryAlloc(2000, out PageFragment b));
        cache.Abort(b);
        a.Free();

        Assert.True(cache.TryAlloc(5000, out PageFragment c));
        Assert.Equal(1, cache.PagesReused);
        Assert.Equal(1, cache.PagesAllocated);
        Assert.Equal(a.Address, c.Address);

        c.Free();
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }
}
