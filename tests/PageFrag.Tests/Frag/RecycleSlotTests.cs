using System.Collections.Concurrent;
using System.Diagnostics;
using System.Runtime.InteropServices;
using PageFrag.Frag;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;

namespace PageFrag.Tests.Frag;

/// <summary>
/// A fragment cache's order-3 page whose last fragment another thread frees is parked in the cache's recycle slots
/// and taken by its next refill (issue 14, aims 2 and 4): parked pages belong to nobody who can free them, count as
/// cached, are drained by the allocator and by the cache's Drain, Dispose and finalizer.
/// </summary>
public class RecycleSlotTests
{
    private const int Frag = 2048;
    private const int PerPage = 32768 / Frag;

    /// <summary>Fills the cache's current page and starts the next, so that the first page is left; returns its fragments.</summary>
    private static List<PageFragment> FillAndLeavePage(PageFragCache cache, out PageFragment next)
    {
        var fragments = new List<PageFragment>();
        for (int i = 0; i < PerPage; i++)
        {
            Assert.True(cache.TryAlloc(Frag, out PageFragment f));
            fragments.Add(f);
        }

        Assert.True(cache.TryAlloc(Frag, out next));
        Assert.NotEqual(fragments[0].Address & ~(nint)32767, next.Address & ~(nint)32767);
        return fragments;
    }

    private static void FreeOnOtherThread(IEnumerable<PageFragment> fragments) =>
        OtherThread.Run(() =>
        {
            foreach (PageFragment f in fragments)
            {
                PageFragCache.Free(f);
            }
        });

    [Fact]
    public void A_page_freed_by_another_thread_is_parked_for_its_cache_and_reused_by_the_next_refill()
    {
        using PageAllocator allocator = Leaks.NewAllocator(4 << 20);
        var cache = new PageFragCache(allocator);
        List<PageFragment> first = FillAndLeavePage(cache, out PageFragment next);
        nint firstPage = first[0].Address;
        FreeOnOtherThread(first);

        Assert.Equal(1, allocator.RecycledBlocks);
        PageAllocatorStats parked = allocator.GetStats();
        Assert.True(parked.IsConsistent);
        Assert.True(parked.CachedPages >= 8);
        Assert.Equal(8, parked.PagesInUse); // only the cache's current page is charged

        // Every free path refuses the parked page: it is free.
        Assert.Contains("already returned to the allocator or reused", Assert.Throws<PageFragDoubleFreeException>(() => PageFragCache.Free(first[0])).Message);
        Assert.Contains("is not allocated", Assert.Throws<PageFragDoubleFreeException>(() => PageFragCache.Free(first[3].Address)).Message);
        Assert.True(PageAllocator.TryGetPage(firstPage, out Page page));
        Assert.Contains("is not allocated", Assert.Throws<PageFragDoubleFreeException>(() => allocator.FreePages(page)).Message);
        Assert.Equal(1, allocator.RecycledBlocks);

        // The next refill takes it: the new page is the parked one, with a new generation.
        var second = new List<PageFragment> { next };
        for (int i = 1; i < PerPage; i++)
        {
            Assert.True(cache.TryAlloc(Frag, out PageFragment f));
            second.Add(f);
        }

        Assert.True(cache.TryAlloc(Frag, out PageFragment third));
        Assert.Equal(firstPage, third.Address);
        Assert.Equal(1, cache.PagesRecycled);
        Assert.NotEqual(first[0].Generation, third.Generation);
        Assert.Equal(0, allocator.RecycledBlocks);

        // The old handle of the same address is stale; the new fragment is not touched by its free.
        Assert.Throws<PageFragDoubleFreeException>(() => PageFragCache.Free(first[0]));
        PageFragCache.Free(third);
        FreeOnOtherThread(second);
        cache.Dispose();
        Assert.Equal(0, allocator.RecycledBlocks);
        Leaks.AssertNone(allocator);
        allocator.DrainPerCpuLists();
        Assert.Equal(0, allocator.GetStats().CachedPages);
    }

    [Fact]
    public void Drain_and_DrainPerCpuLists_give_parked_pages_back_and_Trim_releases_their_arena()
    {
        using PageAllocator allocator = Leaks.NewAllocator(64 * 1024);
        var cache = new PageFragCache(allocator);
        List<PageFragment> first = FillAndLeavePage(cache, out PageFragment next);
        FreeOnOtherThread(first);
        Assert.Equal(1, allocator.RecycledBlocks);

        // The allocator's drain empties the slots (any thread).
        OtherThread.Run(allocator.DrainPerCpuLists);
        Assert.Equal(0, allocator.RecycledBlocks);
        Assert.Equal(0, allocator.GetStats().CachedPages);

        FreeOnOtherThread([next]);
        Assert.Equal(0, allocator.RecycledBlocks); // the cache still carves that page

        cache.Drain();
        Assert.Equal(0, allocator.RecycledBlocks);
        Leaks.AssertNone(allocator);
        Assert.Equal(1, allocator.Trim());
        Assert.Equal(0, allocator.GetStats().Arenas);
        cache.Dispose();
    }

