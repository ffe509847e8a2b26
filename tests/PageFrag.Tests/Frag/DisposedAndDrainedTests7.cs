using System.Buffers;
using PageFrag.Buffers;
using PageFrag.Frag;
using PageFrag.Pages;
using PageFrag.Pool;
using PageFrag.Tests.Infrastructure;
using PageFrag.Tests.Pool;

namespace PageFrag.Tests.Frag;

/// <summary>
/// Session 7: disposed and drained caches. Every instance member of <see cref="PageFragCache"/>, <see cref="PagePool"/>,
/// <see cref="PageFragMemoryPool"/> and <see cref="FragBufferWriter"/> after Dispose; a Dispose on one thread while
/// another frees the cache's fragments by handle and by address; fragments freed after their cache was disposed and
/// the allocator trimmed, drained and discarded. Every test ends with no page leaked.
/// </summary>
public class DisposedAndDrainedTests7
{
    private static void Disposed(Action call, string objectName, string what)
    {
        Exception? e = Record.Exception(call);
        ObjectDisposedException ode = Assert.IsType<ObjectDisposedException>(e);
        Assert.True(objectName == ode.ObjectName, $"{what}: object name {ode.ObjectName}");
    }

    [Fact]
    public void Every_allocation_side_member_of_a_disposed_cache_throws_ObjectDisposedException_and_its_fragments_still_free()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);

        // One fragment on a page the cache already left, two on its current page, and a preparation.
        Assert.True(cache.TryAlloc(30000, out PageFragment left));
        Assert.True(cache.TryAlloc(4000, out PageFragment head));
        Assert.True(cache.TryAlloc(100, out PageFragment last));
        FragKit.Fill(left, 1);
        FragKit.Fill(head, 2);
        FragKit.Fill(last, 3);
        Assert.True(cache.TryPrepare(64, out PreparedFragment prepared));
        long pagesAllocated = cache.PagesAllocated;

        cache.Dispose();

        const string Name = nameof(PageFragCache);
        Disposed(() => cache.TryAlloc(8, out _), Name, "TryAlloc");
        Disposed(() => cache.TryAlloc(8, 8, out _), Name, "TryAlloc aligned");
        Disposed(() => cache.TryAlloc(PageFragCache.MaxFragmentSize, out _), Name, "TryAlloc of a whole page");
        Disposed(() => cache.TryRefill(8, out _), Name, "TryRefill");
        Disposed(() => cache.TryRefill(8, 64, out _), Name, "TryRefill aligned");
        Disposed(() => cache.TryPrepare(8, out _), Name, "TryPrepare");
        Disposed(() => cache.TryPrepare(8, 4096, out _), Name, "TryPrepare aligned");
        Disposed(() => cache.TryProbe(8, out _), Name, "TryProbe");
        Disposed(() => cache.TryProbe(8, 16, out _), Name, "TryProbe aligned");
        Disposed(() => cache.Commit(prepared, 1), Name, "Commit of a preparation made before Dispose");
        Disposed(() => cache.CommitNoRef(prepared, 1), Name, "CommitNoRef");
        PageFragment previous = last;
        Disposed(() => cache.CommitNoRef(prepared, 1, ref previous), Name, "CommitNoRef with previous");
        Disposed(() => cache.TryCommitNoRef(prepared, 1, ref previous), Name, "TryCommitNoRef");
        Disposed(() => cache.Abort(last), Name, "Abort of the last fragment carved before Dispose");
        Assert.Equal(last, previous);

        // Argument checks come first, as before Dispose: an empty handle or a bad size is still bad input.
        Assert.Equal("fragment", Assert.Throws<ArgumentException>(() => cache.Abort(default)).ParamName);
        Assert.Equal("prepared", Assert.Throws<ArgumentException>(() => cache.Commit(default, 1)).ParamName);
        Assert.Equal("size", Assert.Throws<ArgumentOutOfRangeException>(() => cache.TryAlloc(0, out _)).ParamName);
        Assert.Equal("alignment", Assert.Throws<ArgumentOutOfRangeException>(() => cache.TryAlloc(8, 3, out _)).ParamName);

        // What only reads, and Drain and Dispose again, do not throw.
        cache.Drain();
        cache.Dispose();
        Assert.Same(allocator, cache.Allocator);
        Assert.Equal(0, cache.CurrentPageSize);
        Assert.Equal(0, cache.Offset);
        Assert.True(cache.CurrentPage.IsEmpty);
        Assert.Equal(pagesAllocated, cache.PagesAllocated);

        // The fragments kept their bytes and free as usual, each way, once.
        Assert.True(FragKit.IsIntact(left, 1) && FragKit.IsIntact(head, 2) && FragKit.IsIntact(last, 3));
        cache.FreeLocal(left);
        PageFragCache.Free(head.Address);
        PageFragCache.Free(last);
        Assert.Throws<PageFragDoubleFreeException>(() => cache.FreeLocal(left));
        Assert.Throws<PageFragDoubleFreeException>(() => PageFragCache.Free(head));
        Assert.Throws<PageFragDoubleFreeException>(() => PageFragCache.Free(last.Address));
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void The_thread_cache_is_only_drained_by_Dispose_and_keeps_working()
    {
        Exception? failure = null;
        var thread = new Thread(() =>
        {
            try
            {
                PageFragCache cache = PageFragCache.ForCurrentThread;
                Assert.True(cache.TryAlloc(100, out PageFragment f));
                cache.Dispose();
                Assert.Equal(0, cache.CurrentPageSize);
                Assert.True(cache.TryAlloc(100, out PageFragment g));
                Assert.Same(cache, PageFragCache.ForCurrentThread);
                f.Free();
                g.Free();
                cache.Dispose();
            }
            catch (Exception e)
            {
                failure = e;
            }
        });
        thread.Start();
        thread.Join();
        Assert.Null(failure);
    }

    [Fact]
    public void Every_member_of_a_disposed_page_pool_refuses_allocation_and_buffers_in_flight_still_come_back()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        PagePool pool = PoolTesting.NewPool(allocator);
        Assert.True(pool.TryAllocFrag(100, out PagePoolBuffer fragment));
        Assert.True(pool.TryAllocPage(out PagePoolBuffer page));
        Assert.True(pool.TryAllocNetMem(out NetMem shared));
        Assert.True(pool.TryAllocNetMem(out NetMem put));
        pool.FragmentNetMem(shared, 3);
        fragment.Span.Fill(0x61);
        page.Span.Fill(0x62);

        pool.Dispose();
        Assert.True(pool.IsDisposed);

        const string Name = nameof(PagePool);
        Disposed(() => pool.TryAllocNetMem(out _), Name, "TryAllocNetMem");
        Disposed(() => pool.TryAllocPage(out _), Name, "TryAllocPage");
        Disposed(() => pool.TryAllocFrag(64, out _), Name, "TryAllocFrag");
        Disposed(() => pool.TryAlloc(64, out _), Name, "TryAlloc");
        Disposed(() => pool.TryAlloc(4000, out _), Name, "TryAlloc of a whole page");
        Disposed(pool.SetOwnerThread, Name, "SetOwnerThread");
        Disposed(() => pool.SetNode(0), Name, "SetNode");

        // Reading does not throw; a second Dispose does nothing.
        _ = pool.GetStats();
        _ = pool.ToString();
        _ = pool.FragmentOffset + pool.CachedPages + pool.RingPages + pool.OwnerThreadId;
        Assert.Equal(4, pool.InFlight);
        pool.Dispose();
        Assert.False(pool.IsReleased);

        // The buffers in flight kept their bytes; each put or free, any way, gives its page back once.
        Assert.False(fragment.Span.ContainsAnyExcept((byte)0x61));
        Assert.False(page.Span.ContainsAnyExcept((byte)0x62));
        PagePool.Free(fragment);
        Assert.Throws<PageFragDoubleFreeException>(() => PagePool.Free(fragment));
        pool.PutBuffer(page, allowDirect: true);
        Assert.Throws<PageFragDoubleFreeException>(() => PagePool.Free(page));
        pool.PutPage(put, -1, allowDirect: true);
        Assert.Throws<PageFragDoubleFreeException>(() => pool.PutFullPage(put, allowDirect: false));
        Assert.Equal(2, pool.UnrefNetMem(shared, 1));
        pool.PutPage(shared, -1, allowDirect: false);
        pool.PutPage(shared, -1, allowDirect: true);
        Assert.Equal(0, pool.InFlight);
        Assert.True(pool.IsReleased);
        pool.RetryRelease();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Every_member_of_a_disposed_memory_pool_and_writer_throws_or_reads_as_documented_and_buffers_out_still_return()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator, Name = "p7" });
        IMemoryOwner<byte> small = pool.Rent(100);
        IMemoryOwner<byte> large = pool.Rent(PageFragCache.MaxFragmentSize);
        small.Memory.Span.Fill(0x71);
        large.Memory.Span.Fill(0x72);

        pool.Dispose();
        Disposed(() => pool.Rent(), nameof(PageFragMemoryPool), "Rent()");
        Disposed(() => pool.Rent(1), nameof(PageFragMemoryPool), "Rent(1)");
        Assert.Equal("minBufferSize", Assert.Throws<ArgumentOutOfRangeException>(() => pool.Rent(-2)).ParamName);
        Assert.True(pool.IsDisposed);
        Assert.Equal("p7", pool.Name);
        Assert.Same(allocator, pool.Allocator);
        Assert.Equal(PageFragCache.MaxFragmentSize, pool.MaxBufferSize);
        Assert.Equal(0, pool.Trim());
        Assert.Equal(0, pool.Trim(idleOnly: true));
        _ = pool.GetStats();
        pool.Dispose();

        Assert.False(small.Memory.Span.ContainsAnyExcept((byte)0x71));
        Assert.False(large.Memory.Span.ContainsAnyExcept((byte)0x72));
        small.Dispose();
        large.Dispose();
        small.Dispose();
        Assert.Throws<ObjectDisposedException>(() => small.Memory);
        Assert.Equal(0, pool.GetStats().OutstandingBytes);
        Leaks.AssertNone(allocator);

        var cache = new PageFragCache(allocator);
        var writer = new FragBufferWriter(cache);
        writer.Write("kept"u8);
        FragmentChain detached = writer.Detach();
        writer.GetSpan(10)[..5].Fill(0x73);
        writer.Advance(5);
        writer.Dispose();

        const string Name = nameof(FragBufferWriter);
        Disposed(() => writer.GetSpan(), Name, "GetSpan()");
        Disposed(() => writer.GetSpan(1), Name, "GetSpan(1)");
        Disposed(() => writer.GetMemory(100000), Name, "GetMemory(100000)");
        Disposed(() => writer.GetMemory(-1), Name, "GetMemory(-1)");
        Disposed(() => writer.Advance(0), Name, "Advance(0)");
        Disposed(() => writer.Advance(1), Name, "Advance(1)");
        Disposed(() => writer.Advance(-1), Name, "Advance(-1)");
        Disposed(() => writer.Detach(), Name, "Detach");
        Disposed(writer.Reset, Name, "Reset");
        Disposed(() => _ = writer.WrittenCount, Name, "WrittenCount");
        Disposed(() => _ = writer.SegmentCount, Name, "SegmentCount");
        Disposed(() => _ = writer.WrittenSequence, Name, "WrittenSequence");
        Assert.Same(cache, writer.Cache);
        writer.Dispose();

        // The chain detached before Dispose keeps its bytes and frees them itself.
        Assert.Equal("kept"u8.ToArray(), detached.Sequence.ToArray());
        detached.Dispose();
        FragKit.DrainAndAssertNoLeak(cache, allocator);
        cache.Dispose();
    }

    private static readonly (int Size, int Alignment)[] s_mix =
        [(4096, 4096), (100, 1), (3, 1), (64, 64), (8192, 1), (13, 1), (1500, 8), (1, 1), (4096, 1), (200, 16)];

    [Fact]
    public void A_Dispose_racing_frees_by_handle_and_address_of_the_caches_fragments_gives_each_page_back_exactly_once()
    {
        using PageAllocator allocator = FragKit.NewAllocator(arenaSize: 1 << 20);
        PageFragment[] current = [];
        int[] seeds = [];
        int freedBySecond = 0;

        // The second thread frees the round's fragments in their order, even ones by handle and odd ones by address,
        // each after checking its bytes: all of them must succeed, whatever point the Dispose reached.
        using var gate = new RaceGate(() =>
        {
            PageFragment[] frags = Volatile.Read(ref current);
            for (int i = 0; i < frags.Length; i++)
            {
                if (!FragKit.IsIntact(frags[i], seeds[i]))
                {
                    throw new InvalidOperationException($"fragment {i} of {frags.Length} was damaged: {frags[i]}");
                }

                if ((i & 1) == 0)
                {
                    PageFragCache.Free(frags[i]);
                }
                else
                {
                    PageFragCache.Free(frags[i].Address);
                }

                Volatile.Write(ref freedBySecond, i + 1);
            }
        });

        var random = new Random(77);
        var watch = System.Diagnostics.Stopwatch.StartNew();
        int rounds = 0;
        // One second, and at least 21 rounds however loaded the machine is (at most ten seconds).
        while ((watch.ElapsedMilliseconds < 1000 || rounds <= 20) && watch.ElapsedMilliseconds < 10_000 && gate.Failure is null)
        {
            var cache = new PageFragCache(allocator);

            // From one fragment to a few pages' worth: the Dispose finds the current page with fragments out, or
            // with all of them freed already, and the frees find pages the cache left or still holds.
            int count = 1 + random.Next(rounds % 3 == 0 ? 40 : 8);
            var frags = new PageFragment[count];
            var roundSeeds = new int[count];
            for (int i = 0; i < count; i++)
            {
                (int size, int alignment) = s_mix[random.Next(s_mix.Length)];
                if (!(alignment == 1 ? cache.TryAlloc(size, out frags[i]) : cache.TryAlloc(size, alignment, out frags[i])))
                {
                    // An order-0 page cannot hold 8 KiB: a failed Try; a small fragment instead.
                    Assert.True(cache.TryAlloc(100, out frags[i]));
                }

                roundSeeds[i] = rounds * 64 + i;
                FragKit.Fill(frags[i], roundSeeds[i]);
            }

            seeds = roundSeeds;
            Volatile.Write(ref current, frags);
            // The Dispose waits until the other thread has freed `before` fragments (it is then freeing the next one): the
            // frees before it leave marks on the page the cache still holds, those after it find the page left.
            int before = random.Next(count + 1);
            bool dispose = (rounds & 1) == 0;
            Volatile.Write(ref freedBySecond, 0);
            gate.Race(() =>
            {
                var spin = default(SpinWait);
                while (Volatile.Read(ref freedBySecond) < before && gate.Failure is null)
                {
                    spin.SpinOnce(-1);
                }

                if (dispose)
                {
                    cache.Dispose();
                }
                else
                {
                    cache.Drain();
                }
            });

            Assert.Null(gate.Failure);
            Assert.Equal(count, freedBySecond);
            Assert.Equal(0, cache.CurrentPageSize);
            cache.Dispose();

            // Every page came back exactly once: none in use, and the allocator's counts add up.
            Leaks.AssertNone(allocator);
            rounds++;
        }

        Assert.Null(gate.Failure);
        Assert.True(rounds > 20, $"only {rounds} rounds");
    }

    [Fact]
    public void A_memory_pool_disposed_while_another_thread_returns_and_rents_gives_every_page_back_and_each_rent_works_or_throws_ObjectDisposedException()
    {
        using PageAllocator allocator = FragKit.NewAllocator(arenaSize: 1 << 20);
        int[] sizes = [1, 100, 4096, 20000, PageFragCache.MaxFragmentSize, 300];
        IMemoryOwner<byte>[] owners = [];
        PageFragMemoryPool? currentPool = null;
        int racingRentsServed = 0;
        int returned = 0;
        int rentsRefused = 0;
        int rentsServed = 0;

        // The other thread gives the round's buffers back (each checked first), then rents once more, racing the Dispose:
        // the rent either works (and is returned) or meets the disposed pool; it never refills a cache the Dispose has
        // already drained (the round's leak check would find that page).
        using var gate = new RaceGate(() =>
        {
            IMemoryOwner<byte>[] mine = Volatile.Read(ref owners);
            for (int i = 0; i < mine.Length; i++)
            {
                if (mine[i].Memory.Span.ContainsAnyExcept((byte)(i + 1)))
                {
                    throw new InvalidOperationException($"rented buffer {i} was damaged");
                }

                mine[i].Dispose();
                Volatile.Write(ref returned, i + 1);
            }

            try
            {
                IMemoryOwner<byte> late = Volatile.Read(ref currentPool)!.Rent(200);
                late.Memory.Span.Fill(0x7E);
                late.Dispose();
                Interlocked.Increment(ref racingRentsServed);
            }
            catch (ObjectDisposedException e) when (e.ObjectName == nameof(PageFragMemoryPool))
            {
            }
        });

        var random = new Random(17);
        var watch = System.Diagnostics.Stopwatch.StartNew();
        int rounds = 0;
        // One second, and at least 21 rounds however loaded the machine is (at most ten seconds).
        while ((watch.ElapsedMilliseconds < 1000 || rounds <= 20) && watch.ElapsedMilliseconds < 10_000 && gate.Failure is null)
        {
            var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator });
            int count = 1 + random.Next(12);
            var rented = new IMemoryOwner<byte>[count];
            for (int i = 0; i < count; i++)
            {
                rented[i] = pool.Rent(sizes[random.Next(sizes.Length)]);
                rented[i].Memory.Span.Fill((byte)(i + 1));
            }

            Volatile.Write(ref owners, rented);
            Volatile.Write(ref currentPool, pool);
            Volatile.Write(ref returned, 0);
            int before = random.Next(count + 1);
            gate.Race(() =>
            {
                var spin = default(SpinWait);
                while (Volatile.Read(ref returned) < before && gate.Failure is null)
                {
                    spin.SpinOnce(-1);
                }

                pool.Dispose();
            });

            Assert.Null(gate.Failure);
            Assert.Equal(count, returned);

            // A rent on another thread after the Dispose: refused, and no page taken.
            var other = new Thread(() =>
            {
                try
                {
                    pool.Rent(100).Dispose();
                    Interlocked.Increment(ref rentsServed);
                }
                catch (ObjectDisposedException)
                {
                    Interlocked.Increment(ref rentsRefused);
                }
            });
            other.Start();
            other.Join();
            Leaks.AssertNone(allocator);
            rounds++;
        }

        Assert.Null(gate.Failure);
        Assert.Equal(0, rentsServed);
        Assert.Equal(rounds, rentsRefused);
        Assert.True(rounds > 20, $"only {rounds} rounds");
    }

    [Fact]
    public void Fragments_outliving_their_disposed_cache_survive_trim_per_CPU_drain_and_discard_and_free_once_after_them()
    {
        using PageAllocator allocator = FragKit.NewAllocator(arenaSize: 256 * 1024);
        var cache = new PageFragCache(allocator);
        var frags = new List<PageFragment>();

        // About three pages: the first two left with fragments out, the third current when the cache is disposed.
        for (int i = 0; i < 45; i++)
        {
            Assert.True(cache.TryAlloc(i % 9 == 0 ? 4096 : 2000 + i, out PageFragment f));
            FragKit.Fill(f, i);
            frags.Add(f);
        }

        cache.Dispose();

        // Nothing of the held pages may go: no arena is entirely free, and discarding touches only free blocks.
        allocator.DrainPerCpuLists();
        Assert.Equal(0, allocator.Trim());
        allocator.DiscardFreeMemory();

        // Another thread frees half of them (by handle and by address) while this one trims, drains and discards.
        var second = new List<PageFragment>();
        for (int i = 1; i < frags.Count; i += 2)
        {
            second.Add(frags[i]);
        }

        using (var gate = new RaceGate(() =>
        {
            for (int i = 0; i < second.Count; i++)
            {
                int seed = 2 * i + 1;
                if (!FragKit.IsIntact(second[i], seed))
                {
                    throw new InvalidOperationException($"a held fragment was damaged: {second[i]}");
                }

                if ((i & 1) == 0)
                {
                    PageFragCache.Free(second[i].Address);
                }
                else
                {
                    second[i].Free();
                }
            }
        }))
        {
            gate.Race(() =>
            {
                for (int i = 0; i < 20; i++)
                {
                    allocator.DrainPerCpuLists();
                    allocator.Trim();
                    allocator.DiscardFreeMemory();
                }
            });
            Assert.Null(gate.Failure);
        }

        for (int i = 0; i < frags.Count; i += 2)
        {
            Assert.True(FragKit.IsIntact(frags[i], i), $"fragment {i} was damaged");
            if (i % 4 == 0)
            {
                frags[i].Free();
            }
            else
            {
                PageFragCache.Free(frags[i].Address);
            }
        }

        Leaks.AssertNone(allocator);

        // Every page is free now: the arena goes, and stale frees of its fragments are refused by handle and by address.
        Assert.True(allocator.Trim() >= 1);
        Assert.Equal(0, allocator.GetStats().TotalPages);
        foreach (PageFragment f in (PageFragment[])[frags[0], frags[1], frags[^1]])
        {
            Assert.Throws<PageFragDoubleFreeException>(() => f.Free());
            ArgumentException e = Assert.Throws<ArgumentException>(() => PageFragCache.Free(f.Address));
            Assert.Equal("address", e.ParamName);
            Assert.Contains("No PageFrag arena owns the address", e.Message, StringComparison.Ordinal);
        }

        // The allocator still serves a new cache from a new arena.
        using var next = new PageFragCache(allocator);
        Assert.True(next.TryAlloc(100, out PageFragment after));
        after.Free();
        FragKit.DrainAndAssertNoLeak(next, allocator);
    }
}
