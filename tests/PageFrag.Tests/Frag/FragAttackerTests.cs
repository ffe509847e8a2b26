using System.Diagnostics;
using PageFrag.Frag;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;

namespace PageFrag.Tests.Frag;

/// <summary>
/// The attacker's test (kept): threads misuse fragments in every way the public API allows while innocent
/// owners write a pattern into their own fragments and check it before freeing.
/// </summary>
public class FragAttackerTests
{
    private const int Owners = 2;
    private const int Attackers = 2;
    private const int Milliseconds = 2000;

    /// <summary>One contested fragment per owner, released by the owner and every attacker at once.</summary>
    private sealed class Arena2
    {
        public PageFragment Contested;
        public int Round;
        public int Wins;
        public int Attempts;
        public int Stop;
    }

    [Fact]
    public void Racing_misuse_never_damages_an_innocent_fragment_exactly_one_release_wins_and_every_page_comes_back()
    {
        using PageAllocator allocator = FragKit.NewAllocator(arenaSize: 1 << 20);
        var boards = new Arena2[Owners];
        for (int i = 0; i < Owners; i++)
        {
            boards[i] = new Arena2();
        }

        using var barrier = new Barrier(Owners + Attackers);
        Exception? failure = null;
        long contestedRounds = 0;
        long staleRefused = 0;
        var stop = Stopwatch.StartNew();

        void Guard(Action body)
        {
            try
            {
                body();
            }
            catch (Exception e)
            {
                Interlocked.CompareExchange(ref failure, e, null);
                foreach (Arena2 b in boards)
                {
                    Volatile.Write(ref b.Stop, 1);
                }
            }
        }

        void Owner(int id)
        {
            Arena2 board = boards[id];
            using var cache = new PageFragCache(allocator);
            var random = new Random(id + 1);
            var innocents = new Queue<(PageFragment Fragment, int Seed)>();
            int seed = 0;
            barrier.SignalAndWait();
            while (stop.ElapsedMilliseconds < Milliseconds && Volatile.Read(ref board.Stop) == 0)
            {
                // Innocent work: a fragment with a pattern, kept for a while, checked before it is freed.
                Assert.True(cache.TryAlloc(random.Next(1, 200), 1 << random.Next(0, 6), out PageFragment innocent));
                FragKit.Fill(innocent, ++seed);
                innocents.Enqueue((innocent, seed));
                if (innocents.Count > 16)
                {
                    (PageFragment f, int s) = innocents.Dequeue();
                    if (!FragKit.IsIntact(f, s))
                    {
                        throw new InvalidOperationException($"an innocent fragment was damaged: {f}");
                    }

                    if ((s & 1) == 0)
                    {
                        cache.FreeLocal(f);
                    }
                    else
                    {
                        f.Free();
                    }
                }

                // The contested fragment (often under 8 bytes): published, then released by everyone at once.
                Assert.True(cache.TryAlloc(random.Next(0, 3) == 0 ? random.Next(1, 8) : random.Next(8, 100), out PageFragment contested));
                Volatile.Write(ref board.Attempts, 0);
                board.Contested = contested;
                Volatile.Write(ref board.Round, board.Round + 1);
                Release(board, () =>
                {
                    switch (random.Next(3))
                    {
                        case 0: cache.FreeLocal(contested); break;
                        case 1: cache.Abort(contested); break;
                        default: contested.Free(); break;
                    }
                });

                // Wait until every attacker has tried: the page cannot move on under an attacker's address.
                var spin = default(SpinWait);
                while (Volatile.Read(ref board.Attempts) < Attackers + 1)
                {
                    if (Volatile.Read(ref board.Stop) != 0)
                    {
                        return;
                    }

                    spin.SpinOnce(-1);
                }

                if (board.Wins != 1)
                {
                    throw new InvalidOperationException($"{board.Wins} releases of {contested} won");
                }

                board.Wins = 0;
                Interlocked.Increment(ref contestedRounds);

                // Stale handles: every later release of the contested fragment is refused.
                Assert.Throws<PageFragDoubleFreeException>(() => contested.Free());
                Assert.Throws<PageFragDoubleFreeException>(() => cache.FreeLocal(contested));
                Interlocked.Increment(ref staleRefused);
            }

            Volatile.Write(ref board.Stop, 1);
            while (innocents.Count > 0)
            {
                (PageFragment f, int s) = innocents.Dequeue();
                Assert.True(FragKit.IsIntact(f, s), "an innocent fragment was damaged");
                f.Free();
            }
        }

        void Attacker(int id)
        {
            var random = new Random(100 + id);
            int[] seen = new int[Owners];
            barrier.SignalAndWait();
            while (true)
            {
                bool anyRunning = false;
                for (int o = 0; o < Owners; o++)
                {
                    Arena2 board = boards[o];
                    if (Volatile.Read(ref board.Stop) != 0)
                    {
                        continue;
                    }

                    anyRunning = true;
                    int round = Volatile.Read(ref board.Round);
                    if (round == seen[o])
                    {
                        continue;
                    }

                    seen[o] = round;
                    PageFragment contested = board.Contested;

                    // Interior addresses of the contested fragment are never a start while the owner waits for this
                    // attacker: refused, whatever the state, before the attacker's own release attempt.
                    int k = random.Next(1, 8);
                    Exception e = Assert.ThrowsAny<Exception>(() => PageFragCache.Free(contested.Address + k));
                    Assert.True(e is ArgumentException or PageFragDoubleFreeException, e.ToString());
                    Release(board, () =>
                    {
                        if (random.Next(2) == 0)
                        {
                            PageFragCache.Free(contested);
                        }
                        else
                        {
                            PageFragCache.Free(contested.Address);
                        }
                    });
                }

                if (!anyRunning)
                {
                    return;
                }
            }
        }

        var threads = new List<Thread>();
        for (int i = 0; i < Owners; i++)
        {
            int id = i;
            threads.Add(new Thread(() => Guard(() => Owner(id))));
        }

        for (int i = 0; i < Attackers; i++)
        {
            int id = i;
            threads.Add(new Thread(() => Guard(() => Attacker(id))));
        }

        threads.ForEach(t => t.Start());
        threads.ForEach(t => t.Join());
        Assert.Null(failure);
        Assert.True(contestedRounds > 0);
        Assert.Equal(contestedRounds, staleRefused);
        Leaks.AssertNone(allocator);
    }

    private static void Release(Arena2 board, Action release)
    {
        try
        {
            release();
            Interlocked.Increment(ref board.Wins);
        }
        catch (PageFragDoubleFreeException)
        {
            // The loser of the race: the documented double-free exception.
        }
        finally
        {
            Interlocked.Increment(ref board.Attempts);
        }
    }
}
