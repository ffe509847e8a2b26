using System.Runtime.InteropServices;
using PageFrag.Frag;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;

namespace PageFrag.Tests.Frag;

/// <summary>
/// Bad input: each case checks the exception's type and message, that the cache's state did not move,
/// that the cache still works, and that no page leaked.
/// </summary>
public class PageFragCacheBadInputTests
{
    public static TheoryData<string, int> BadSizes()
    {
        var data = new TheoryData<string, int>();
        foreach (string api in new[] { "TryAlloc", "TryAllocAligned", "TryRefill", "TryPrepare", "TryPrepareAligned", "TryProbe" })
        {
            foreach (int size in new[] { 0, -1, int.MinValue, PageFragCache.MaxFragmentSize + 1, int.MaxValue })
            {
                data.Add(api, size);
            }
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(BadSizes))]
    public void A_size_that_is_not_between_1_and_32768_is_rejected_and_changes_nothing(string api, int size)
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(12, out PageFragment a));
        string paramName = api.StartsWith("TryPrepare", StringComparison.Ordinal) || api == "TryProbe" ? "minSize" : "size";

        ArgumentOutOfRangeException e = FragKit.Throws<ArgumentOutOfRangeException>(
            () => Call(cache, api, size, 1), paramName, "must be between 1 and 32768 bytes");
        Assert.Equal(size, e.ActualValue);

        Assert.Equal(12, cache.Offset);
        Assert.Equal(FragKit.RefBias, cache.Bias);
        Assert.Equal(1, cache.PagesAllocated);
        FragKit.AssertStillWorks(cache);
        a.Free();
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Theory]
    [InlineData("TryAllocAligned", 0)]
    [InlineData("TryAllocAligned", 3)]
    [InlineData("TryAllocAligned", 6)]
    [InlineData("TryAllocAligned", 8192)]
    [InlineData("TryAllocAligned", -64)]
    [InlineData("TryAllocAligned", int.MinValue)]
    [InlineData("TryRefill", 3)]
    [InlineData("TryPrepareAligned", 0)]
    [InlineData("TryPrepareAligned", 12)]
    [InlineData("TryPrepareAligned", 8192)]
    [InlineData("TryProbeAligned", 3)]
    [InlineData("TryProbeAligned", -1)]
    public void An_alignment_that_is_not_a_power_of_two_up_to_4096_is_rejected_and_changes_nothing(string api, int alignment)
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(12, out PageFragment a));

        ArgumentOutOfRangeException e = FragKit.Throws<ArgumentOutOfRangeException>(
            () => Call(cache, api, 100, alignment), "alignment", "power of two from 1 to 4096");
        Assert.Equal(alignment, e.ActualValue);

        Assert.Equal(12, cache.Offset);
        Assert.Equal(FragKit.RefBias, cache.Bias);
        FragKit.AssertStillWorks(cache);
        a.Free();
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void Bad_input_on_an_empty_cache_takes_no_page()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        FragKit.Throws<ArgumentOutOfRangeException>(() => cache.TryAlloc(0, out _), "size", "between 1 and 32768");
        FragKit.Throws<ArgumentOutOfRangeException>(() => cache.TryAlloc(10, 3, out _), "alignment", "power of two");
        FragKit.Throws<ArgumentOutOfRangeException>(() => cache.TryPrepare(40000, out _), "minSize", "between 1 and 32768");
        Assert.Equal(0, cache.PagesAllocated);
        Assert.Equal(0, allocator.PagesInUse);
        FragKit.AssertStillWorks(cache);
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(-1)]
    [InlineData(FragKit.BigPage - 12 + 1)]
    [InlineData(int.MaxValue)]
    public void A_commit_of_nothing_or_of_more_than_was_prepared_is_rejected_and_the_preparation_stays_usable(int usedSize)
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(12, out PageFragment a));
        Assert.True(cache.TryPrepare(10, out PreparedFragment prepared));
        Assert.Equal(FragKit.BigPage - 12, prepared.Size);

        FragKit.Throws<ArgumentOutOfRangeException>(() => cache.Commit(prepared, usedSize), "usedSize", "between 1 and the prepared size (32756)");
        FragKit.Throws<ArgumentOutOfRangeException>(() => cache.CommitNoRef(prepared, usedSize), "usedSize", "between 1 and the prepared size (32756)");
        PageFragment previous = a;
        FragKit.Throws<ArgumentOutOfRangeException>(() => cache.CommitNoRef(prepared, usedSize, ref previous), "usedSize", "between 1 and the prepared size");
        Assert.Equal(a, previous);
        Assert.Equal(12, cache.Offset);
        Assert.Equal(FragKit.RefBias, cache.Bias);

        PageFragment b = cache.Commit(prepared, 10);
        Assert.Equal(12, b.PageOffset);
        a.Free();
        b.Free();
        FragKit.AssertStillWorks(cache);
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void Committing_an_empty_preparation_is_rejected()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(12, out PageFragment a));
        PreparedFragment empty = default;

        FragKit.Throws<ArgumentException>(() => cache.Commit(empty, 1), "prepared", "The preparation is empty");
        FragKit.Throws<ArgumentException>(() => cache.CommitNoRef(empty, 1), "prepared", "The preparation is empty");
        FragKit.Throws<ArgumentException>(() => cache.CommitNoRef(empty, 1, ref a), "prepared", "The preparation is empty");
        FragKit.Throws<InvalidOperationException>(() => _ = empty.Span.Length, null, "The preparation is empty");
        FragKit.Throws<InvalidOperationException>(() => _ = empty.Address, null, "The preparation is empty");

        Assert.Equal(12, cache.Offset);
        a.Free();
        FragKit.AssertStillWorks(cache);
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void Committing_a_preparation_after_another_allocation_is_rejected_as_stale()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryPrepare(100, out PreparedFragment prepared));
        Assert.True(cache.TryAlloc(12, out PageFragment a));

        FragKit.Throws<InvalidOperationException>(() => cache.Commit(prepared, 100), null, "The preparation is stale", "past its offset");
        FragKit.Throws<InvalidOperationException>(() => cache.CommitNoRef(prepared, 100), null, "The preparation is stale", "past its offset");

        Assert.Equal(12, cache.Offset);
        Assert.Equal(FragKit.RefBias, cache.Bias);
        a.Free();
        FragKit.AssertStillWorks(cache);
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void Committing_a_preparation_after_the_cache_moved_to_a_new_page_is_rejected_as_stale()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(12, out PageFragment a));
        Assert.True(cache.TryPrepare(100, out PreparedFragment prepared));
        Assert.True(cache.TryAlloc(32760, out PageFragment b));
        Assert.NotEqual(a.Page, b.Page);

        FragKit.Throws<InvalidOperationException>(() => cache.Commit(prepared, 100), null, "The preparation is stale", "moved to another page");
        FragKit.Throws<InvalidOperationException>(() => cache.CommitNoRef(prepared, 100), null, "moved to another page");

        Assert.Equal(32760, cache.Offset);
        a.Free();
        b.Free();
        FragKit.AssertStillWorks(cache);
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void Committing_a_preparation_after_the_page_was_reused_in_place_is_rejected_as_stale()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(30000, out PageFragment a));
        Assert.True(cache.TryPrepare(100, out PreparedFragment prepared));
        a.Free();
        Assert.True(cache.TryAlloc(5000, out PageFragment b));
        Assert.Equal(1, cache.PagesReused);
        Assert.Equal(prepared.Page, b.Page);

        // Same page, a new life: the preparation's offset 30000 is ahead of the cache, but it is stale.
        FragKit.Throws<InvalidOperationException>(() => cache.Commit(prepared, 100), null, "moved to another page");

        Assert.Equal(5000, cache.Offset);
        b.Free();
        FragKit.AssertStillWorks(cache);
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void Committing_the_same_preparation_twice_is_rejected()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryPrepare(100, out PreparedFragment prepared));
        PageFragment a = cache.Commit(prepared, 100);

        FragKit.Throws<InvalidOperationException>(() => cache.Commit(prepared, 100), null, "The preparation is stale");
        FragKit.Throws<InvalidOperationException>(() => cache.CommitNoRef(prepared, 100), null, "The preparation is stale");
        FragKit.Throws<InvalidOperationException>(() => cache.CommitNoRef(prepared, 100, ref a), null, "The preparation is stale");

        Assert.Equal(100, cache.Offset);
        Assert.Equal(100, a.Length);
        Assert.Equal(FragKit.RefBias, cache.Bias);
        a.Free();
        FragKit.AssertStillWorks(cache);
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void Committing_another_caches_preparation_is_rejected()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var mine = new PageFragCache(allocator);
        var other = new PageFragCache(allocator);
        Assert.True(mine.TryAlloc(12, out PageFragment a));
        Assert.True(other.TryPrepare(100, out PreparedFragment theirs));

        FragKit.Throws<InvalidOperationException>(() => mine.Commit(theirs, 10), null, "The preparation is stale");

        Assert.Equal(12, mine.Offset);
        Assert.Equal(0, other.Offset);
        a.Free();
        other.Drain();
        FragKit.AssertStillWorks(mine);
        FragKit.DrainAndAssertNoLeak(mine, allocator);
    }

    [Fact]
    public void CommitNoRef_without_any_fragment_on_the_page_is_rejected()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryPrepare(100, out PreparedFragment fresh));

        FragKit.Throws<InvalidOperationException>(() => cache.CommitNoRef(fresh, 10), null, "CommitNoRef needs a fragment on the current page");
        Assert.Equal(0, cache.Offset);

        // A fragment that was aborted does not count either.
        Assert.True(cache.TryAlloc(20, out PageFragment a));
        cache.Abort(a);
        Assert.True(cache.TryPrepare(100, out PreparedFragment afterAbort));
        FragKit.Throws<InvalidOperationException>(() => cache.CommitNoRef(afterAbort, 10), null, "handed out none");

        Assert.Equal(8, cache.Offset);
        Assert.Equal(FragKit.RefBias + 1, cache.Bias);
        FragKit.AssertStillWorks(cache);
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void Coalescing_with_a_fragment_that_does_not_end_where_the_preparation_starts_is_rejected()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(100, out PageFragment a));
        Assert.True(cache.TryAlloc(100, out PageFragment b));
        PageFragment notLast = a;
        PageFragment empty = default;

        Assert.True(cache.TryProbe(10, out PreparedFragment probed));
        FragKit.Throws<InvalidOperationException>(() => cache.CommitNoRef(probed, 10, ref notLast), null, "does not end where the preparation starts");
        FragKit.Throws<InvalidOperationException>(() => cache.CommitNoRef(probed, 10, ref empty), null, "does not end where the preparation starts");

        // An aligned preparation leaves a gap behind b: not contiguous either.
        Assert.True(cache.TryPrepare(10, 64, out PreparedFragment aligned));
        Assert.Equal(256, aligned.Offset);
        PageFragment last = b;
        FragKit.Throws<InvalidOperationException>(() => cache.CommitNoRef(aligned, 10, ref last), null, "does not end where the preparation starts");

        Assert.Equal(a, notLast);
        Assert.Equal(b, last);
        Assert.True(empty.IsEmpty);
        Assert.Equal(200, cache.Offset);
        Assert.Equal(FragKit.RefBias - 1, cache.Bias);

        a.Free();
        b.Free();
        FragKit.AssertStillWorks(cache);
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void Coalescing_with_a_fragment_of_an_earlier_page_is_rejected()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(32000, out PageFragment old));
        Assert.True(cache.TryAlloc(1000, out PageFragment fresh));
        Assert.True(cache.TryProbe(10, out PreparedFragment probed));
        PageFragment previous = old;

        FragKit.Throws<InvalidOperationException>(() => cache.CommitNoRef(probed, 10, ref previous), null, "does not end where the preparation starts");

        Assert.Equal(old, previous);
        Assert.Equal(1000, cache.Offset);
        old.Free();
        fresh.Free();
        FragKit.AssertStillWorks(cache);
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void Coalescing_with_an_aborted_fragment_is_rejected_even_when_an_aligned_preparation_starts_where_it_ended()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(12, out PageFragment a));
        Assert.True(cache.TryAlloc(20, out PageFragment aborted));
        cache.Abort(aborted);
        Assert.True(cache.TryPrepare(1, 32, out PreparedFragment prepared));
        Assert.Equal(aborted.PageOffset + aborted.Length, prepared.Offset);
        PageFragment dead = aborted;

        // The aborted handle owns no reference: growing it would hand out bytes nobody holds.
        FragKit.Throws<InvalidOperationException>(() => cache.CommitNoRef(prepared, 8, ref dead), null, "does not end where the preparation starts");

        Assert.Equal(aborted, dead);
        Assert.Equal(20, cache.Offset);
        Assert.Equal(FragKit.RefBias, cache.Bias);
        a.Free();
        FragKit.AssertStillWorks(cache);
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void Aborting_a_fragment_that_is_not_the_most_recent_is_rejected()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(100, out PageFragment a));
        Assert.True(cache.TryAlloc(100, out PageFragment b));

        FragKit.Throws<InvalidOperationException>(() => cache.Abort(a), null, "Only the most recent allocation of this cache can be aborted");

        Assert.Equal(200, cache.Offset);
        Assert.Equal(FragKit.RefBias - 1, cache.Bias);
        a.Free();
        b.Free();
        FragKit.AssertStillWorks(cache);
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void Aborting_the_same_fragment_twice_is_rejected()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(100, out PageFragment a));
        Assert.True(cache.TryAlloc(100, out PageFragment b));
        cache.Abort(b);

        FragKit.Throws<InvalidOperationException>(() => cache.Abort(b), null, "Only the most recent allocation");

        Assert.Equal(108, cache.Offset);
        Assert.Equal(FragKit.RefBias, cache.Bias);
        a.Free();
        FragKit.AssertStillWorks(cache);
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void Aborting_an_already_freed_fragment_is_a_double_free()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(100, out PageFragment a));
        Assert.True(cache.TryAlloc(100, out PageFragment b));
        b.Free();
        Page page = cache.CurrentPage;

        FragKit.Throws<PageFragDoubleFreeException>(() => cache.Abort(b), null, "already freed and cannot be aborted");

        Assert.Equal(200, cache.Offset);
        Assert.Equal(FragKit.RefBias - 1, cache.Bias);
        Assert.Equal(FragKit.FreshRefCount - 1, page.RefCount);
        a.Free();
        FragKit.AssertStillWorks(cache);
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void Aborting_an_empty_fragment_or_one_of_another_cache_is_rejected()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        var other = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(100, out PageFragment a));
        Assert.True(other.TryAlloc(100, out PageFragment theirs));

        FragKit.Throws<ArgumentException>(() => cache.Abort(default), "fragment", "The fragment is empty");
        FragKit.Throws<InvalidOperationException>(() => cache.Abort(theirs), null, "Only the most recent allocation of this cache");

        Assert.Equal(100, cache.Offset);
        Assert.Equal(100, other.Offset);
        a.Free();
        theirs.Free();
        other.Drain();
        FragKit.AssertStillWorks(cache);
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void Freeing_an_empty_fragment_is_rejected()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        PageFragment empty = default;
        Assert.True(empty.IsEmpty);

        FragKit.Throws<ArgumentException>(() => PageFragCache.Free(empty), "fragment", "The fragment is empty");
        FragKit.Throws<ArgumentException>(() => empty.Free(), "fragment", "The fragment is empty");
        FragKit.Throws<InvalidOperationException>(() => _ = empty.Span.Length, null, "The fragment is empty");
        FragKit.Throws<InvalidOperationException>(() => _ = empty.Address, null, "The fragment is empty");
        FragKit.Throws<InvalidOperationException>(() => _ = empty.Memory, null, "The fragment is empty");
        FragKit.Throws<InvalidOperationException>(() => _ = empty.Page, null, "The fragment is empty");
        Assert.Equal("PageFragment(empty)", empty.ToString());

        FragKit.AssertStillWorks(cache);
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void Freeing_a_fragment_twice_by_handle_throws_and_leaves_the_page_intact()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(100, out PageFragment a));
        Assert.True(cache.TryAlloc(100, out PageFragment b));
        Page page = cache.CurrentPage;
        PageFragment copy = a;
        a.Free();

        FragKit.Throws<PageFragDoubleFreeException>(() => a.Free(), null, "The fragment was already freed");
        FragKit.Throws<PageFragDoubleFreeException>(() => PageFragCache.Free(copy), null, "The fragment was already freed");

        Assert.Equal(FragKit.FreshRefCount - 1, page.RefCount);
        b.Free();
        FragKit.AssertStillWorks(cache);
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void Freeing_a_fragment_twice_by_address_or_once_each_way_throws_and_leaves_the_page_intact()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(100, out PageFragment a));
        Assert.True(cache.TryAlloc(100, out PageFragment b));
        Assert.True(cache.TryAlloc(100, out PageFragment c));
        Page page = cache.CurrentPage;

        PageFragCache.Free(a.Address);
        FragKit.Throws<PageFragDoubleFreeException>(() => PageFragCache.Free(a.Address), null, $"0x{a.Address:x}", "was already freed");
        FragKit.Throws<PageFragDoubleFreeException>(() => a.Free(), null, "already freed");

        b.Free();
        FragKit.Throws<PageFragDoubleFreeException>(() => PageFragCache.Free(b.Address), null, $"0x{b.Address:x}", "was already freed");

        Assert.Equal(FragKit.FreshRefCount - 2, page.RefCount);
        c.Free();
        FragKit.AssertStillWorks(cache);
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public unsafe void Freeing_an_address_that_no_arena_owns_is_rejected()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(100, out PageFragment a));
        byte[] foreign = GC.AllocateArray<byte>(64, pinned: true);
        nint foreignAddress = (nint)Marshal.UnsafeAddrOfPinnedArrayElement(foreign, 0);
        nint native = Marshal.AllocHGlobal(64);
        try
        {
            FragKit.Throws<ArgumentException>(() => PageFragCache.Free(foreignAddress), "address", "No PageFrag arena owns the address", $"0x{foreignAddress:x}");
            FragKit.Throws<ArgumentException>(() => PageFragCache.Free(native), "address", "No PageFrag arena owns the address");
            FragKit.Throws<ArgumentException>(() => PageFragCache.Free(0), "address", "No PageFrag arena owns the address 0x0");
            FragKit.Throws<ArgumentException>(() => PageFragCache.Free(-1), "address", "No PageFrag arena owns the address");
            FragKit.Throws<ArgumentException>(() => PageFragCache.Free((void*)native), "address", "No PageFrag arena owns the address");
        }
        finally
        {
            Marshal.FreeHGlobal(native);
        }

        Assert.Equal(FragKit.FreshRefCount, cache.CurrentPage.RefCount);
        a.Free();
        FragKit.AssertStillWorks(cache);
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void Freeing_by_address_after_the_allocator_was_disposed_is_rejected()
    {
        PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(100, out PageFragment a));
        nint address = a.Address;
        a.Free();
        FragKit.DrainAndAssertNoLeak(cache, allocator);

        allocator.Dispose();
        FragKit.Throws<ArgumentException>(() => PageFragCache.Free(address), "address", "No PageFrag arena owns the address");
        Assert.Throws<ObjectDisposedException>(() => cache.TryAlloc(100, out _));
    }

    [Fact]
    public void Freeing_a_stale_handle_after_its_page_was_reused_in_place_throws_and_spares_the_new_fragment()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(30000, out PageFragment old));
        old.Free();
        Assert.True(cache.TryAlloc(30000, out PageFragment reborn));
        Assert.Equal(1, cache.PagesReused);
        Assert.Equal(old.Address, reborn.Address);
        Page page = cache.CurrentPage;

        FragKit.Throws<PageFragDoubleFreeException>(() => old.Free(), null, "already returned to the allocator or reused");

        Assert.Equal(FragKit.FreshRefCount, page.RefCount);
        reborn.Free();
        FragKit.AssertStillWorks(cache);
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void Freeing_a_fragment_after_its_page_went_back_to_the_allocator_throws()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(100, out PageFragment a));
        a.Free();
        cache.Drain();
        Assert.Equal(0, allocator.PagesInUse);

        FragKit.Throws<PageFragDoubleFreeException>(() => a.Free(), null, "already returned to the allocator or reused");
        FragKit.Throws<PageFragDoubleFreeException>(() => PageFragCache.Free(a.Address), null, "is not allocated", "already freed");

        Leaks.AssertNone(allocator);
        FragKit.AssertStillWorks(cache);
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void Aborted_bytes_go_to_the_next_fragment_which_frees_normally()
    {
        // Freeing the aborted handle itself is a caller bug that is not detected (as in the kernel): the
        // owner would have to clear a mark that freeing threads write without atomics, which could turn
        // into a false double-free report. See docs/kernel-map.md.
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(100, out PageFragment a));
        Assert.True(cache.TryAlloc(100, out PageFragment aborted));
        cache.Abort(aborted);
        Page page = cache.CurrentPage;
        Assert.Equal(FragKit.FreshRefCount, page.RefCount);
        Assert.Equal(108, cache.Offset); // the start granule stays consumed (session 8)

        Assert.True(cache.TryAlloc(100, out PageFragment next));
        Assert.Equal(aborted.Address + 8, next.Address);
        Assert.Throws<PageFragDoubleFreeException>(() => aborted.Free());
        next.Free();
        a.Free();
        FragKit.AssertStillWorks(cache);
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    private static void Call(PageFragCache cache, string api, int size, int alignment)
    {
        bool ok = api switch
        {
            "TryAlloc" => cache.TryAlloc(size, out _),
            "TryAllocAligned" => cache.TryAlloc(size, alignment, out _),
            "TryRefill" => alignment == 1 ? cache.TryRefill(size, out _) : cache.TryRefill(size, alignment, out _),
            "TryPrepare" => cache.TryPrepare(size, out _),
            "TryPrepareAligned" => cache.TryPrepare(size, alignment, out _),
            "TryProbe" => cache.TryProbe(size, out _),
            "TryProbeAligned" => cache.TryProbe(size, alignment, out _),
            _ => throw new ArgumentOutOfRangeException(nameof(api)),
        };
        Assert.Fail($"{api}({size}, {alignment}) returned {ok} instead of throwing");
    }
}
