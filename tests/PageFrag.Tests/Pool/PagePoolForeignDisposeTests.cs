using System.Diagnostics;
using System.Runtime.CompilerServices;
using PageFrag.Frag;
using PageFrag.Pages;
using PageFrag.Pool;
using PageFrag.Tests.Infrastructure;

namespace PageFrag.Tests.Pool;

/// <summary>
/// <see cref="PagePool.Dispose"/> called on another thread than the owner while the owner is allocating (documented
/// misuse): it must not give a page to the allocator while the owner is still carving it or popping it from its
/// cache, so no two owners ever share bytes, nothing throws on the disposing thread, and every page comes back.
/// The owner-side pages of such a pool go back once the owner cannot be inside an allocation any more: when the
/// owner thread next calls the pool, when it has ended, or when the pool is collected.
/// </summary>
public class PagePoolForeignDisposeTests
{
    private const int RaceMilliseconds = 1500;

    [Fact]
    public void A_Dispose_on_another_thread_while_the_owner_allocates_never_gives_held_bytes_to_another_owner()
    {
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 256 * 1024);
        PagePool pool = null!;
        int delay = 0;
        using var gate = new RaceGate(() =>
        {
            for (int i = 0; i < delay; i++)
            {
                Thread.SpinWait(1);
            }

            pool.Dispose();
        });

        var clock = Stopwatch.StartNew();
        var random = new Random(7);
        var held = new List<(PagePoolBuffer Buffer, byte Pattern)>();
        int rounds = 0;
        int corrupted = 0;
        while ((clock.ElapsedMilliseconds < RaceMilliseconds || rounds < 5) && gate.Failure is null && corrupted == 0)
        {
            rounds++;
            pool = PoolTesting.NewPool(allocator, poolSize: 16);

            // A warm pool: a fragment page in use, pages in the owner's cache and in the ring.
            Assert.True(pool.TryAllocFrag(200, out PagePoolBuffer warm));
            var pages = new NetMem[8];
            for (int i = 0; i < pages.Length; i++)
            {
                Assert.True(pool.TryAllocNetMem(out pages[i]));
            }

            for (int i = 0; i < pages.Length; i += 2)
            {
                pool.RecycleDirect(pages[i]);
            }

            PoolTesting.OnOtherThread(() =>
            {
                for (int i = 1; i < pages.Length; i += 2)
                {
                    pool.PutFullPage(pages[i], allowDirect: false);
                }
            });

            warm.Span.Fill(0x11);
            held.Add((warm, 0x11));
            delay = random.Next(0, 400);
            byte pattern = (byte)(0x20 + (rounds % 200));
            gate.Race(() =>
            {
                try
                {
                    for (int i = 0; ; i++)
                    {
                        PagePoolBuffer b;
                        bool ok = i % 4 == 3 ? pool.TryAllocPage(out b) : pool.TryAllocFrag(64 + (i % 3) * 192, out b);
                        Assert.True(ok);
                        b.Span.Fill(pattern);
                        held.Add((b, pattern));
                    }
                }
                catch (ObjectDisposedException)
                {
                    // The owner learns that the pool is gone.
                }
            });

            // Another owner takes every page the allocator has free now, and writes all of it.
            var innocent = new PageFragCache(allocator);
            var taken = new List<PageFragment>();
            while (taken.Count < 256 && innocent.TryAlloc(4096, out PageFragment f))
            {
                f.Span.Fill(0xEE);
                taken.Add(f);
            }

            foreach ((PagePoolBuffer b, byte p) in held)
            {
                if (b.Span.ContainsAnyExcept(p))
                {
                    corrupted++;
                }
            }

            foreach (PageFragment f in taken)
            {
                if (f.Span.ContainsAnyExcept((byte)0xEE))
                {
                    corrupted++;
                }

                f.Free();
            }

            innocent.Dispose();
            foreach ((PagePoolBuffer b, _) in held)
            {
                PagePool.Free(b);
            }

            held.Clear();
            Assert.True(pool.IsReleased, $"round {rounds}: the pool was not released after every buffer came back ({pool.InFlight} in flight)");
            Leaks.AssertNone(allocator);
        }

