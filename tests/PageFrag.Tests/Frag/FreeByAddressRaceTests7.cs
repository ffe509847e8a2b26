using System.Collections.Concurrent;
using System.Diagnostics;
using PageFrag.Frag;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;
using Xunit.Abstractions;

namespace PageFrag.Tests.Frag;

/// <summary>
/// Session 7 attack: frees by address (<see cref="PageFragCache.Free(nint)"/>) from another thread while the owner
/// carves, reuses its page in place (every fragment freed: generation + 1) and leaves pages with fragments still out;
/// then the same with stale addresses, freed again while the page is reused. A stale address may only free a fragment
/// that starts at that address now (the documented limit of free by address), never bytes inside another fragment,
/// and no page may leak or go back twice.
/// </summary>
public class FreeByAddressRaceTests7
{
    private const int Milliseconds = 1200;

    // One round of requests (size, alignment) that tiles an order-3 page from offset 0: page starts (4 KiB and 8 KiB
    // fragments, and a 100-byte one on a 4 KiB boundary, whose states live in the dense table), fragments under 8 bytes
    // at unaligned addresses (4301, 16403, 32759), aligned ones (64, 8). The round ends at 32767 and begins with a
    // 4096-aligned request, so every round starts a page (a new one, or the same one reused in place) at offset 0, and
    // the fragment starts repeat from round to round: a stale address often meets a live fragment start again.
    // Every third round swaps 13 and 11 for 14 and 12: the fragments under 8 bytes that follow then start one byte
    // later in the same granule (4302 for 4301, 16404 for 16403), so a stale address of one layout is an interior address
    // of the other, in the granule of a live start.
    private static readonly (int Size, int Alignment)[] s_round =
    [
        (4096, 4096), (100, 1), (7, 1), (64, 64), (13, 1), (3, 1), (1500, 8),
        (8192, 4096), (5, 1), (11, 1), (1, 1), (4096, 4096), (8183, 1), (1, 1),
    ];

    private static (int Size, int Alignment) Request(int round, int i) =>
        round % 3 == 2 && s_round[i].Size is 13 or 11 ? (s_round[i].Size + 1, 1) : s_round[i];

    private readonly ITestOutputHelper _output;

    public FreeByAddressRaceTests7(ITestOutputHelper output) => _output = output;

    private readonly record struct Held(PageFragment Fragment, int Seed);