    [Fact]
    public void An_arena_whose_pages_cycled_only_through_the_slots_since_the_last_trim_is_kept_by_an_idle_only_trim()
    {
        // The Kestrel factory's timer trims with idleOnly: an arena that served blocks in the interval stays for the
        // next burst. A block taken from the slots is served by its arena as much as one from the free lists.
        using PageAllocator allocator = Leaks.NewAllocator(64 * 1024);
        var cache = new PageFragCache(allocator);
        List<PageFragment> first = FillAndLeavePage(cache, out PageFragment next);
        Assert.Equal(0, allocator.Trim(idleOnly: true)); // the interval's mark is reset; the arena is in use
        FreeOnOtherThread(first);
        Assert.Equal(1, allocator.RecycledBlocks);

        // The cache leaves its page; its refill takes the parked one (no block from the free lists since the trim).
        List<PageFragment> second = FillAndLeavePage(cache, out PageFragment third);
        Assert.Equal(0, allocator.RecycledBlocks);
        Assert.Equal(first[0].Address & ~(nint)32767, third.Address & ~(nint)32767);
        FreeOnOtherThread([next, .. second, third]);
        cache.Drain();
        Leaks.AssertNone(allocator);

        // Entirely free now, but it served a block in this interval: kept; the next idle-only trim releases it.
        Assert.Equal(0, allocator.Trim(idleOnly: true));
        Assert.Equal(1, allocator.GetStats().Arenas);
        Assert.Equal(1, allocator.Trim(idleOnly: true));
        Assert.Equal(0, allocator.GetStats().Arenas);
        cache.Dispose();
    }

