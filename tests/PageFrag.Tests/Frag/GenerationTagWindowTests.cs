using PageFrag.Frag;
using PageFrag.Pages;
using PageFrag.Pool;
using PageFrag.Tests.Infrastructure;

namespace PageFrag.Tests.Frag;

/// <summary>
/// A fragment's state byte carries only the low 4 bits of its page's generation. A free by handle checks the
/// page's full generation first and swaps the state byte after; if that free is descheduled between the two while
/// the page is reused in place 16 times, the byte at the same start may belong to a live fragment of a later
/// generation with the same 4 bits. These tests put a free exactly there (they call the release that follows the
/// check, with the checked generation, after the page moved on) and require it to be refused, with the new
/// owner's fragment untouched: its count, its bytes, and its own free.
/// </summary>
public class GenerationTagWindowTests
{
    // Fragments per 32 KiB page for each size: the victim is carved at the same start as the stale fragment.
    [Theory]
    [InlineData(1024, 1)]  // a small fragment (main state table)
    [InlineData(8192, 1)]  // a page-start fragment (the dense table of page starts)
    [InlineData(8192, 0)]  // the block's first page start
    public void A_free_whose_generation_check_came_before_16_reuses_of_the_page_is_refused_while_the_cache_holds_it(int size, int victimIndex)
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        (PageFragment stale, PageFragment[] live) = CycleSixteenTimes(cache, size, victimIndex);
        PageFragment victim = live[victimIndex];
        Arena arena = victim.Arena!;
        int head = arena.Pages[victim.ArenaOffset >> PageConstants.PageShift].HeadIndex;
        int countBefore = victim.Page.RefCount;

