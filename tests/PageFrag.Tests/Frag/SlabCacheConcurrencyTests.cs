using System.Collections.Concurrent;
using System.Diagnostics;
using PageFrag.Frag;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;

namespace PageFrag.Tests.Frag;

/// <summary>
/// The slab cache under threads: one free of two racing ones wins, attackers holding copies and stale handles
/// never make two owners share a slot, frees from other threads while the owner allocates, and blocks released
/// by their last free after the cache was disposed. Real threads, bounded in time, no page leaked at the end.
/// </summary>
public class SlabCacheConcurrencyTests
{
    private const int RaceMilliseconds = 1500;

    [Theory]
    [InlineData(16)]
    [InlineData(64)]
    [InlineData(4096)]
    public void Of_two_racing_frees_of_one_fragment_exactly_one_wins_and_no_page_leaks(int size)
    {
        // Each round both threads free the same batch of fragments in the same order, so that every round
        // holds hundreds of chances for the two frees of one fragment to meet.
        const int Batch = 256;
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 2 << 20);
        var cache = new SlabCache(allocator);
        var shared = new SlabFragment[Batch];
        long[] wins = new long[2];
        long[] losses = new long[2];

        void FreeBatch(int who)
        {
            for (int i = 0; i < Batch; i++)
            {
                try
                {
                    SlabCache.Free(shared[i]);
                    wins[who]++;
                }
                catch (PageFragDoubleFreeException)
                {
                    losses[who]++;
                }
            }
        }

        using var gate = new RaceGate(() => FreeBatch(1));
        int rounds = 0;
        var clock = Stopwatch.StartNew();
        SlabCacheTestsKit.Neighbours neighbours = SlabCacheTestsKit.Neighbours.Around(cache, size);
        while (clock.ElapsedMilliseconds < RaceMilliseconds && gate.Failure is null)
        {
            rounds++;
            for (int i = 0; i < Batch; i++)
            {
                Assert.True(cache.TryAlloc(size, out shared[i]));
            }

            gate.Race(() => FreeBatch(0));
        }

        gate.Dispose();
        Assert.Null(gate.Failure);
        Assert.Equal((long)rounds * Batch, wins[0] + wins[1]);
        Assert.Equal((long)rounds * Batch, losses[0] + losses[1]);
        neighbours.AssertIntactAndFree();
        cache.Dispose();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Attackers_with_copies_and_stale_handles_never_make_two_owners_share_a_slot()
    {
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 1 << 20);
        var cache = new SlabCache(allocator);
        var toAttack = new ConcurrentQueue<SlabFragment>();
        long attackerWins = 0;
        long refused = 0;
        long ownerLosses = 0;
        Exception? failure = null;
        bool stop = false;

        // The attacker frees every handle it gets, twice, and tries to write through it: live copies race the
        // owner's own free, stale ones must be refused. It may win a free only in place of the owner.
        var attackers = new Thread[2];
        for (int t = 0; t < attackers.Length; t++)
        {
            attackers[t] = new Thread(() =>
            {
                try
                {
                    while (!Volatile.Read(ref stop) || !toAttack.IsEmpty)
                    {
                        if (!toAttack.TryDequeue(out SlabFragment f))
                        {
                            Thread.SpinWait(20);
                            continue;
                        }

                        for (int i = 0; i < 2; i++)
                        {
                            try
                            {
                                f.Free();
                                Interlocked.Increment(ref attackerWins);
                            }
                            catch (PageFragDoubleFreeException)
                            {
                                Interlocked.Increment(ref refused);
                            }
                        }

                        try
                        {
                            f.Span.Fill(0xEE);
                            throw new Xunit.Sdk.XunitException("a freed handle reached its bytes after the free");
                        }
                        catch (InvalidOperationException)
                        {
                        }
                    }
                }
                catch (Exception e)
                {
                    failure = e;
                }
            });
            attackers[t].Start();
        }

        // The innocent owner keeps a window of stamped fragments, checks each stamp before freeing it, and hands
        // a copy of every fragment to the attackers: live (racing its own free) or already freed (stale).
        var random = new Random(21);
        var window = new (SlabFragment Fragment, int Stamp)[300];
        int[] sizes = [12, 64, 200, 576, 1500, 4096];
        int stamp = 0;
        long handed = 0;
        var clock = Stopwatch.StartNew();
        for (int i = 0; i < window.Length; i++)
        {
            window[i] = (Alloc(cache, sizes[i % sizes.Length], ++stamp), stamp);
        }

        while (clock.ElapsedMilliseconds < RaceMilliseconds && failure is null)
        {
            int k = random.Next(window.Length);
            (SlabFragment f, int s) = window[k];
            SlabCacheTestsKit.AssertStamp(f, s);
            bool live = random.Next(2) == 0;
            if (live)
            {
                toAttack.Enqueue(f);
            }

            try
            {
                f.Free();
            }
            catch (PageFragDoubleFreeException)
            {
                Interlocked.Increment(ref ownerLosses);
            }

            if (!live)
            {
                toAttack.Enqueue(f);
            }

            handed++;
            window[k] = (Alloc(cache, sizes[random.Next(sizes.Length)], ++stamp), stamp);
            while (toAttack.Count > 1000)
            {
                Thread.Yield();
            }
        }

        Volatile.Write(ref stop, true);
        foreach (Thread t in attackers)
        {
            t.Join();
        }

        Assert.Null(failure);