    [Fact]
    public void A_disposed_cache_parks_nothing_and_its_late_frees_go_to_the_allocator()
    {
        using PageAllocator allocator = Leaks.NewAllocator(4 << 20);
        var cache = new PageFragCache(allocator);
        List<PageFragment> first = FillAndLeavePage(cache, out PageFragment next);
        cache.Dispose();
        FreeOnOtherThread([.. first, next]);
        Assert.Equal(0, allocator.RecycledBlocks);
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_collected_cache_closes_its_slots_and_gives_parked_pages_back()
    {
        using PageAllocator allocator = Leaks.NewAllocator(4 << 20);
        List<PageFragment> late = ParkOneAndForgetCache(allocator);
        Assert.Equal(1, allocator.RecycledBlocks);
        for (int i = 0; i < 3 && allocator.RecycledBlocks != 0; i++)
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
        }

        Assert.Equal(0, allocator.RecycledBlocks);

        // The fragment still out on the collected cache's page: its free gives the page to the allocator.
        FreeOnOtherThread(late);
        Assert.Equal(0, allocator.RecycledBlocks);
        Leaks.AssertNone(allocator);
    }

    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.NoInlining)]
    private static List<PageFragment> ParkOneAndForgetCache(PageAllocator allocator)
    {
        var cache = new PageFragCache(allocator);
        List<PageFragment> first = FillAndLeavePage(cache, out PageFragment next);
        FreeOnOtherThread(first);
        return [next];
    }

    [Fact]
    public void With_a_memory_limit_parked_pages_are_free_memory_and_a_refill_charges_them_again()
    {
        using PageAllocator allocator = Leaks.NewAllocator(64 * 1024, maxBytes: 64 * 1024);
        var cache = new PageFragCache(allocator);
        List<PageFragment> first = FillAndLeavePage(cache, out PageFragment next);
        FreeOnOtherThread(first);
        Assert.Equal(1, allocator.RecycledBlocks);
        Assert.Equal(8, allocator.PagesInUse);

        // Another user may take the parked page's memory: the allocator drains the slots before it fails.
        Assert.True(allocator.TryAllocPages(3, AllocFlags.None, out Page block));
        Assert.Equal(0, allocator.RecycledBlocks);
        Assert.Equal(16, allocator.PagesInUse);

        // The cache's page is full after PerPage - 1 more; its refill finds no memory and fails cleanly.
        var rest = new List<PageFragment> { next };
        for (int i = 1; i < PerPage; i++)
        {
            Assert.True(cache.TryAlloc(Frag, out PageFragment f));
            rest.Add(f);
        }

        Assert.False(cache.TryAlloc(Frag, out _));
        allocator.FreePages(block);
        FreeOnOtherThread(rest);
        cache.Dispose();
        Leaks.AssertNone(allocator);
    }

    [Theory]
    [InlineData(2048, false)]
    [InlineData(2048, true)]
    [InlineData(1500, false)]
    [InlineData(4096, true)]
    public void Refills_last_frees_on_two_threads_Dispose_and_Trim_racing_lose_no_page_and_hand_no_bytes_out_twice(int size, bool limited)
    {
        // Small arenas, so that Trim can release one whenever the slots and lists are drained; with a limit, refills
        // also fail now and then and take the fallback paths.
        using PageAllocator allocator = Leaks.NewAllocator(128 * 1024, maxBytes: limited ? 512 * 1024 : long.MaxValue);
        using var handOver = new BlockingCollection<PageFragment>(boundedCapacity: 96);
        using var start = new Barrier(4);
        var clock = Stopwatch.StartNew();
        long carved = 0, freed = 0, caches = 0, trims = 0, recycled = 0;
        int producerDone = 0;
        Exception? failure = null;

        void Record(Exception e) => Interlocked.CompareExchange(ref failure, e, null);

        var producer = new Thread(() =>
        {
            try
            {
                start.SignalAndWait();
                while (clock.ElapsedMilliseconds < 1500 && failure is null)
                {
                    // A cache lives for a few pages, then is disposed while the other threads still free its fragments.
                    var cache = new PageFragCache(allocator);
                    caches++;
                    int count = 8 + (int)(caches % 5) * 16;
                    for (int i = 0; i < count; i++)
                    {
                        if (!cache.TryAlloc(size, out PageFragment f))
                        {
                            Assert.True(limited, "an allocation failed without a memory limit");
                            Thread.Yield();
                            continue;
                        }

                        long stamp = Interlocked.Increment(ref carved);
                        MemoryMarshal.Write(f.Span, in stamp);
                        MemoryMarshal.Write(f.Span[^8..], in stamp);
                        handOver.Add(f);
                    }

                    if (caches % 3 == 0)
                    {
                        cache.Drain();
                    }

                    recycled += cache.PagesRecycled;
                    cache.Dispose();
                }
            }
            catch (Exception e)
            {
                Record(e);
            }
            finally
            {
                Volatile.Write(ref producerDone, 1);
                handOver.CompleteAdding();
            }
        });

        Thread Consumer() => new(() =>
        {
            start.SignalAndWait();
            foreach (PageFragment f in handOver.GetConsumingEnumerable())
            {
                try
                {
                    long head = MemoryMarshal.Read<long>(f.Span);
                    long tail = MemoryMarshal.Read<long>(f.Span[^8..]);
                    Assert.True(head == tail && head > 0, $"a fragment's bytes changed under it: {head} / {tail}");
                    PageFragCache.Free(f);
                    Interlocked.Increment(ref freed);
                }
                catch (Exception e)
                {
                    Record(e);
                }
            }
        });

        var trimmer = new Thread(() =>
        {
            try
            {
                start.SignalAndWait();
                while (Volatile.Read(ref producerDone) == 0)
                {
                    if ((++trims & 1) == 0)
                    {
                        allocator.Trim();
                    }
                    else
                    {
                        allocator.DrainPerCpuLists();
                    }

                    Thread.Yield();
                }
            }
            catch (Exception e)
            {
                Record(e);
            }
        });

        Thread[] threads = [producer, Consumer(), Consumer(), trimmer];
        foreach (Thread t in threads)
        {
            t.Start();
        }

        foreach (Thread t in threads)
        {
            t.Join();
        }

        Assert.Null(failure);
        Assert.True(carved > 1000, $"only {carved} fragments carved");
        Assert.Equal(carved, freed);
        Assert.True(trims > 10, $"only {trims} trims ran");
        Assert.True(recycled > 0, "no refill took a parked page: the race did not reach the recycle slots");

        // Every cache was disposed: nothing may stay parked, and every page is free again.
        Assert.Equal(0, allocator.RecycledBlocks);
        Leaks.AssertNone(allocator);
        allocator.Trim();
        PageAllocatorStats stats = allocator.GetStats();
        Assert.Equal(0, stats.Arenas);
        Assert.True(stats.IsConsistent);
    }

    [Fact]
    public void Pages_cycling_through_the_recycle_slots_allocate_nothing_on_either_thread()
    {
        using PageAllocator allocator = Leaks.NewAllocator(4 << 20);
        var cache = new PageFragCache(allocator);
        var batch = new PageFragment[PerPage * 3];
        long consumerBytes = -1;
        Action freeAll = () =>
        {
            long before = GC.GetAllocatedBytesForCurrentThread();
            foreach (PageFragment f in batch)
            {
                PageFragCache.Free(f);
            }

            consumerBytes = GC.GetAllocatedBytesForCurrentThread() - before;
        };

        // The hand-over to the other thread (a semaphore wait) may allocate on this thread, so each side measures only
        // its own allocator calls: the refills (which take the parked pages) here, the frees (which park them) there.
        var rounds = new List<(long Producer, long Consumer)>();
        for (int round = 0; round < 100; round++)
        {
            long before = GC.GetAllocatedBytesForCurrentThread();
            for (int i = 0; i < batch.Length; i++)
            {
                Assert.True(cache.TryAlloc(Frag, out batch[i]));
            }

            long producerBytes = GC.GetAllocatedBytesForCurrentThread() - before;
            OtherThread.Run(freeAll);
            rounds.Add((producerBytes, consumerBytes));
            if (round > 0 && producerBytes == 0 && consumerBytes == 0)
            {
                break;
            }
        }

        Assert.True(rounds[^1] == (0, 0), $"every round allocated (producer, consumer): {string.Join(", ", rounds)}");
        long recycledBefore = cache.PagesRecycled;
        Assert.True(recycledBefore > 0, "the rounds never refilled from the recycle slots");
        cache.Dispose();
        Leaks.AssertNone(allocator);
    }
}