        // The stale free resumes after its check: its swap must not take the new owner's fragment.
        Assert.False(PageFragCache.ReleaseOnHeldPage(arena, head, ref arena.Pages[head], stale.ArenaOffset, stale.Generation));
        AssertVictimUntouched(cache, allocator, live, victimIndex, countBefore);
    }

    [Theory]
    [InlineData(1024, 1)]
    [InlineData(8192, 1)]
    public void A_free_whose_generation_check_came_before_16_reuses_is_refused_after_the_cache_left_the_page(int size, int victimIndex)
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        (PageFragment stale, PageFragment[] live) = CycleSixteenTimes(cache, size, victimIndex);
        PageFragment victim = live[victimIndex];
        Arena arena = victim.Arena!;
        int head = arena.Pages[victim.ArenaOffset >> PageConstants.PageShift].HeadIndex;

        // The cache leaves the page: a free now drops the page reference itself (the path without marks).
        cache.Drain();
        int countBefore = victim.Page.RefCount;
        Assert.Equal(live.Length, countBefore);

        Assert.False(PageFragCache.Release(arena, head, ref arena.Pages[head], stale.ArenaOffset, stale.Generation));
        Assert.Equal(countBefore, victim.Page.RefCount);
        for (int i = 0; i < live.Length; i++)
        {
            Assert.True(FragKit.IsIntact(live[i], i));
            PageFragCache.Free(live[i]);
        }

        Leaks.AssertNone(allocator);
    }

    [Theory]
    [InlineData(1024, false)]
    [InlineData(8192, false)]
    [InlineData(1024, true)]
    public void A_stale_release_undone_while_the_owner_frees_the_fragment_never_costs_the_owner_its_free(int size, bool cacheLeft)
    {
        // The stale release swaps the new fragment's byte to "releasing", finds the page moved on and restores it;
        // the owner's free that meets the byte in between must wait for the outcome, not fail as a double free.
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        PageFragment stale = default;
        PageFragment victim = default;
        int wrongWins = 0;
        using var gate = new RaceGate(() =>
        {
            Arena arena = stale.Arena!;
            int head = arena.Pages[stale.ArenaOffset >> PageConstants.PageShift].HeadIndex;
            for (int i = 0; i < 64; i++)
            {
                if (PageFragCache.Release(arena, head, ref arena.Pages[head], stale.ArenaOffset, stale.Generation))
                {
                    Interlocked.Increment(ref wrongWins);
                }
            }
        });

        var clock = System.Diagnostics.Stopwatch.StartNew();
        int rounds = 0;
        while (clock.ElapsedMilliseconds < 1000 && gate.Failure is null)
        {
            (stale, PageFragment[] live) = CycleSixteenTimes(cache, size, 1);
            victim = live[1];
            if (cacheLeft)
            {
                cache.Drain();
            }

            // A varying delay, so that the owner's free lands inside the stale release's window in some rounds.
            int delay = rounds % 96;
            gate.Race(() =>
            {
                Thread.SpinWait(delay);
                PageFragCache.Free(victim);
            });
            for (int i = 0; i < live.Length; i++)
            {
                if (i != 1)
                {
                    Assert.True(FragKit.IsIntact(live[i], i));
                    PageFragCache.Free(live[i]);
                }
            }

            rounds++;
        }

        Assert.Null(gate.Failure);
        Assert.Equal(0, wrongWins);
        Assert.True(rounds > 0);
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Theory]
    [InlineData(1024, false)]
    [InlineData(8192, false)]
    [InlineData(1024, true)]
    public void The_owners_free_that_meets_a_release_in_progress_waits_for_its_outcome_and_wins_after_an_undo(int size, bool byAddress)
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        PageFragment[] live = Carve(cache, size, 32768 / size);
        PageFragment victim = live[1];
        byte[] states = victim.Arena!.FragStates;
        int index = Arena.StateIndex(states, victim.ArenaOffset);
        byte tag = Arena.LiveTag(victim.Generation, victim.ArenaOffset);

        // A release is in progress on the victim's byte (a stale one, about to find the page moved on).
        Assert.True(Arena.TryBeginRelease(states, index, tag));
        Exception? failure = null;
        var owner = new Thread(() =>
        {
            try
            {
                if (byAddress)
                {
                    PageFragCache.Free(victim.Address);
                }
                else
                {
                    PageFragCache.Free(victim);
                }
            }
            catch (Exception e)
            {
                failure = e;
            }
        });
        owner.Start();

        // The owner's free waits while the byte is Releasing; then the stale release is undone and the owner wins.
        Assert.False(owner.Join(100));
        Arena.EndRelease(states, index, tag);
        Assert.True(owner.Join(TimeSpan.FromSeconds(10)));
        Assert.Null(failure);
        FragKit.Throws<PageFragDoubleFreeException>(() => PageFragCache.Free(victim), null, "already freed");
        for (int i = 0; i < live.Length; i++)
        {
            if (i != 1)
            {
                cache.FreeLocal(live[i]);
            }
        }

        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Theory]
    [InlineData(1024)]
    [InlineData(12)]
    [InlineData(8192)]
    public void The_cache_leaving_its_page_waits_for_a_release_in_progress_and_counts_its_mark(int size)
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        PageFragment[] live = Carve(cache, size, Math.Min(100, 32768 / size));
        PageFragment victim = live[1];
        byte[] states = victim.Arena!.FragStates;
        int index = Arena.StateIndex(states, victim.ArenaOffset);
        Assert.True(PageFragCache.ReleaseOnHeldPage(victim.Arena, victim.Page.Index, ref victim.Arena.Pages[victim.Page.Index], live[0].ArenaOffset, live[0].Generation));

        // A free by another thread is between its swap and its mark: it read the page as held and will not settle
        // the reference itself, so the cache's scan must wait for the mark and count it.
        Assert.True(Arena.TryBeginRelease(states, index, Arena.LiveTag(victim.Generation, victim.ArenaOffset)));
        var finisher = new Thread(() =>
        {
            Thread.Sleep(100);
            Arena.EndRelease(states, index, Arena.FreedMark(victim.Generation));
        });
        finisher.Start();
        cache.Drain();
        finisher.Join();
        Assert.Equal(live.Length - 2, victim.Page.RefCount);
        for (int i = 2; i < live.Length; i++)
        {
            PageFragCache.Free(live[i]);
        }

        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_free_whose_check_came_before_its_order3_block_went_back_and_its_second_4KiB_came_back_at_order0_is_refused()
    {
        // The free found the head of the start's page (the order-3 block's head) and checked its generation; then
        // the block went back, and the start's page came back alone at order 0 with a generation whose 4 bits are
        // the stale one's. The release must see that the head it checked is not that block any more.
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 64 * 1024, maxBytes: 64 * 1024);
        var first = new PageFragCache(allocator);
        Assert.True(first.TryAlloc(4096, out PageFragment a0));
        Assert.True(first.TryAlloc(4096, out PageFragment stale));
        Assert.Equal(3, stale.Page.Order);
        Arena arena = stale.Arena!;
        int staleHead = arena.Pages[stale.ArenaOffset >> PageConstants.PageShift].HeadIndex;
        Assert.NotEqual(stale.ArenaOffset >> PageConstants.PageShift, staleHead);
        PageFragCache.Free(stale);
        PageFragCache.Free(a0);
        first.Dispose();

        // Every page but the stale start's held at order 0 (the old head among them), so a cache gets only that one.
        var held = new List<Page>();
        while (allocator.TryAllocPages(0, AllocFlags.None, out Page p))
        {
            held.Add(p);
        }

        Page target = held.Single(p => p.Address == stale.Address);
        held.Remove(target);
        allocator.FreePages(target);
        bool met = false;
        for (int round = 0; round < 64 && !met; round++)
        {
            var second = new PageFragCache(allocator);
            Assert.True(second.TryAlloc(100, out PageFragment victim));
            Assert.Equal(stale.ArenaOffset, victim.ArenaOffset);
            if (Arena.LiveTag(victim.Generation, victim.ArenaOffset) == Arena.LiveTag(stale.Generation, stale.ArenaOffset))
            {
                met = true;
                FragKit.Fill(victim, 5);
                Assert.False(PageFragCache.ReleaseOnHeldPage(arena, staleHead, ref arena.Pages[staleHead], stale.ArenaOffset, stale.Generation));
                Assert.False(PageFragCache.Release(arena, staleHead, ref arena.Pages[staleHead], stale.ArenaOffset, stale.Generation));
                Assert.True(FragKit.IsIntact(victim, 5));
            }

            PageFragCache.Free(victim);
            second.Dispose();
        }

        Assert.True(met, "the order-0 page's generation never reached the stale tag");
        foreach (Page p in held)
        {
            allocator.FreePages(p);
        }

        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Interrupting_a_free_that_waits_for_the_cache_to_end_its_count_of_marks_leaks_nothing()
    {
        // A free that saw the page held before its swap and left after it waits for the cache's scan to end, then
        // gives its reference back itself if the scan missed its mark. An interrupt during that wait must neither
        // leave the mark for no one to count nor throw out of the free: it is kept for the next blocking call.
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        PageFragment[] live = Carve(cache, 1024, 8);
        Arena arena = live[0].Arena!;
        int head = live[0].Page.Index;
        byte[] states = arena.FragStates;

        // A mark (so that the scan runs), and a release in progress on fragment 1 that holds the scan there.
        Assert.True(PageFragCache.ReleaseOnHeldPage(arena, head, ref arena.Pages[head], live[5].ArenaOffset, live[5].Generation));
        int blocking = Arena.StateIndex(states, live[1].ArenaOffset);
        byte blockingTag = Arena.LiveTag(live[1].Generation, live[1].ArenaOffset);
        Assert.True(Arena.TryBeginRelease(states, blocking, blockingTag));
        var owner = new Thread(cache.Drain);
        owner.Start();
        Assert.False(owner.Join(100)); // the scan passed fragment 0 and waits at fragment 1

        // Fragment 0's free: its look at the flag came before the cache left, so it marks and then settles.
        bool? released = null;
        Exception? failure = null;
        bool interruptKept = false;
        var freer = new Thread(() =>
        {
            try
            {
                released = PageFragCache.ReleaseOnHeldPage(arena, head, ref arena.Pages[head], live[0].ArenaOffset, live[0].Generation);
            }
            catch (Exception e)
            {
                failure = e;
                return;
            }

            try
            {
                Thread.Sleep(1);
            }
            catch (ThreadInterruptedException)
            {
                interruptKept = true;
            }
        });
        freer.Start();
        Assert.False(freer.Join(200)); // waits for the scan's end
        freer.Interrupt();
        Assert.False(freer.Join(200)); // still waits

        Arena.EndRelease(states, blocking, blockingTag);
        Assert.True(owner.Join(TimeSpan.FromSeconds(10)));
        Assert.True(freer.Join(TimeSpan.FromSeconds(10)));
        Assert.Null(failure);
        Assert.True(released);
        Assert.True(interruptKept);
        Assert.Equal(live.Length - 2, live[1].Page.RefCount);
        for (int i = 1; i < live.Length; i++)
        {
            if (i != 5)
            {
                PageFragCache.Free(live[i]);
            }
        }

        Leaks.AssertNone(allocator);
    }

    /// <summary>
    /// Carves a page into fragments of <paramref name="size"/>, frees them all (the stale one among them), then
    /// reuses the page in place 16 times; the fragments of the 16th use stay live, each filled with its index.
    /// </summary>
    private static (PageFragment Stale, PageFragment[] Live) CycleSixteenTimes(PageFragCache cache, int size, int victimIndex)
    {
        int perPage = 32768 / size;
        PageFragment[] use = Carve(cache, size, perPage);
        PageFragment stale = use[victimIndex];
        long reusedBefore = cache.PagesReused;
        for (int reuse = 1; reuse <= 16; reuse++)
        {
            foreach (PageFragment f in use)
            {
                cache.FreeLocal(f);
            }

            use = Carve(cache, size, perPage);
        }

        // The same page, 16 generations on, with a fragment at the stale one's start whose tag equals the stale one's.
        Assert.Equal(reusedBefore + 16, cache.PagesReused);
        PageFragment victim = use[victimIndex];
        Assert.Same(stale.Arena, victim.Arena);
        Assert.Equal(stale.ArenaOffset, victim.ArenaOffset);
        Assert.Equal(stale.Generation + 16, victim.Generation);
        Assert.Equal(Arena.LiveTag(stale.Generation, stale.ArenaOffset), Arena.LiveTag(victim.Generation, victim.ArenaOffset));
        for (int i = 0; i < use.Length; i++)
        {
            FragKit.Fill(use[i], i);
        }

        return (stale, use);
    }

    private static PageFragment[] Carve(PageFragCache cache, int size, int count)
    {
        var fragments = new PageFragment[count];
        for (int i = 0; i < count; i++)
        {
            Assert.True(cache.TryAlloc(size, out fragments[i]));
        }

        return fragments;
    }

    private static void AssertVictimUntouched(PageFragCache cache, PageAllocator allocator, PageFragment[] live, int victimIndex, int countBefore)
    {
        PageFragment victim = live[victimIndex];
        Assert.Equal(countBefore, victim.Page.RefCount);

        // Its owner's free still works, once; a second one is refused.
        cache.FreeLocal(victim);
        FragKit.Throws<PageFragDoubleFreeException>(() => PageFragCache.Free(victim), null, "already freed");

        // The cache leaves the page: the others keep it, and their bytes are theirs.
        cache.Drain();
        Assert.Equal(live.Length - 1, victim.Page.RefCount);
        for (int i = 0; i < live.Length; i++)
        {
            if (i != victimIndex)
            {
                Assert.True(FragKit.IsIntact(live[i], i));
                PageFragCache.Free(live[i]);
            }
        }

        Leaks.AssertNone(allocator);
    }
}