        // Each handed fragment was freed exactly once: by the owner or, instead of it, by an attacker.
        Assert.Equal(ownerLosses, attackerWins);
        Assert.Equal((handed * 2) - attackerWins, refused);
        foreach ((SlabFragment f, int s) in window)
        {
            SlabCacheTestsKit.AssertStamp(f, s);
            f.Free();
        }

        cache.Dispose();
        Leaks.AssertNone(allocator);

        static SlabFragment Alloc(SlabCache cache, int size, int stamp)
        {
            Assert.True(cache.TryAlloc(size, out SlabFragment f));
            SlabCacheTestsKit.Stamp(f, stamp);
            return f;
        }
    }

    [Fact]
    public void Frees_from_another_thread_while_the_owner_allocates_keep_every_live_fragment_intact_and_dispose_mid_flight_leaks_nothing()
    {
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 1 << 20);
        var cache = new SlabCache(allocator);
        var queue = new ConcurrentQueue<(SlabFragment Fragment, int Stamp)>();
        Exception? failure = null;
        bool producerDone = false;
        long freed = 0;

        var consumer = new Thread(() =>
        {
            try
            {
                var random = new Random(2);
                var held = new List<(SlabFragment Fragment, int Stamp)>();
                while (!Volatile.Read(ref producerDone) || !queue.IsEmpty || held.Count > 0)
                {
                    if (queue.TryDequeue(out (SlabFragment Fragment, int Stamp) item))
                    {
                        held.Add(item);
                    }

                    // Release in random order, so that full blocks get free slots back and go to the pending stack.
                    if (held.Count > 400 || (held.Count > 0 && (queue.IsEmpty || random.Next(4) == 0)))
                    {
                        int k = random.Next(held.Count);
                        SlabCacheTestsKit.AssertStamp(held[k].Fragment, held[k].Stamp);
                        held[k].Fragment.Free();
                        held[k] = held[^1];
                        held.RemoveAt(held.Count - 1);
                        freed++;
                    }
                }
            }
            catch (Exception e)
            {
                failure = e;
            }
        });
        consumer.Start();

        int[] sizes = [12, 64, 576, 1500];
        int stamp = 0;
        var clock = Stopwatch.StartNew();
        var producerRandom = new Random(9);
        while (clock.ElapsedMilliseconds < RaceMilliseconds && failure is null)
        {
            Assert.True(cache.TryAlloc(sizes[producerRandom.Next(sizes.Length)], out SlabFragment f));
            SlabCacheTestsKit.Stamp(f, ++stamp);
            queue.Enqueue((f, stamp));
            while (queue.Count > 2000)
            {
                Thread.Yield();
            }
        }

        // Retire the cache while the consumer still holds and frees fragments: their blocks go back with their
        // last free, from the consumer's thread.
        cache.Dispose();
        Volatile.Write(ref producerDone, true);
        consumer.Join();
        Assert.Null(failure);
        Assert.Equal(stamp, freed);
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Racing_last_frees_of_a_disposed_caches_block_release_it_exactly_once()
    {
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 1 << 20);
        var clock = Stopwatch.StartNew();
        int rounds = 0;
        while (clock.ElapsedMilliseconds < 1000)
        {
            rounds++;
            var cache = new SlabCache(allocator);
            Assert.True(cache.TryAlloc(1500, out SlabFragment a));
            Assert.True(cache.TryAlloc(1500, out SlabFragment b));
            cache.Dispose();
            using var start = new Barrier(2);
            var other = new Thread(() =>
            {
                start.SignalAndWait();
                b.Free();
            });
            other.Start();
            start.SignalAndWait();
            a.Free();
            other.Join();
            Assert.Equal(0, allocator.PagesInUse);
        }

        Assert.True(rounds > 10);
        Leaks.AssertNone(allocator);
    }
}

/// <summary>Stamps and checks of the slab tests.</summary>
internal static class SlabCacheTestsKit
{
    public static void Stamp(SlabFragment f, int stamp)
    {
        Span<byte> span = f.Span;
        span.Fill((byte)stamp);
        BitConverter.TryWriteBytes(span, stamp);
    }

    public static void AssertStamp(SlabFragment f, int stamp)
    {
        Span<byte> span = f.Span;
        if (span.Length >= 4)
        {
            Assert.Equal(stamp, BitConverter.ToInt32(span));
            Assert.True(span[4..].IndexOfAnyExcept((byte)stamp) < 0, "a live fragment's bytes were overwritten");
        }
        else
        {
            Assert.True(span.IndexOfAnyExcept((byte)stamp) < 0, "a live fragment's bytes were overwritten");
        }
    }

    /// <summary>Live fragments beside a raced one: they must keep their bytes, and free once at the end.</summary>
    public sealed class Neighbours
    {
        private readonly SlabFragment[] _fragments;

        private Neighbours(SlabFragment[] fragments) => _fragments = fragments;

        public static Neighbours Around(SlabCache cache, int size)
        {
            var fragments = new SlabFragment[3];
            for (int i = 0; i < fragments.Length; i++)
            {
                Assert.True(cache.TryAlloc(size, out fragments[i]));
                Stamp(fragments[i], 100 + i);
            }

            return new Neighbours(fragments);
        }

        public void AssertIntactAndFree()
        {
            for (int i = 0; i < _fragments.Length; i++)
            {
                AssertStamp(_fragments[i], 100 + i);
                _fragments[i].Free();
            }
        }
    }
}
