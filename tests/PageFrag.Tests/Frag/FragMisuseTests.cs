using System.Collections.Concurrent;
using System.Diagnostics;
using System.Diagnostics.Tracing;
using System.Runtime.CompilerServices;
using PageFrag.Frag;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;

namespace PageFrag.Tests.Frag;

/// <summary>
/// Misuse of the public API of the fragment cache (issue 11 items 1, 5 and 7, issue 12 items 2 and 5): checked
/// addresses, use after free in the detection mode, sizes near int.MaxValue, disposal and the finalizer's
/// safety net, and the owner rule.
/// </summary>
public class FragMisuseTests
{
    private static PageAllocator DetectingAllocator()
    {
        var allocator = new PageAllocator(new PageAllocatorOptions { ArenaSize = 256 * 1024, DetectMisuse = true });
        Assert.True(allocator.TryAllocPages(0, AllocFlags.None, out Page page));
        allocator.FreePages(page);
        allocator.DrainPerCpuLists();
        return allocator;
    }

    // ------------------------------------------------------------------ addresses (item 5)

    [Fact]
    public void Free_of_an_interior_address_is_refused_and_changes_nothing()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(64, out PageFragment f));
        int refCount = f.Page.RefCount;
        FragKit.Throws<PageFragDoubleFreeException>(() => PageFragCache.Free(f.Address + 16), null, "No live fragment starts", "inside a fragment");
        FragKit.Throws<ArgumentException>(() => PageFragCache.Free(f.Address + 3), "address", "inside a fragment");
        Assert.Equal(refCount, f.Page.RefCount);
        f.Free();
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void Free_of_the_uncarved_tail_of_a_page_is_refused_and_changes_nothing()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(100, out PageFragment f));
        int refCount = f.Page.RefCount;
        nint tail = f.Page.Address + cache.Offset + 64;
        FragKit.Throws<PageFragDoubleFreeException>(() => PageFragCache.Free(tail), null, "No live fragment starts");
        Assert.Equal(refCount, f.Page.RefCount);
        f.Free();
        FragKit.AssertStillWorks(cache);
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void Free_of_a_raw_page_from_TryAllocPages_is_refused_and_the_page_stays_its_owners()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        Assert.True(allocator.TryAllocPages(0, AllocFlags.None, out Page raw));
        FragKit.Throws<ArgumentException>(() => PageFragCache.Free(raw.Address), "address", "no fragment cache carves");
        Assert.Equal(1, raw.RefCount);
        Assert.True(allocator.TryAllocPages(0, AllocFlags.None, out Page next));
        Assert.NotEqual(raw.Address, next.Address);
        allocator.FreePages(next);
        allocator.FreePages(raw);
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_stale_address_after_in_place_reuse_that_is_no_longer_a_fragment_start_is_refused()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(10, out PageFragment pad));
        Assert.True(cache.TryAlloc(100, out PageFragment old));
        nint stale = old.Address;
        pad.Free();
        old.Free();

        // Fill the page until it is reused in place; the fragment that triggers the reuse starts at offset 0.
        PageFragment first;
        do
        {
            Assert.True(cache.TryAlloc(13, out first));
            if (cache.PagesReused == 0)
            {
                first.Free();
            }
        }
        while (cache.PagesReused == 0);

        Assert.True(cache.TryAlloc(100, out PageFragment second));
        Assert.Equal(old.Page.Address, first.Address);
        Assert.Equal(stale + 3, second.Address);
        FragKit.Fill(first, 1);
        FragKit.Fill(second, 2);

        // The stale address now lies inside the granule where `second` starts: refused, nothing changes.
        FragKit.Throws<ArgumentException>(() => PageFragCache.Free(stale), "address", "inside a fragment");
        FragKit.Throws<PageFragDoubleFreeException>(() => old.Free(), null, "reused");
        Assert.True(FragKit.IsIntact(first, 1) && FragKit.IsIntact(second, 2));
        first.Free();
        PageFragCache.Free(second.Address);
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    // ------------------------------------------------------------------ use after free (item 7)

    [Fact]
    public void In_the_detection_mode_every_access_to_a_freed_or_stale_fragment_throws()
    {
        using PageAllocator allocator = DetectingAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(64, out PageFragment a));
        a.Free();
        cache.Drain();
        var other = new PageFragCache(allocator);
        Assert.True(other.TryAlloc(64, out PageFragment b));
        FragKit.Fill(b, 3);
        FragKit.Throws<InvalidOperationException>(() => a.Span.Fill(0xCC), null, "Use after free");
        FragKit.Throws<InvalidOperationException>(() => _ = a.Memory, null, "Use after free");
        FragKit.Throws<InvalidOperationException>(() => _ = a.ArraySegment, null, "Use after free");
        FragKit.Throws<InvalidOperationException>(() => TouchPointer(a), null, "Use after free");
        Assert.True(FragKit.IsIntact(b, 3));
        Assert.Equal(64, b.Span.Length);
        b.Free();
        FragKit.DrainAndAssertNoLeak(other, allocator);
    }

    [Fact]
    public void In_the_detection_mode_an_aborted_fragment_cannot_be_touched()
    {
        using PageAllocator allocator = DetectingAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(5, out PageFragment a));
        cache.Abort(a);
        FragKit.Throws<InvalidOperationException>(() => a.Span.Clear(), null, "Use after free");
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void In_the_default_mode_an_access_after_free_is_not_checked()
    {
        // Documented: the default mode keeps Span as cheap as before, so the repro of item 7 is not caught there.
        using PageAllocator allocator = FragKit.NewAllocator();
        Assert.False(allocator.DetectMisuse);
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(64, out PageFragment a));
        a.Free();
        Assert.Equal(64, a.Span.Length);
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    private static unsafe void TouchPointer(PageFragment f) => *f.Pointer = 0xCC;

    // ------------------------------------------------------------------ sizes near int.MaxValue (item 1)

    [Theory]
    [InlineData(int.MaxValue)]
    [InlineData(int.MaxValue - 7)]
    [InlineData(int.MinValue)]
    [InlineData(PageFragCache.MaxFragmentSize + 1)]
    public void Sizes_near_int_MaxValue_are_refused_on_every_entry_point_and_change_nothing(int size)
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(10, out PageFragment previous));
        int offset = cache.Offset;
        int bias = cache.Bias;
        FragKit.Throws<ArgumentOutOfRangeException>(() => cache.TryAlloc(size, out _), "size");
        FragKit.Throws<ArgumentOutOfRangeException>(() => cache.TryAlloc(size, 8, out _), "size");
        FragKit.Throws<ArgumentOutOfRangeException>(() => cache.TryAlloc(8, size, out _), "alignment");
        FragKit.Throws<ArgumentOutOfRangeException>(() => cache.TryRefill(size, out _), "size");
        FragKit.Throws<ArgumentOutOfRangeException>(() => cache.TryPrepare(size, out _), "minSize");
        FragKit.Throws<ArgumentOutOfRangeException>(() => cache.TryPrepare(8, size, out _), "alignment");
        FragKit.Throws<ArgumentOutOfRangeException>(() => cache.TryProbe(size, out _), "minSize");
        Assert.True(cache.TryProbe(1, out PreparedFragment prepared));
        FragKit.Throws<ArgumentOutOfRangeException>(() => cache.Commit(prepared, size), "usedSize");
        FragKit.Throws<ArgumentOutOfRangeException>(() => cache.CommitNoRef(prepared, size), "usedSize");
        PageFragment p = previous;
        FragKit.Throws<ArgumentOutOfRangeException>(() => cache.TryCommitNoRef(prepared, size, ref p), "usedSize");
        FragKit.Throws<ArgumentOutOfRangeException>(() => cache.CommitNoRef(prepared, size, ref p), "usedSize");
        Assert.Equal(previous, p);
        Assert.Equal(offset, cache.Offset);
        Assert.Equal(bias, cache.Bias);
        previous.Free();
        FragKit.AssertStillWorks(cache);
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void Addresses_near_the_ends_of_the_address_space_are_refused()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        FragKit.Throws<ArgumentException>(() => PageFragCache.Free(nint.MaxValue), "address", "No PageFrag arena owns");
        FragKit.Throws<ArgumentException>(() => PageFragCache.Free(nint.MinValue), "address", "No PageFrag arena owns");
        FragKit.Throws<ArgumentException>(() => PageFragCache.Free((nint)int.MaxValue), "address", "No PageFrag arena owns");
        Leaks.AssertNone(allocator);
    }

    // ------------------------------------------------------------------ Dispose and the finalizer (issue 12 item 2)

    [Fact]
    public void A_disposed_cache_refuses_allocation_but_its_fragments_still_free()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(100, out PageFragment a));
        Assert.True(cache.TryAlloc(100, out PageFragment b));
        Assert.True(cache.TryPrepare(10, out PreparedFragment prepared));
        cache.Dispose();
        Assert.Equal(0, cache.CurrentPageSize);
        FragKit.Throws<ObjectDisposedException>(() => cache.TryAlloc(10, out _), null);
        FragKit.Throws<ObjectDisposedException>(() => cache.TryPrepare(10, out _), null);
        FragKit.Throws<ObjectDisposedException>(() => cache.TryProbe(10, out _), null);
        FragKit.Throws<ObjectDisposedException>(() => cache.Commit(prepared, 5), null);
        FragKit.Throws<ObjectDisposedException>(() => cache.Abort(b), null);
        cache.Dispose();
        cache.Drain();
        a.Free();
        cache.FreeLocal(b);
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_thousand_caches_never_drained_give_their_pages_back_when_collected_and_report_it()
    {
        using PageAllocator allocator = FragKit.NewAllocator(arenaSize: 4 << 20);
        using var listener = new LeakListener();
        LeakCaches(allocator, 1000);
        Assert.True(allocator.PagesInUse > 0);
        var stop = Stopwatch.StartNew();
        while (allocator.PagesInUse != 0 && stop.ElapsedMilliseconds < 3000)
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
            GC.Collect();
        }

        Leaks.AssertNone(allocator);
        Assert.True(listener.Events.Count >= 1000, $"{listener.Events.Count} leak events");
        Assert.Contains(listener.Events, e => (string)e.Payload![0]! == nameof(PageFragCache) && (long)e.Payload[1]! == 1);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void LeakCaches(PageAllocator allocator, int count)
    {
        for (int i = 0; i < count; i++)
        {
            var cache = new PageFragCache(allocator);
            Assert.True(cache.TryAlloc(64, out PageFragment f));
            f.Free();
        }
    }

    private sealed class LeakListener : EventListener
    {
        public readonly ConcurrentQueue<EventWrittenEventArgs> Events = new();

        protected override void OnEventSourceCreated(EventSource eventSource)
        {
            if (eventSource.Name == "PageFrag")
            {
                EnableEvents(eventSource, EventLevel.Warning);
            }
        }

        protected override void OnEventWritten(EventWrittenEventArgs eventData)
        {
            if (eventData.EventId == 1 && eventData.Payload is { Count: > 0 } p && p[0] as string == nameof(PageFragCache))
            {
                Events.Enqueue(eventData);
            }
        }
    }

    // ------------------------------------------------------------------ the owner rule (issue 12 item 5)

    [Fact]
    public void In_the_detection_mode_two_threads_in_one_cache_get_an_exception_that_names_the_owner_rule()
    {
        using PageAllocator allocator = DetectingAllocator();
        var cache = new PageFragCache(allocator);
        using var barrier = new Barrier(2);
        var caught = new ConcurrentQueue<InvalidOperationException>();
        var stop = Stopwatch.StartNew();
        void Work()
        {
            barrier.SignalAndWait();
            while (caught.IsEmpty && stop.ElapsedMilliseconds < 2000)
            {
                try
                {
                    if (cache.TryAlloc(16, out PageFragment f))
                    {
                        PageFragCache.Free(f);
                    }
                }
                catch (InvalidOperationException e) when (e is not PageFragDoubleFreeException)
                {
                    caught.Enqueue(e);
                }
            }
        }

        var t = new Thread(Work);
        t.Start();
        Work();
        t.Join();
        Assert.False(caught.IsEmpty, "two threads used one cache at once for 2 s and nothing noticed");
        Assert.All(caught, e => Assert.Contains("belongs to one thread at a time", e.Message, StringComparison.Ordinal));
        cache.Drain();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_stale_preparation_says_that_the_owner_rule_is_the_likely_cause()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryPrepare(100, out PreparedFragment prepared));
        Assert.True(cache.TryAlloc(64, out PageFragment intruder));
        FragKit.Throws<InvalidOperationException>(() => cache.Commit(prepared, 10), null, "The preparation is stale", "belongs to one thread at a time", "await");
        intruder.Free();
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }
}
