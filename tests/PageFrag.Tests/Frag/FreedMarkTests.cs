using System.Diagnostics;
using PageFrag.Frag;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;

namespace PageFrag.Tests.Frag;

/// <summary>
/// Frees from other threads on the page a cache is still carving leave a freed mark (one atomic operation)
/// instead of dropping a page reference; the cache counts the marks when it leaves the page. These tests
/// check that every such free is counted exactly once, whether the cache leaves before, during or after it,
/// on pages with few fragments (the cache checks their starts) and with many (it scans the page's states).
/// </summary>
public class FreedMarkTests
{
    private const int RaceMilliseconds = 1500;

    [Theory]
    [InlineData(12, 40)]
    [InlineData(12, 200)]
    [InlineData(2048, 12)]
    [InlineData(9000, 3)]
    public void A_page_whose_fragments_were_freed_by_another_thread_goes_back_exactly_when_the_last_reference_is_dropped(int size, int count)
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        var fragments = new PageFragment[count];
        for (int i = 0; i < count; i++)
        {
            Assert.True(cache.TryAlloc(size, out fragments[i]));
        }

        Page page = fragments[0].Page;
        Assert.All(fragments, f => Assert.Equal(page, f.Page));
        int before = page.RefCount;

        // All but the last freed on another thread while the cache still carves the page.
        RunOnOtherThread(() =>
        {
            for (int i = 0; i < count - 1; i++)
            {
                PageFragCache.Free(fragments[i]);
            }
        });

        Assert.Equal(before - (count - 1), page.RefCount);

        // The cache leaves: the marks are counted, and the one live fragment keeps the page.
        cache.Drain();
        Assert.Equal(1, page.RefCount);
        Assert.Equal(1L << page.Order, allocator.GetStats().PagesInUse);

        // A marked fragment stays freed: a second free of it is refused, by handle and by address.
        FragKit.Throws<PageFragDoubleFreeException>(() => PageFragCache.Free(fragments[0]), null, "already freed");
        FragKit.Throws<PageFragDoubleFreeException>(() => PageFragCache.Free(fragments[0].Address), null, "already freed");