    [Fact]
    public void Frees_by_address_racing_the_owners_carving_in_place_reuse_and_page_leaves_free_exactly_their_fragments()
    {
        using PageAllocator allocator = FragKit.NewAllocator(arenaSize: 1 << 20);
        var queue = new ConcurrentQueue<Held>();
        long allocated = 0, released = 0, failedAllocations = 0, aborted = 0, forcedReuses = 0;
        int stop = 0;

        using var gate = new RaceGate(() =>
        {
            // The other thread: checks each fragment's bytes, then frees it by its address.
            while (true)
            {
                if (queue.TryDequeue(out Held h))
                {
                    if (!FragKit.IsIntact(h.Fragment, h.Seed))
                    {
                        throw new InvalidOperationException($"a live fragment was damaged before its free by address: {h.Fragment}");
                    }

                    PageFragCache.Free(h.Fragment.Address);
                    Interlocked.Increment(ref released);
                }
                else if (Volatile.Read(ref stop) != 0 && queue.IsEmpty)
                {
                    // The owner sets stop after its last enqueue: an empty queue read after stop is empty for good.
                    return;
                }
                else
                {
                    Thread.SpinWait(10);
                }
            }
        });

        using var cache = new PageFragCache(allocator);
        long reusedAtStart = cache.PagesReused;
        gate.Race(() =>
        {
            var own = new Queue<Held>();
            var watch = Stopwatch.StartNew();
            int seed = 0;
            try
            {
                for (int round = 0; watch.ElapsedMilliseconds < Milliseconds && gate.Failure is null; round++)
                {
                    if (round % 4 == 3)
                    {
                        // Everything out comes back before the round's first request: the cache then finds its page's
                        // count at zero when it leaves it, and reuses it in place under the next generation.
                        FreeOwn(cache, own, ref released);
                        var spin = default(SpinWait);
                        while (Volatile.Read(ref released) != allocated && gate.Failure is null)
                        {
                            spin.SpinOnce(-1);
                        }

                        forcedReuses++;
                    }

                    for (int i = 0; i < s_round.Length; i++)
                    {
                        (int size, int alignment) = Request(round, i);
                        while (queue.Count > 48 && gate.Failure is null)
                        {
                            Thread.SpinWait(20);
                        }

                        if (!Alloc(cache, size, alignment, out PageFragment f))
                        {
                            // An order-0 page (the order-3 try found none on this CPU's lists) cannot hold 8 KiB: a
                            // failed Try, not an error. The next small request still works.
                            failedAllocations++;
                            continue;
                        }

                        allocated++;
                        if (i == 4 && round % 3 == 0)
                        {
                            // The most recent allocation aborted, then asked for again: the bytes after the aborted
                            // start granule (a copy of the aborted handle must not name the new fragment).
                            cache.Abort(f);
                            aborted++;
                            Interlocked.Increment(ref released);
                            Assert.True(Alloc(cache, size, alignment, out PageFragment again));
                            Assert.True(again.Address >= f.Address + 8, "the next fragment starts after the aborted start granule");
                            allocated++;
                            f = again;
                        }

                        FragKit.Fill(f, ++seed);
                        if (seed % 5 == 0)
                        {
                            own.Enqueue(new Held(f, seed));
                            if (own.Count > 3)
                            {
                                FreeOne(cache, own.Dequeue(), ref released);
                            }
                        }
                        else
                        {
                            queue.Enqueue(new Held(f, seed));
                        }
                    }
                }

                FreeOwn(cache, own, ref released);
            }
            finally
            {
                Volatile.Write(ref stop, 1);
            }
        });

        gate.Dispose();
        Assert.Null(gate.Failure);
        Assert.True(queue.IsEmpty);
        Assert.Equal(allocated, Volatile.Read(ref released));
        long reused = cache.PagesReused - reusedAtStart;
        _output.WriteLine($"{allocated} fragments, {aborted} aborted, {failedAllocations} failed tries, {cache.PagesAllocated} pages taken, {reused} reused in place, {forcedReuses} forced");
        Assert.True(reused > 0, "no page was reused in place: the test did not reach the race it is about");
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void Stale_addresses_freed_again_while_pages_are_reused_free_only_fragments_that_start_there_now_and_lose_no_page()
    {
        using PageAllocator allocator = FragKit.NewAllocator(arenaSize: 1 << 20);
        var queue = new ConcurrentQueue<Held>();
        long allocated = 0, released = 0, settled = 0;
        int stop = 0;

        // What each side saw: the addresses a stale free took a live fragment at, and the addresses whose holder then
        // found its fragment freed already (the victims). Each side writes only its own lists.
        var staleHits = new List<nint>();
        var attackerVictims = new List<nint>();
        var ownerVictims = new List<nint>();
        long staleRefused = 0;

        using var gate = new RaceGate(() =>
        {
            var freed = new nint[256];
            int freedCount = 0;
            var random = new Random(7);
            while (true)
            {
                if (queue.TryDequeue(out Held h))
                {
                    // The legitimate free, by handle: a handle knows its page's generation, so it never frees another
                    // fragment, and a fragment a stale free took shows up here as a double free.
                    if (ReleaseByHandle(h, attackerVictims))
                    {
                        Interlocked.Increment(ref released);
                    }

                    Interlocked.Increment(ref settled);

                    freed[freedCount++ % freed.Length] = h.Fragment.Address;

                    // The stale free: an address freed earlier, freed again by address.
                    nint stale = freed[random.Next(Math.Min(freedCount, freed.Length))];
                    try
                    {
                        PageFragCache.Free(stale);
                        staleHits.Add(stale);
                        Interlocked.Increment(ref released);
                    }
                    catch (PageFragDoubleFreeException)
                    {
                        staleRefused++;
                    }
                    catch (ArgumentException e) when (e.ParamName == "address")
                    {
                        staleRefused++;
                    }
                }
                else if (Volatile.Read(ref stop) != 0 && queue.IsEmpty)
                {
                    // The owner sets stop after its last enqueue: an empty queue read after stop is empty for good.
                    return;
                }
                else
                {
                    Thread.SpinWait(10);
                }
            }
        });

        using var cache = new PageFragCache(allocator);
        long reusedAtStart = cache.PagesReused;
        gate.Race(() =>
        {
            var own = new Queue<Held>();
            var watch = Stopwatch.StartNew();
            int seed = 0;
            try
            {
                for (int round = 0; watch.ElapsedMilliseconds < Milliseconds && gate.Failure is null; round++)
                {
                    if (round % 2 == 1)
                    {
                        // Let everything come back so that the page is reused in place: the stale addresses of the last
                        // round are fragment starts again in the next one.
                        while (own.Count > 0)
                        {
                            ReleaseOwn(cache, own.Dequeue(), ownerVictims, ref released, ref settled);
                        }

                        var spin = default(SpinWait);
                        while (Volatile.Read(ref settled) != allocated && gate.Failure is null)
                        {
                            spin.SpinOnce(-1);
                        }
                    }

                    for (int i = 0; i < s_round.Length; i++)
                    {
                        (int size, int alignment) = Request(round, i);
                        while (queue.Count > 32 && gate.Failure is null)
                        {
                            Thread.SpinWait(20);
                        }

                        if (!Alloc(cache, size, alignment, out PageFragment f))
                        {
                            continue;
                        }

                        Interlocked.Increment(ref allocated);
                        FragKit.Fill(f, ++seed);
                        if (seed % 4 == 0)
                        {
                            own.Enqueue(new Held(f, seed));
                            if (own.Count > 6)
                            {
                                ReleaseOwn(cache, own.Dequeue(), ownerVictims, ref released, ref settled);
                            }
                        }
                        else
                        {
                            queue.Enqueue(new Held(f, seed));
                        }
                    }
                }

                while (own.Count > 0)
                {
                    ReleaseOwn(cache, own.Dequeue(), ownerVictims, ref released, ref settled);
                }
            }
            finally
            {
                Volatile.Write(ref stop, 1);
            }
        });

        gate.Dispose();
        Assert.Null(gate.Failure);
        Assert.True(queue.IsEmpty);

        // Every fragment was released exactly once, by its holder or by a stale free; no release freed anything else.
        Assert.Equal(Volatile.Read(ref allocated), Volatile.Read(ref released));

        // Each stale free that won took a fragment that started at that address then, and that fragment's holder found
        // it freed: the same addresses, as many times.
        var victims = attackerVictims.Concat(ownerVictims).Order().ToArray();
        Assert.Equal(staleHits.Order().ToArray(), victims);
        Assert.True(staleHits.Count > 0, "no stale free met a live fragment: the test did not reach the case it is about");

        long reused = cache.PagesReused - reusedAtStart;
        _output.WriteLine($"{allocated} fragments, {staleHits.Count} stale frees took a live fragment, {staleRefused} refused, {cache.PagesAllocated} pages taken, {reused} reused in place");
        Assert.True(reused > 0, "no page was reused in place: the test did not reach the race it is about");
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    private static bool Alloc(PageFragCache cache, int size, int alignment, out PageFragment fragment) =>
        alignment == 1 ? cache.TryAlloc(size, out fragment) : cache.TryAlloc(size, alignment, out fragment);

    // The owner's frees rotate through its three ways: FreeLocal, the static free by handle, the free by address.
    private static void FreeOne(PageFragCache cache, Held h, ref long released)
    {
        if (!FragKit.IsIntact(h.Fragment, h.Seed))
        {
            throw new InvalidOperationException($"a live fragment was damaged before its owner freed it: {h.Fragment}");
        }

        switch (h.Seed % 3)
        {
            case 0: cache.FreeLocal(h.Fragment); break;
            case 1: PageFragCache.Free(h.Fragment); break;
            default: PageFragCache.Free(h.Fragment.Address); break;
        }

        Interlocked.Increment(ref released);
    }

    private static void FreeOwn(PageFragCache cache, Queue<Held> own, ref long released)
    {
        while (own.Count > 0)
        {
            FreeOne(cache, own.Dequeue(), ref released);
        }
    }

    private static void ReleaseOwn(PageFragCache cache, Held h, List<nint> victims, ref long released, ref long settled)
    {
        if (Release(h, victims, f =>
        {
            if ((h.Seed & 1) == 0)
            {
                cache.FreeLocal(f);
            }
            else
            {
                PageFragCache.Free(f);
            }
        }))
        {
            Interlocked.Increment(ref released);
        }

        Interlocked.Increment(ref settled);
    }

    private static bool ReleaseByHandle(Held h, List<nint> victims) => Release(h, victims, f => PageFragCache.Free(f));

    /// <summary>
    /// Frees a fragment by handle. True when the free won. A fragment a stale free took is refused as a double free
    /// (a victim, recorded); its bytes may have gone to a newer fragment by then. A fragment whose bytes changed while
    /// its free still wins was damaged while live: that is the failure this test looks for.
    /// </summary>
    private static bool Release(Held h, List<nint> victims, Action<PageFragment> free)
    {
        bool intact = FragKit.IsIntact(h.Fragment, h.Seed);
        try
        {
            free(h.Fragment);
        }
        catch (PageFragDoubleFreeException)
        {
            victims.Add(h.Fragment.Address);
            return false;
        }

        if (!intact)
        {
            throw new InvalidOperationException($"a live fragment was damaged, and no stale free had taken it: {h.Fragment}");
        }

        return true;
    }
}