/// <summary>
/// The same window for a page pool's fragments: a put checks the page's generation, then swaps the fragment's
/// state byte, which carries 4 bits of it. A put whose check came before the page was recycled until its
/// generation's 4 bits came round again must be refused, and the new fragment at that start left to its owner.
/// </summary>
public class PoolGenerationTagWindowTests
{
    [Fact]
    public void A_put_whose_generation_check_came_before_the_page_was_recycled_until_the_tag_repeats_is_refused()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var pool = new PagePool(new PagePoolOptions { Allocator = allocator, PoolSize = 16 });
        int size = pool.PageSize / 4;
        PagePoolBuffer[] use = Carve(pool, size);
        PagePoolBuffer stale = use[1];
        int staleGeneration = stale.NetMem.Generation;
        PagePoolBuffer[]? repeat = null;
        for (int cycle = 0; cycle < 200 && repeat is null; cycle++)
        {
            foreach (PagePoolBuffer b in use)
            {
                pool.PutBuffer(b, allowDirect: true);
            }

            use = Carve(pool, size);
            PagePoolBuffer candidate = use[1];
            if (candidate.NetMem.Area == stale.NetMem.Area && candidate.NetMem.Index == stale.NetMem.Index &&
                candidate.NetMem.Generation != staleGeneration && ((candidate.NetMem.Generation ^ staleGeneration) & 0x0F) == 0)
            {
                repeat = use;
            }
        }

