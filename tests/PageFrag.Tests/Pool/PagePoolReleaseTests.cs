using PageFrag.Pages;
using PageFrag.Pool;
using PageFrag.Tests.Infrastructure;
using static PageFrag.Tests.Pool.PoolTesting;

namespace PageFrag.Tests.Pool;

public class PagePoolReleaseTests
{
    [Fact]
    public void Dispose_empties_the_cache_and_the_ring_and_frees_a_pool_with_nothing_in_flight()
    {
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 1 << 20);
        PagePool pool = NewPool(allocator);
        var held = new List<NetMem>();
        for (int i = 0; i < 70; i++)
        {
            Assert.True(pool.TryAllocNetMem(out NetMem m));
            held.Add(m);
        }

        OnOtherThread(() => held.Take(10).ToList().ForEach(m => pool.PutFullPage(m, false)));
        held.Skip(10).ToList().ForEach(pool.RecycleDirect);
        Assert.Equal(10, pool.RingPages);
        Assert.Equal(128, pool.PagesHeld);
        Assert.Equal(128, allocator.PagesInUse);

        pool.Dispose();
        Assert.True(pool.IsReleased);
        Assert.Equal(0, pool.CachedPages);
        Assert.Equal(0, pool.RingPages);
        Assert.Equal(128, pool.PagesReleased);
        pool.Dispose(); // idempotent
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Pages_held_on_other_threads_keep_the_pool_alive_and_the_last_one_returned_frees_it()
    {
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 1 << 20);
        PagePool pool = NewPool(allocator);
        const int Threads = 4;
        const int PerThread = 50;
        var buffers = new PagePoolBuffer[Threads][];
        for (int t = 0; t < Threads; t++)
        {
            buffers[t] = new PagePoolBuffer[PerThread];
            for (int i = 0; i < PerThread; i++)
            {
                Assert.True(pool.TryAlloc(i % 3 == 0 ? 3000 : 200 + i, out buffers[t][i]));
                buffers[t][i].Span.Fill((byte)t);
            }
        }

        using var disposed = new ManualResetEventSlim();
        using var firstHalfDone = new CountdownEvent(Threads);
        var threads = new Thread[Threads];
        var errors = new List<Exception>();
        for (int t = 0; t < Threads; t++)
        {
            int me = t;
            threads[t] = new Thread(() =>
            {
                try
                {
                    // Free half before the destroy, half after: both must end up with the allocator.
                    for (int i = 0; i < PerThread / 2; i++)
                    {
                        buffers[me][i].Free();
                    }

                    firstHalfDone.Signal();
                    disposed.Wait();
                    for (int i = PerThread / 2; i < PerThread; i++)
                    {
                        Assert.All(buffers[me][i].Span.ToArray(), b => Assert.Equal((byte)me, b));
                        buffers[me][i].Free();
                    }
                }
                catch (Exception ex)
                {
                    lock (errors)
                    {
                        errors.Add(ex);
                    }
                }
            });
            threads[t].Start();
        }

        firstHalfDone.Wait();
        pool.Dispose();
        Assert.True(pool.IsDisposed);
        Assert.False(pool.IsReleased);
        Assert.True(pool.InFlight > 0);
        disposed.Set();
        foreach (Thread th in threads)
        {
            th.Join();
        }

        Assert.Empty(errors);
        Assert.True(pool.IsReleased);
        Assert.Equal(0, pool.InFlight);
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_page_returned_after_destroy_goes_back_to_the_allocator_not_to_the_ring()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        PagePool pool = NewPool(allocator);
        Assert.True(pool.TryAllocNetMem(out NetMem a));
        Assert.True(pool.TryAllocNetMem(out NetMem b));
        pool.Dispose();
        Assert.Equal(2, pool.InFlight);
        Assert.Equal(2, allocator.PagesInUse);

        OnOtherThread(() => pool.PutFullPage(a, allowDirect: true));
        Assert.Equal(1, allocator.PagesInUse);
        Assert.Equal(0, pool.GetStats().RecycleRing);
        Assert.False(pool.IsReleased);

