using PageFrag.Frag;
using PageFrag.Pages;
using PageFrag.Pool;
using PageFrag.Tests.Frag;
using PageFrag.Tests.Infrastructure;

namespace PageFrag.Tests.Review;

/// <summary>
/// Attacks on the two-phase release (session 7): a release swaps a fragment's live tag for
/// <see cref="Arena.Releasing"/>, checks the page again, then stores the outcome or restores the tag; whoever meets
/// Releasing waits. Each test names what it tries; see the session 7 review report for what held.
/// </summary>
public class ReleasingStateAttackTests
{
    /// <summary>
    /// The page pool's put re-checked the generation of the handle's own descriptor (its block's head when it was
    /// handed out) rather than the head of the block that holds the fragment's start now. For pool pages of order
    /// 1 and more a fragment can start on another 4 KiB page than the head; once the pool page went back to the
    /// allocator, that page can be carved by another block while the old head page stays free, keeping the old
    /// generation: the re-check passed and the stale put cleared the new owner's state byte.
    /// </summary>
    [Fact]
    public void A_stale_put_of_a_fragment_on_the_third_page_of_an_order2_pool_page_spares_a_later_fragment_there_while_the_old_head_is_free()
    {
        using PageAllocator allocator = FragKit.NewAllocator();

        // Pool 1: order-2 pages (16 KiB), two 8 KiB fragments; the second starts on the block's third page.
        var pool1 = new PagePool(new PagePoolOptions { Allocator = allocator, PoolSize = 16, Order = 2 });
        Assert.True(pool1.TryAllocFrag(8192, out PagePoolBuffer first));
        Assert.True(pool1.TryAllocFrag(8192, out PagePoolBuffer stale));
        int oldHead = stale.NetMem.Index;
        int staleStart = stale.NetMem.AreaOffset + stale.Offset;
        int staleGeneration = stale.NetMem.Generation;
        Assert.Equal(oldHead + 2, staleStart >> PageConstants.PageShift);
        pool1.PutBuffer(first, allowDirect: true);
        pool1.PutBuffer(stale, allowDirect: true);

        // The pool goes away: its page goes back to the allocator with the handles' generation.
        pool1.Dispose();
        allocator.DrainPerCpuLists();

        // Pool 2: order-1 pages (8 KiB). The per-CPU list hands out the upper order-1 half of the old block first
        // (a batch is taken from the buddy lists in address order and popped last-in first-out), so its page
        // starts at the stale fragment's start while the old head page stays free, at the stale generation.
        var pool2 = new PagePool(new PagePoolOptions { Allocator = allocator, PoolSize = 16, Order = 1 });
        PagePoolBuffer[] use = CarveTwo(pool2);
        Assert.Equal(staleStart, use[0].NetMem.AreaOffset + use[0].Offset);
        for (int cycle = 0; cycle < 40 && ((use[0].NetMem.Generation ^ staleGeneration) & 0x0F) != 0; cycle++)
        {
            pool2.PutBuffer(use[0], allowDirect: true);
            pool2.PutBuffer(use[1], allowDirect: true);
            use = CarveTwo(pool2);
        }

        PagePoolBuffer victim = use[0];
        Assert.Equal(staleStart, victim.NetMem.AreaOffset + victim.Offset);
        Assert.NotEqual(staleGeneration, victim.NetMem.Generation);
        Assert.Equal(Arena.LiveTag(staleGeneration, staleStart), Arena.LiveTag(victim.NetMem.Generation, staleStart));
        Assert.Equal(staleGeneration, Volatile.Read(ref stale.NetMem.Descriptor.Generation));
        use[0].Span.Fill(1);
        use[1].Span.Fill(2);

        // The stale put resumes after its checks (a double put descheduled before its swap): it must be refused.
        Assert.Throws<PageFragDoubleFreeException>(() => pool1.Core.MarkFragmentFreed(stale, ref stale.NetMem.Descriptor));

        // The victim's owner puts it once; a second put is refused; the other fragment's bytes are its own.
        Assert.False(use[1].Span.ContainsAnyExcept((byte)2));
        pool2.PutBuffer(victim, allowDirect: true);
        Assert.Throws<PageFragDoubleFreeException>(() => pool2.PutBuffer(victim, allowDirect: true));
        pool2.PutBuffer(use[1], allowDirect: true);
        pool2.Dispose();
        Leaks.AssertNone(allocator);

        static PagePoolBuffer[] CarveTwo(PagePool pool)
        {
            var buffers = new PagePoolBuffer[2];
            Assert.True(pool.TryAllocFrag(4096, out buffers[0]));
            Assert.True(pool.TryAllocFrag(4096, out buffers[1]));
            return buffers;
        }
    }