        PageFragCache.Free(fragments[count - 1]);
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_second_free_of_a_fragment_freed_by_another_thread_is_refused_on_every_path_while_the_cache_holds_the_page()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(100, out PageFragment victim));
        Assert.True(cache.TryAlloc(100, out PageFragment keeper));
        int before = victim.Page.RefCount;

        RunOnOtherThread(() => PageFragCache.Free(victim));

        FragKit.Throws<PageFragDoubleFreeException>(() => cache.FreeLocal(victim), null, "already freed");
        FragKit.Throws<PageFragDoubleFreeException>(() => PageFragCache.Free(victim), null, "already freed");

        // By address: a marked start is reported as freed, not as an address inside a fragment.
        FragKit.Throws<PageFragDoubleFreeException>(() => PageFragCache.Free(victim.Address), null, "already freed");
        Assert.Equal(before - 1, victim.Page.RefCount);

        // The cache goes on carving the page, and the victim's bytes are not handed out again while it does.
        Assert.True(cache.TryAlloc(100, out PageFragment next));
        Assert.NotEqual(victim.Address, next.Address);

        cache.FreeLocal(next);
        cache.FreeLocal(keeper);
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Theory]
    [InlineData(100, 2)]
    [InlineData(12, 100)]
    public void A_free_that_saw_the_page_held_just_before_the_cache_left_gives_its_reference_back_itself(int size, int count)
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        var fragments = new PageFragment[count];
        for (int i = 0; i < count; i++)
        {
            Assert.True(cache.TryAlloc(size, out fragments[i]));
        }

        Page page = fragments[0].Page;
        cache.Drain();
        Assert.Equal(count, page.RefCount);

        // The free's look at the flag came before the cache left; its swap comes after the cache's count of marks,
        // which could not see this mark. The free must notice and drop the reference itself.
        PageFragment late = fragments[0];
        Arena arena = late.Arena!;
        int head = arena.Pages[late.ArenaOffset >> PageConstants.PageShift].HeadIndex;
        Assert.True(PageFragCache.ReleaseOnHeldPage(arena, head, ref arena.Pages[head], late.ArenaOffset, late.Generation));
        Assert.Equal(count - 1, page.RefCount);

        // And it stays one release: the fragment is freed now.
        Assert.False(PageFragCache.ReleaseOnHeldPage(arena, head, ref arena.Pages[head], late.ArenaOffset, late.Generation));
        FragKit.Throws<PageFragDoubleFreeException>(() => PageFragCache.Free(late), null, "already freed");

        for (int i = 1; i < count; i++)
        {
            PageFragCache.Free(fragments[i]);
        }

        Leaks.AssertNone(allocator);
    }

    [Theory]
    [InlineData(12)]
    [InlineData(700)]
    [InlineData(4096)]
    public void Frees_from_another_thread_racing_the_cache_leaving_its_page_are_each_counted_exactly_once(int size)
    {
        using PageAllocator allocator = FragKit.NewAllocator(arenaSize: 1024 * 1024);
        var cache = new PageFragCache(allocator);
        const int Batch = 96;
        var batch = new PageFragment[Batch];
        int published = 0;
        int freed = 0;
        bool stop = false;
        Exception? failure = null;
        long rounds = 0;

        // The freer checks each fragment's bytes before it frees it: a page given back while a fragment still
        // held it would have been handed out again and overwritten.
        var freer = new Thread(() =>
        {
            try
            {
                var spin = default(SpinWait);
                while (!Volatile.Read(ref stop))
                {
                    int n = Volatile.Read(ref published);
                    if (n == 0)
                    {
                        spin.SpinOnce(-1);
                        continue;
                    }

                    for (int i = 0; i < n; i++)
                    {
                        if (!FragKit.IsIntact(batch[i], i))
                        {
                            throw new InvalidOperationException($"fragment {i} was overwritten before it was freed");
                        }

                        PageFragCache.Free(batch[i]);
                    }

                    Volatile.Write(ref published, 0);
                    Volatile.Write(ref freed, 1);
                }
            }
            catch (Exception e)
            {
                failure = e;
                Volatile.Write(ref stop, true);
            }
        });
        freer.Start();

        var random = new Random(7);
        var clock = Stopwatch.StartNew();
        try
        {
            while (clock.ElapsedMilliseconds < RaceMilliseconds && !Volatile.Read(ref stop))
            {
                int n = random.Next(1, Batch + 1);
                for (int i = 0; i < n; i++)
                {
                    Assert.True(cache.TryAlloc(size, out batch[i]));
                    FragKit.Fill(batch[i], i);
                }

                Volatile.Write(ref freed, 0);
                Volatile.Write(ref published, n);

                // Leave the page while the freer is at work on it: now, a little later, or after it finished.
                switch (random.Next(3))
                {
                    case 0:
                        cache.Drain();
                        break;
                    case 1:
                        Thread.SpinWait(random.Next(1, 200));
                        cache.Drain();
                        break;
                }

                var spin = default(SpinWait);
                while (Volatile.Read(ref freed) == 0 && !Volatile.Read(ref stop))
                {
                    spin.SpinOnce(-1);
                }

                rounds++;
            }
        }
        finally
        {
            Volatile.Write(ref stop, true);
            freer.Join();
        }

        Assert.Null(failure);
        Assert.True(rounds > 10, $"only {rounds} rounds ran");
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    private static void RunOnOtherThread(Action action)
    {
        Exception? failure = null;
        var thread = new Thread(() =>
        {
            try
            {
                action();
            }
            catch (Exception e)
            {
                failure = e;
            }
        });
        thread.Start();
        thread.Join();
        if (failure is not null)
        {
            throw new AggregateException(failure);
        }
    }
}