        pool.PutFullPage(b, allowDirect: true);
        Assert.True(pool.IsReleased);
        Assert.Equal(0, pool.GetStats().RecycleCached);
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_fragment_page_still_in_use_at_destroy_is_returned_by_its_last_fragment()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        PagePool pool = NewPool(allocator);
        Assert.True(pool.TryAllocFrag(100, out PagePoolBuffer a));
        Assert.True(pool.TryAllocFrag(100, out PagePoolBuffer b));
        pool.Dispose();
        Assert.Equal(1, pool.InFlight);
        Assert.Equal(2, a.NetMem.PpRefCount); // the pool's bias is gone
        a.Free();
        Assert.False(pool.IsReleased);
        OnOtherThread(b.Free);
        Assert.True(pool.IsReleased);
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_stalled_release_retries_on_its_timer_and_warns_with_the_in_flight_count()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        PagePool pool = NewPool(allocator, retry: TimeSpan.FromMilliseconds(10), warn: TimeSpan.FromMilliseconds(30));
        Assert.True(pool.TryAllocNetMem(out NetMem a));
        Assert.True(pool.TryAllocNetMem(out NetMem b));
        var warnings = new List<PagePoolWarningEventArgs>();
        using var warned = new ManualResetEventSlim();
        pool.Warning += (sender, e) =>
        {
            Assert.Same(pool, sender);
            lock (warnings)
            {
                warnings.Add(e);
            }

            warned.Set();
        };

        pool.Dispose();
        Assert.True(warned.Wait(TimeSpan.FromSeconds(20)), "no stall warning was raised");
        PagePoolWarningEventArgs w;
        lock (warnings)
        {
            w = warnings[0];
        }

        Assert.Equal(PagePoolWarningKind.StalledShutdown, w.Kind);
        Assert.Equal(pool.Id, w.PoolId);
        Assert.Equal(2, w.InFlight);
        Assert.StartsWith($"stalled pool shutdown: id {pool.Id}, 2 inflight ", w.Message, StringComparison.Ordinal);
        Assert.EndsWith(" sec", w.Message, StringComparison.Ordinal);
        Assert.True(w.Elapsed >= TimeSpan.FromMilliseconds(30));

        pool.RecycleDirect(a);
        pool.RecycleDirect(b);
        Assert.True(pool.IsReleased);
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void The_retry_scrubs_pages_that_reached_the_ring_after_the_destroy_and_frees_the_pool()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        PagePool alive = NewPool(allocator);
        InvalidOperationException ex = Assert.Throws<InvalidOperationException>(() => alive.RetryRelease());
        Assert.Equal("The pool is alive: Dispose it before driving its release.", ex.Message);
        alive.Dispose();

        PagePool pool = NewPool(allocator);
        Assert.True(pool.TryAllocNetMem(out NetMem m));
        pool.Dispose();
        Assert.Equal(1, pool.RetryRelease());

        // A put that saw the pool alive just before the destroy pushes into the ring just after it.
        pool.RecycleIntoRingForTest(m);
        Assert.Equal(1, pool.RingPages);
        Assert.False(pool.IsReleased);
        Assert.Equal(0, pool.RetryRelease());
        Assert.True(pool.IsReleased);
        Assert.Equal(0, pool.RetryRelease());
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_negative_in_flight_count_is_warned_once_and_stops_the_retries()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        PagePool pool = NewPool(allocator);
        Assert.True(pool.TryAllocNetMem(out NetMem m));
        var warnings = new List<PagePoolWarningEventArgs>();
        pool.Warning += (_, e) => warnings.Add(e);
        pool.Dispose();
        Assert.Equal(1, pool.InFlight);
        pool.CorruptReleaseCountForTest(5);
        Assert.Equal(-4, pool.RetryRelease());
        Assert.Equal(-4, pool.RetryRelease());
        PagePoolWarningEventArgs w = Assert.Single(warnings);
        Assert.Equal(PagePoolWarningKind.NegativeInFlight, w.Kind);
        Assert.StartsWith("Negative(-4) inflight packet-pages", w.Message, StringComparison.Ordinal);
        Assert.False(pool.IsReleased);

        // Undo the corruption so the page can be accounted and the allocator checked.
        pool.CorruptReleaseCountForTest(-5);
        pool.RecycleDirect(m);
        Assert.True(pool.IsReleased);
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_throwing_warning_handler_does_not_stop_the_release()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        PagePool pool = NewPool(allocator, retry: TimeSpan.FromMilliseconds(5), warn: TimeSpan.FromMilliseconds(5));
        Assert.True(pool.TryAllocNetMem(out NetMem m));
        using var raised = new CountdownEvent(2);
        pool.Warning += (_, _) =>
        {
            if (!raised.IsSet)
            {
                raised.Signal();
            }

            throw new InvalidOperationException("handler bug");
        };
        pool.Dispose();
        Assert.True(raised.Wait(TimeSpan.FromSeconds(20)), "the timer stopped after a throwing handler");
        pool.RecycleDirect(m);
        Assert.True(pool.IsReleased);
        Leaks.AssertNone(allocator);
    }
}