    /// <summary>
    /// The cache's leaving scan now waits for a Releasing byte; <see cref="SpinWait"/> sleeps after a few
    /// spins, and a sleep is where <see cref="Thread.Interrupt"/> strikes. An interrupt thrown out of the scan
    /// left the page claimed and uncounted (leaked) and <see cref="PageDescriptor.MarksCounted"/> unset, so a
    /// free that saw the page left would spin in its settlement for ever. The wait must keep the interrupt for
    /// the thread's next blocking call instead.
    /// </summary>
    [Fact]
    public void Interrupting_the_cache_thread_while_its_leaving_scan_waits_for_a_release_in_progress_leaks_nothing()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        var live = new PageFragment[8];
        for (int i = 0; i < live.Length; i++)
        {
            Assert.True(cache.TryAlloc(1024, out live[i]));
        }

        // Fragment 0 freed by another thread (a mark to count, and MarksLeft set so that the scan runs); a
        // stale release is in progress on fragment 1 (its byte holds Releasing until the test undoes it).
        Arena arena = live[0].Arena!;
        int head = live[0].Page.Index;
        Assert.True(PageFragCache.ReleaseOnHeldPage(arena, head, ref arena.Pages[head], live[0].ArenaOffset, live[0].Generation));
        byte[] states = arena.FragStates;
        int index = Arena.StateIndex(states, live[1].ArenaOffset);
        byte tag = Arena.LiveTag(live[1].Generation, live[1].ArenaOffset);
        Assert.True(Arena.TryBeginRelease(states, index, tag));

