using System.Diagnostics;
using PageFrag.Frag;
using PageFrag.Pages;
using PageFrag.Tests.Frag;
using PageFrag.Tests.Infrastructure;

namespace PageFrag.Tests.Review;

/// <summary>
/// Review attacks on the freed marks: every fragment is released by up to three parties at once (a free by
/// handle and a free by address on two other threads, and for the most recent fragment of a batch FreeLocal or
/// Abort on the owner), while the owner leaves its page now, later, or by refilling (which reuses the page in
/// place when every fragment came back). Exactly one release of each fragment must win; a lost mark shows as a
/// leaked page, a mark counted twice as a page handed out under a live fragment (the owner's overlap check or a
/// wrong page count) and a double free that succeeds as two winners.
/// </summary>
public class FreedMarkAttackTests
{
    private const int RaceMilliseconds = 1500;

    [Theory]
    [InlineData(12, 150)]   // more than 64 fragments per page: the cache scans the page's states
    [InlineData(300, 40)]   // at most 64: the cache checks the kept starts
    [InlineData(4096, 9)]
    public void Racing_releases_of_copies_by_handle_by_address_and_on_the_owner_each_win_once_and_leak_nothing(int size, int batchMax)
    {
        using PageAllocator allocator = FragKit.NewAllocator(arenaSize: 1024 * 1024);
        var cache = new PageFragCache(allocator);
        var batch = new PageFragment[batchMax];
        var wins = new int[batchMax];
        int published = 0;
        int done = 0;
        bool stop = false;
        Exception? failure = null;
        long rounds = 0;
        using var start = new Barrier(3);

        Thread Freer(bool byAddress) => new(() =>
        {
            try
            {
                start.SignalAndWait();
                int seen = 0;
                var spin = default(SpinWait);
                while (!Volatile.Read(ref stop))
                {
                    int round = Volatile.Read(ref published);
                    if (round == seen)
                    {
                        spin.SpinOnce(-1);
                        continue;
                    }

                    seen = round;
                    int n = round & 0xFFFF;
                    for (int k = 0; k < n; k++)
                    {
                        // The two freers walk the batch in opposite orders so that they meet in the middle.
                        int i = byAddress ? n - 1 - k : k;
                        try
                        {
                            if (byAddress)
                            {
                                PageFragCache.Free(batch[i].Address);
                            }
                            else
                            {
                                PageFragCache.Free(batch[i]);
                            }

                            Interlocked.Increment(ref wins[i]);
                        }
                        catch (PageFragDoubleFreeException)
                        {
                        }
                    }

                    Interlocked.Increment(ref done);
                }
            }
            catch (Exception e)
            {
                failure = e;
                Volatile.Write(ref stop, true);
            }
        });

        Thread byHandle = Freer(false);
        Thread byAddr = Freer(true);
        byHandle.Start();
        byAddr.Start();
        start.SignalAndWait();

        var random = new Random(11);
        var clock = Stopwatch.StartNew();
        int roundNo = 0;
        try
        {
            while (clock.ElapsedMilliseconds < RaceMilliseconds && !Volatile.Read(ref stop))
            {
                int n = random.Next(1, batchMax + 1);
                for (int i = 0; i < n; i++)
                {
                    Assert.True(cache.TryAlloc(size, out batch[i]));
                    wins[i] = 0;
                }

                Volatile.Write(ref done, 0);
                roundNo++;
                Volatile.Write(ref published, (roundNo << 16) | n);

                // The owner races for the most recent fragment too, then leaves its page now, a little later, or
                // only at the next refill (in-place reuse when every fragment came back).
                int action = random.Next(6);
                try
                {
                    switch (action)
                    {
                        case 0:
                            cache.FreeLocal(batch[n - 1]);
                            Interlocked.Increment(ref wins[n - 1]);
                            break;
                        case 1:
                            cache.Abort(batch[n - 1]);
                            Interlocked.Increment(ref wins[n - 1]);
                            break;
                    }
                }
                catch (PageFragDoubleFreeException)
                {
                }

                switch (random.Next(3))
                {
                    case 0:
                        cache.Drain();
                        break;
                    case 1:
                        Thread.SpinWait(random.Next(1, 300));
                        cache.Drain();
                        break;
                }

                var spin = default(SpinWait);
                while (Volatile.Read(ref done) < 2 && !Volatile.Read(ref stop))
                {
                    spin.SpinOnce(-1);
                }

                for (int i = 0; i < n && failure is null; i++)
                {
                    if (wins[i] != 1)
                    {
                        failure = new InvalidOperationException($"round {roundNo}: fragment {i} of {n} was released {wins[i]} times");
                        Volatile.Write(ref stop, true);
                    }
                }

                rounds++;
            }
        }
        finally
        {
            Volatile.Write(ref stop, true);
            byHandle.Join();
            byAddr.Join();
        }

        Assert.Null(failure);
        Assert.True(rounds > 10, $"only {rounds} rounds ran");
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }
}
