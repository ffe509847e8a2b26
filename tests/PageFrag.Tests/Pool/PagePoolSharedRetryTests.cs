using System.Diagnostics.Tracing;
using System.Reflection;
using PageFrag.Pages;
using PageFrag.Pool;
using PageFrag.Tests.Infrastructure;
using static PageFrag.Tests.Pool.PoolTesting;

namespace PageFrag.Tests.Pool;

/// <summary>Issue 11 item 10: one retry worker for every disposed pool with pages in flight.</summary>
public class PagePoolSharedRetryTests
{
    [Fact]
    public void A_pool_has_no_timer_of_its_own()
    {
        FieldInfo[] fields = typeof(PagePool).GetFields(BindingFlags.Instance | BindingFlags.NonPublic | BindingFlags.Public);
        Assert.DoesNotContain(fields, f => typeof(Timer).IsAssignableFrom(f.FieldType));
    }

    [Fact]
    public void Two_thousand_pools_disposed_with_a_page_out_share_one_timer_and_each_is_freed_when_its_page_returns()
    {
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 4 << 20);
        const int Pools = 2000;
        var pools = new PagePool[Pools];
        var pages = new NetMem[Pools];
        long timersBefore = Timer.ActiveCount;
        for (int i = 0; i < Pools; i++)
        {
            pools[i] = NewPool(allocator, poolSize: 1, retry: TimeSpan.FromMilliseconds(50));
            Assert.True(pools[i].TryAllocNetMem(out pages[i]));
            pools[i].Dispose();
            Assert.False(pools[i].IsReleased);
        }

        // Other tests run in parallel and may hold timers of their own: allow for them, not for 2,000.
        Assert.True(Timer.ActiveCount - timersBefore < 100, $"{Timer.ActiveCount - timersBefore} new timers for {Pools} pools");
        Assert.True(PoolReleaseWorker.WaitingPools >= Pools);
        Assert.True(PoolReleaseWorker.TimerRunning);

        Thread.Sleep(150); // a few ticks with everything still out: nobody is freed early.
        Assert.All(pools, p => Assert.False(p.IsReleased));

        for (int i = 0; i < Pools; i++)
        {
            pools[i].PutFullPage(pages[i], allowDirect: false);
            Assert.True(pools[i].IsReleased);
        }

        // Each pool leaves the worker once freed (on its next tick at the latest).
        var deadline = DateTime.UtcNow.AddSeconds(3);
        while (PoolReleaseWorker.WaitingPools >= Pools && DateTime.UtcNow < deadline)
        {
            Thread.Sleep(20);
        }

        Assert.True(PoolReleaseWorker.WaitingPools < Pools, $"{PoolReleaseWorker.WaitingPools} pools still registered");
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_stalled_pool_writes_PoolStalled_with_the_missing_page_address()
    {
        using var listener = new StallListener();
        using PageAllocator allocator = Leaks.NewAllocator();
        PagePool pool = NewPool(allocator, retry: TimeSpan.FromMilliseconds(20), warn: TimeSpan.FromMilliseconds(1));
        Assert.True(pool.TryAllocNetMem(out NetMem page));
        pool.Dispose();
        string expected = "0x" + ((long)page.Address).ToString("x", System.Globalization.CultureInfo.InvariantCulture);
        Thread.Sleep(5);
        pool.RetryRelease();
        var deadline = DateTime.UtcNow.AddSeconds(3);
        while (!listener.Seen(pool.Id, expected) && DateTime.UtcNow < deadline)
        {
            Thread.Sleep(10);
        }

        Assert.True(listener.Seen(pool.Id, expected), "PoolStalled with the page's address was not written");
        pool.PutFullPage(page, allowDirect: false);
        Assert.True(pool.IsReleased);
        Leaks.AssertNone(allocator);
    }

    private sealed class StallListener : EventListener
    {
        private readonly List<(long Pool, string Missing)> _events = [];

        public bool Seen(long poolId, string address)
        {
            lock (_events)
            {
                return _events.Exists(e => e.Pool == poolId && e.Missing.Contains(address, StringComparison.Ordinal));
            }
        }

        protected override void OnEventSourceCreated(EventSource eventSource)
        {
            if (eventSource.Name == PageFragEventSource.EventSourceName)
            {
                EnableEvents(eventSource, EventLevel.Warning);
            }
        }

        protected override void OnEventWritten(EventWrittenEventArgs eventData)
        {
            if (eventData.EventName == "PoolStalled" && eventData.Payload is { Count: 4 } p)
            {
                lock (_events)
                {
                    _events.Add((Convert.ToInt64(p[0], System.Globalization.CultureInfo.InvariantCulture), (string)p[3]!));
                }
            }
        }
    }
}