        Exception? failure = null;
        bool interruptKept = false;
        var owner = new Thread(() =>
        {
            try
            {
                cache.Drain();
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
        owner.Start();
        Assert.False(owner.Join(100));
        owner.Interrupt();
        Assert.False(owner.Join(100));

        // The stale release finds the page moved on and restores the tag; the scan goes on.
        Arena.EndRelease(states, index, tag);
        Assert.True(owner.Join(TimeSpan.FromSeconds(10)));
        Assert.Null(failure);
        Assert.True(interruptKept);
        Assert.Equal(live.Length - 1, live[1].Page.RefCount);
        for (int i = 1; i < live.Length; i++)
        {
            PageFragCache.Free(live[i]);
        }

        Leaks.AssertNone(allocator);
    }

    /// <summary>
    /// .NET 8 swaps the aligned int around a state byte. A release in progress on a neighbouring byte of the
    /// same int must neither block the swap (the same thread holds it here: a wait would never end) nor be
    /// overwritten by it. Held.
    /// </summary>
    [Fact]
    public void A_release_in_progress_on_a_neighbouring_byte_of_the_same_int_neither_blocks_nor_is_lost()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        var live = new PageFragment[8];
        for (int i = 0; i < live.Length; i++)
        {
            Assert.True(cache.TryAlloc(8, out live[i]));
        }

        byte[] states = live[0].Arena!.FragStates;
        int held = Arena.StateIndex(states, live[2].ArenaOffset);
        Assert.Equal(held >> 2, Arena.StateIndex(states, live[3].ArenaOffset) >> 2);
        byte tag = Arena.LiveTag(live[2].Generation, live[2].ArenaOffset);
        Assert.True(Arena.TryBeginRelease(states, held, tag));

        Exception? failure = null;
        var freer = new Thread(() =>
        {
            try
            {
                // Another thread's free of each neighbour in the int, by handle and by address.
                PageFragCache.Free(live[3]);
                PageFragCache.Free(live[1].Address);
                cache.FreeLocal(live[0]);
            }
            catch (Exception e)
            {
                failure = e;
            }
        });
        freer.Start();
        Assert.True(freer.Join(TimeSpan.FromSeconds(10)));
        Assert.Null(failure);
        Assert.Equal(Arena.Releasing, Volatile.Read(ref states[held]));

        Arena.EndRelease(states, held, tag);
        for (int i = 1; i < live.Length; i++)
        {
            if (i != 1 && i != 3)
            {
                cache.FreeLocal(live[i]);
            }
        }

        FragKit.Throws<PageFragDoubleFreeException>(() => PageFragCache.Free(live[3]), null, "already freed");
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    /// <summary>
    /// Marks are neither lost nor counted twice when everything happens at once: another thread frees every
    /// fragment of the page, each free preceded by a stale release of the same start with the same 4-bit tag
    /// (which swaps the live byte to Releasing and must undo), while the owner leaves the page (its next
    /// allocation refills: the leaving scan, then an in-place reuse or a new page) at a varying moment. Held.
    /// </summary>
    [Fact]
    public void Stale_releases_undone_while_another_thread_frees_the_page_and_the_cache_leaves_it_lose_no_mark_and_no_fragment()
    {
        const int size = 1024;
        const int perPage = FragKit.BigPage / size;
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        var latest = new Dictionary<(Arena, int, int), PageFragment>();
        var live = new PageFragment[perPage];
        var stale = new PageFragment[perPage];
        int round = 0;
        int staleTries = 0;
        int wrongWins = 0;
        using var gate = new RaceGate(() =>
        {
            int seed = round;
            for (int i = 0; i < perPage; i++)
            {
                PageFragment s = stale[i];
                if (s.Arena is not null)
                {
                    Arena a = s.Arena;
                    int head = a.Pages[s.ArenaOffset >> PageConstants.PageShift].HeadIndex;
                    staleTries++;
                    if (PageFragCache.Release(a, head, ref a.Pages[head], s.ArenaOffset, s.Generation))
                    {
                        Interlocked.Increment(ref wrongWins);
                    }
                }

                if (!FragKit.IsIntact(live[i], seed + i))
                {
                    throw new InvalidOperationException($"round {seed}: fragment {i} was overwritten");
                }

                PageFragCache.Free(live[i]);
            }
        });

        PageFragment next = default;
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (clock.ElapsedMilliseconds < 1500 && gate.Failure is null)
        {
            for (int i = 0; i < perPage; i++)
            {
                if (i == 0 && next.Arena is not null)
                {
                    live[0] = next;
                }
                else
                {
                    Assert.True(cache.TryAlloc(size, out live[i]));
                }

                PageFragment f = live[i];
                var key = (f.Arena!, f.ArenaOffset, f.Generation & 0x0F);
                stale[i] = latest.TryGetValue(key, out PageFragment old) && old.Generation != f.Generation ? old : default;
                latest[key] = f;
                FragKit.Fill(f, round + i);
            }

            // The owner's next allocation leaves the page (this one is full) while the other thread frees it.
            int delay = (round * 7) % 200;
            PageFragment taken = default;
            gate.Race(() =>
            {
                Thread.SpinWait(delay);
                Assert.True(cache.TryAlloc(size, out taken));
            });
            next = taken;
            round++;
        }

        Assert.Null(gate.Failure);
        Assert.Equal(0, wrongWins);
        Assert.True(staleTries > 0);
        PageFragCache.Free(next);
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }
}