        Assert.NotNull(repeat);
        PagePoolBuffer victim = repeat[1];
        Assert.Equal(stale.Offset, victim.Offset);
        for (int i = 0; i < repeat.Length; i++)
        {
            repeat[i].Span.Fill((byte)(i + 1));
        }

        // The stale put resumes after its check of the generation: it must not clear the victim's state.
        Assert.Throws<PageFragDoubleFreeException>(() => pool.Core.MarkFragmentFreed(stale, ref stale.NetMem.Descriptor));

        // The victim's owner puts it once; a second put is refused; the bytes of the others are theirs.
        pool.PutBuffer(victim, allowDirect: true);
        Assert.Throws<PageFragDoubleFreeException>(() => pool.PutBuffer(victim, allowDirect: true));
        for (int i = 0; i < repeat.Length; i++)
        {
            if (i != 1)
            {
                Assert.False(repeat[i].Span.ContainsAnyExcept((byte)(i + 1)));
                pool.PutBuffer(repeat[i], allowDirect: true);
            }
        }

        pool.Dispose();
        Leaks.AssertNone(allocator);
    }

    private static PagePoolBuffer[] Carve(PagePool pool, int size)
    {
        var buffers = new PagePoolBuffer[4];
        for (int i = 0; i < buffers.Length; i++)
        {
            Assert.True(pool.TryAllocFrag(size, out buffers[i]));
        }

        return buffers;
    }
}
