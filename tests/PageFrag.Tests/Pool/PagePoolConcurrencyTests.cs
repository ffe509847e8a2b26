using System.Collections.Concurrent;
using PageFrag.Pages;
using PageFrag.Pool;
using PageFrag.Tests.Infrastructure;
using static PageFrag.Tests.Pool.PoolTesting;

namespace PageFrag.Tests.Pool;

public class PagePoolConcurrencyTests
{
    [Fact]
    public void An_owner_allocating_while_other_threads_free_through_the_ring_loses_and_duplicates_nothing()
    {
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 1 << 20);
        PagePool pool = NewPool(allocator, poolSize: 256);
        const int Total = 60_000;
        const int Consumers = 2;
        var queues = new BlockingCollection<PagePoolBuffer>[Consumers];
        var consumers = new Thread[Consumers];
        var errors = new ConcurrentQueue<Exception>();
        for (int c = 0; c < Consumers; c++)
        {
            queues[c] = new BlockingCollection<PagePoolBuffer>(boundedCapacity: 512);
            BlockingCollection<PagePoolBuffer> q = queues[c];
            consumers[c] = new Thread(() =>
            {
                try
                {
                    foreach (PagePoolBuffer b in q.GetConsumingEnumerable())
                    {
                        // Each buffer carries its own length in its first bytes: a duplicate hand-out would show.
                        if (BitConverter.ToInt32(b.Span) != b.Length)
                        {
                            throw new InvalidOperationException("buffer contents were overwritten while in use");
                        }

                        b.Free();
                    }
                }
                catch (Exception ex)
                {
                    errors.Enqueue(ex);
                }
            });
            consumers[c].Start();
        }

        var rng = new Random(7);
        long trueSize = 0;
        for (int i = 0; i < Total; i++)
        {
            int size = rng.Next(4, 3500);
            PagePoolBuffer b;
            while (!pool.TryAlloc(size, out b))
            {
                Thread.Yield();
            }

            BitConverter.TryWriteBytes(b.Span, size);
            trueSize += b.TrueSize;
            queues[i % Consumers].Add(b);
        }

        foreach (var q in queues)
        {
            q.CompleteAdding();
        }

        foreach (Thread t in consumers)
        {
            t.Join();
        }

        Assert.Empty(errors);
        PagePoolStats s = pool.GetStats();
        Assert.True(s.RecycleRing > 0);
        Assert.True(trueSize >= Total * 4L);

        // Every page taken is in the cache, in the ring, or was released: nothing is in use any more.
        int fragPage = pool.FragmentOffset > 0 ? 1 : 0;
        Assert.Equal(pool.InFlight, pool.CachedPages + pool.RingPages + fragPage);
        DisposeAndAssertNoLeak(pool, allocator);
        foreach (var q in queues)
        {
            q.Dispose();
        }
    }

    [Fact]
    public void Many_threads_pushing_into_a_small_ring_account_for_every_page()
    {
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 1 << 20);
        PagePool pool = NewPool(allocator, poolSize: 16);
        const int Pages = 200;
        var held = new NetMem[Pages];
        for (int i = 0; i < Pages; i++)
        {
            Assert.True(pool.TryAllocNetMem(out held[i]));
        }

        Parallel.For(0, 4, new ParallelOptions { MaxDegreeOfParallelism = 4 }, t =>
        {
            for (int i = t; i < Pages; i += 4)
            {
                pool.PutFullPage(held[i], allowDirect: false);
            }
        });

        PagePoolStats s = pool.GetStats();
        Assert.Equal(Pages, s.RecycleRing + s.RecycleRingFull);
        Assert.Equal(16, s.RecycleRing);
        Assert.Equal(pool.InFlight, pool.CachedPages + pool.RingPages);
        DisposeAndAssertNoLeak(pool, allocator);
    }
}
