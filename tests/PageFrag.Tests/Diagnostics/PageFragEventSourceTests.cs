using System.Collections.Concurrent;
using System.Diagnostics.Tracing;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;

namespace PageFrag.Tests.Diagnostics;

public class PageFragEventSourceTests
{
    /// <summary>Collects the PageFrag events written while it lives (from the whole process: tests filter on payload).</summary>
    private sealed class Listener : EventListener
    {
        public ConcurrentQueue<EventWrittenEventArgs> Events { get; } = new();

        protected override void OnEventSourceCreated(EventSource eventSource)
        {
            if (eventSource.Name == PageFragEventSource.EventSourceName)
            {
                EnableEvents(eventSource, EventLevel.Informational);
            }
        }

        protected override void OnEventWritten(EventWrittenEventArgs eventData)
        {
            if (eventData.EventSource.Name == PageFragEventSource.EventSourceName)
            {
                Events.Enqueue(eventData);
            }
        }
    }

    [Fact]
    public void The_event_source_is_named_PageFrag_with_stable_ids()
    {
        Assert.Equal("PageFrag", PageFragEventSource.Log.Name);
        Assert.Equal("PageFrag", EventSource.GetName(typeof(PageFragEventSource)));
        Assert.Equal(1, PageFragEventSource.Ids.LeakReclaimed);
        Assert.Equal(2, PageFragEventSource.Ids.PoolStalled);
        Assert.Equal(3, PageFragEventSource.Ids.LimitReached);
    }

    [Fact]
    public void LeakReclaimed_is_a_warning_with_kind_count_bytes_and_stack()
    {
        using var listener = new Listener();
        PageFragEventSource.Log.LeakReclaimed("EventSourceTestLeak", 3, 12288, "at Test.Alloc()");
        EventWrittenEventArgs e = Assert.Single(listener.Events, e => e.EventId == 1 && (string?)e.Payload![0] == "EventSourceTestLeak");
        Assert.Equal("LeakReclaimed", e.EventName);
        Assert.Equal(EventLevel.Warning, e.Level);
        Assert.Equal(["kind", "count", "bytes", "allocationStack"], e.PayloadNames!);
        Assert.Equal(["EventSourceTestLeak", 3L, 12288L, "at Test.Alloc()"], e.Payload!);
        Assert.Equal("EventSourceTestLeak collected without Dispose: 3 buffer(s), 12288 bytes given back by the finalizer. Allocated at: at Test.Alloc()", Format(e));
    }

    [Fact]
    public void PoolStalled_is_a_warning_with_pool_pages_seconds_and_what_is_missing()
    {
        using var listener = new Listener();
        PageFragEventSource.Log.PoolStalled(-4242, 2, 60.5, "0x1000, 0x2000");
        EventWrittenEventArgs e = Assert.Single(listener.Events, e => e.EventId == 2 && (long)e.Payload![0]! == -4242);
        Assert.Equal("PoolStalled", e.EventName);
        Assert.Equal(EventLevel.Warning, e.Level);
        Assert.Equal([-4242L, 2L, 60.5, "0x1000, 0x2000"], e.Payload!);
        Assert.Equal("Stalled page pool shutdown: pool -4242, 2 page(s) in flight after 60.5 s. Missing: 0x1000, 0x2000", Format(e));
    }

    [Fact]
    public void An_allocation_refused_by_MaxBytes_writes_LimitReached_and_a_successful_one_does_not()
    {
        // 3 arenas of 32 KiB: a limit no other test uses, so the events are this test's.
        using var allocator = new PageAllocator(new PageAllocatorOptions { ArenaSize = 1 << 15, MaxBytes = 3 << 15 });
        using var listener = new Listener();
        var pages = new List<Page>();
        for (int i = 0; i < 3; i++)
        {
            Assert.True(allocator.TryAllocPages(3, AllocFlags.None, out Page page));
            pages.Add(page);
        }

        Assert.DoesNotContain(listener.Events, e => e.EventId == 3 && (long)e.Payload![0]! == 3 << 15);
        Assert.False(allocator.TryAllocPages(0, AllocFlags.None, out _));

        EventWrittenEventArgs e = Assert.Single(listener.Events, e => e.EventId == 3 && (long)e.Payload![0]! == 3 << 15);
        Assert.Equal("LimitReached", e.EventName);
        Assert.Equal(EventLevel.Informational, e.Level);
        Assert.Equal([3L << 15, 3L << 15, 4096L], e.Payload!);
        Assert.Equal("Allocation of 4096 bytes refused: the memory limit of 98304 bytes is reached (98304 bytes in arenas).", Format(e));

        foreach (Page page in pages)
        {
            allocator.FreePages(page);
        }

        Leaks.AssertNone(allocator);
    }

    private static string Format(EventWrittenEventArgs e) =>
        string.Format(System.Globalization.CultureInfo.InvariantCulture, e.Message!, [.. e.Payload!]);
}