        Assert.Null(gate.Failure);
        Assert.Equal(0, corrupted);
        Assert.True(rounds >= 5, $"only {rounds} rounds");
    }

    [Fact]
    public void The_owners_next_call_after_a_Dispose_on_another_thread_gives_the_owner_side_pages_back()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        PagePool pool = PoolTesting.NewPool(allocator);
        Assert.True(pool.TryAllocFrag(100, out PagePoolBuffer frag));
        Assert.True(pool.TryAllocNetMem(out NetMem page));
        pool.RecycleDirect(page);
        Assert.True(pool.CachedPages > 0);

        // The owner thread (this one) is alive and may be inside an allocation as far as the disposing thread knows:
        // the cache and the fragment page wait.
        PoolTesting.OnOtherThread(pool.Dispose);
        Assert.True(pool.IsDisposed);
        Assert.False(pool.IsReleased);

        ObjectDisposedException e = Assert.Throws<ObjectDisposedException>(() => pool.TryAllocFrag(100, out _));
        Assert.Contains("disposed", e.Message, StringComparison.Ordinal);
        Assert.Equal(0, pool.CachedPages);
        Assert.False(pool.IsReleased);
        PagePool.Free(frag);
        Assert.True(pool.IsReleased);
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_Dispose_by_the_owner_after_another_threads_Dispose_gives_the_owner_side_pages_back()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        PagePool pool = PoolTesting.NewPool(allocator);
        Assert.True(pool.TryAllocNetMem(out NetMem page));
        pool.RecycleDirect(page);
        PoolTesting.OnOtherThread(pool.Dispose);
        Assert.False(pool.IsReleased);
        pool.Dispose();
        Assert.True(pool.IsReleased);
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_Dispose_on_another_thread_once_the_owner_thread_ended_gives_everything_back_at_once()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        PagePool pool = null!;
        var owner = new Thread(() =>
        {
            pool = PoolTesting.NewPool(allocator);
            Assert.True(pool.TryAllocNetMem(out NetMem page));
            pool.RecycleDirect(page);
        });
        owner.Start();
        owner.Join();
        PoolTesting.DisposeAndAssertNoLeak(pool, allocator);
    }

    [Fact]
    public void A_retry_gives_the_owner_side_pages_back_once_the_owner_thread_ended()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        PagePool pool = null!;
        using var disposed = new ManualResetEventSlim();
        var owner = new Thread(() =>
        {
            pool = PoolTesting.NewPool(allocator, retry: TimeSpan.FromHours(1));
            Assert.True(pool.TryAllocNetMem(out NetMem page));
            pool.RecycleDirect(page);
            PoolTesting.OnOtherThread(pool.Dispose);
            disposed.Set();
        });
        owner.Start();
        owner.Join();
        Assert.True(disposed.IsSet);

        // What the release worker does on its next tick (driven here: the worker's timer may wait on a loaded machine).
        Assert.Equal(0, pool.RetryRelease());
        Assert.True(pool.IsReleased);
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_pool_disposed_on_another_thread_and_dropped_gives_the_owner_side_pages_back_when_collected()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        WeakReference dropped = DisposeOnAnotherThreadAndDrop(allocator);
        for (int i = 0; i < 5 && (dropped.IsAlive || allocator.GetStats().PagesInUse != 0); i++)
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
        }

        Assert.False(dropped.IsAlive);
        Leaks.AssertNone(allocator);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static WeakReference DisposeOnAnotherThreadAndDrop(PageAllocator allocator)
    {
        PagePool pool = PoolTesting.NewPool(allocator);
        Assert.True(pool.TryAllocFrag(64, out PagePoolBuffer frag));
        PagePool.Free(frag);
        Assert.True(pool.TryAllocNetMem(out NetMem page));
        pool.RecycleDirect(page);
        PoolTesting.OnOtherThread(pool.Dispose);
        Assert.False(pool.IsReleased);
        return new WeakReference(pool);
    }
}
