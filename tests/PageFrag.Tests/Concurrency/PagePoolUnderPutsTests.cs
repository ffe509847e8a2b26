using System.Buffers.Binary;
using System.Collections.Concurrent;
using PageFrag.Pages;
using PageFrag.Pool;
using PageFrag.Tests.Infrastructure;
using static PageFrag.Tests.Pool.PoolTesting;

namespace PageFrag.Tests.Concurrency;

/// <summary>
/// The pool's owner allocating (fragments, sized buffers, whole pages split into pieces) while other threads
/// put everything back through the recycle ring, and destroys racing with those puts. Every test ends with
/// every page accounted for: in the pool's cache, its ring, its fragment page, or back in the allocator.
/// </summary>
public class PagePoolUnderPutsTests
{
    private abstract record Held(long Id);

    private sealed record Buffer(PagePoolBuffer Value, long Id) : Held(Id);

    private sealed record Piece(PagePool Pool, NetMem Page, long Id) : Held(Id);

    [Fact]
    public void An_owner_allocating_while_threads_put_buffers_and_the_pieces_of_split_pages_accounts_for_every_page()
    {
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 1 << 20);
        PagePool pool = NewPool(allocator, poolSize: 32);
        var queue = new ConcurrentQueue<Held>();
        int outstanding = 0;
        bool done = false;
        Exception? error = null;
        long puts = 0;

        void Put()
        {
            var spin = default(SpinWait);
            while (Volatile.Read(ref error) is null)
            {
                if (queue.TryDequeue(out Held? held))
                {
                    switch (held)
                    {
                        case Buffer b:
                            Check(b.Value.Span, b.Id);
                            b.Value.Free();
                            break;
                        case Piece p:
                            // Not the owner: allowDirect is ignored and the last piece's put takes the ring.
                            p.Pool.PutPage(p.Page, -1, allowDirect: true);
                            break;
                    }

                    Interlocked.Increment(ref puts);
                    Interlocked.Decrement(ref outstanding);
                }
                else if (Volatile.Read(ref done))
                {
                    return;
                }
                else
                {
                    spin.SpinOnce(sleep1Threshold: -1);
                }
            }
        }

        var putters = Enumerable.Range(0, 3).Select(_ => new Thread(() => Guard(Put))).ToList();
        putters.ForEach(t => t.Start());
        var random = new Random(41);
        long handed = 0;
        long id = 0;
        try
        {
            for (int op = 0; op < 60_000 && Volatile.Read(ref error) is null; op++)
            {
                while (Volatile.Read(ref outstanding) > 256)
                {
                    Thread.Yield();
                }

                int kind = random.Next(10);
                if (kind < 8)
                {
                    int size = random.Next(1, 4097);
                    Assert.True(kind < 4 ? pool.TryAllocFrag(size, out PagePoolBuffer b) : pool.TryAlloc(size, out b));
                    Write(b.Span, ++id);
                    Hand(new Buffer(b, id));
                }
                else
                {
                    // page_pool_fragment_netmem: one page, several holders on several threads.
                    Assert.True(pool.TryAllocNetMem(out NetMem page));
                    int pieces = random.Next(1, 5);
                    pool.FragmentNetMem(page, pieces);
                    for (int i = 0; i < pieces; i++)
                    {
                        Hand(new Piece(pool, page, ++id));
                    }
                }
            }
        }
        finally
        {
            Volatile.Write(ref done, true);
            putters.ForEach(t => t.Join());
        }

        Assert.Null(error);
        Assert.Equal(handed, puts);
        PagePoolStats s = pool.GetStats();
        Assert.True(s.RecycleRing > 0, s.ToString());

        // With everything put back, the pool holds exactly what its cache, ring and fragment page hold; every other
        // page it took went back to the allocator.
        Assert.Equal(pool.InFlight, pool.CachedPages + pool.RingPages + (pool.FragmentOffset > 0 ? 1 : 0));
        Assert.Equal(pool.InFlight, allocator.PagesInUse);
        DisposeAndAssertNoLeak(pool, allocator);

        void Hand(Held held)
        {
            Interlocked.Increment(ref outstanding);
            handed++;
            queue.Enqueue(held);
        }

        void Guard(Action body)
        {
            try
            {
                body();
            }
            catch (Exception e)
            {
                Interlocked.CompareExchange(ref error, e, null);
            }
        }
    }

    [Fact]
    public void Destroying_a_pool_while_other_threads_are_still_putting_its_pages_loses_none()
    {
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 1 << 20);
        var random = new Random(43);
        for (int round = 0; round < 40; round++)
        {
            PagePool pool = NewPool(allocator, poolSize: 64, retry: TimeSpan.FromHours(1));
            var buffers = new PagePoolBuffer[600];
            for (int i = 0; i < buffers.Length; i++)
            {
                Assert.True(i % 3 == 0 ? pool.TryAllocPage(out buffers[i]) : pool.TryAllocFrag(random.Next(1, 2000), out buffers[i]));
            }

            using var go = new ManualResetEventSlim();
            var putters = Enumerable.Range(0, 3).Select(t => new Thread(() =>
            {
                go.Wait();
                for (int i = t; i < buffers.Length; i += 3)
                {
                    buffers[i].Free();
                }
            })).ToList();
            putters.ForEach(t => t.Start());
            go.Set();

            // page_pool_destroy somewhere in the middle of the puts: some went into the ring before, some raced
            // with the scrub, the rest go straight back to the allocator.
            Thread.SpinWait(random.Next(0, 20_000));
            pool.Dispose();
            putters.ForEach(t => t.Join());

            // What a put pushed into the ring after the scrub is what the deferred release scrubs.
            Assert.Equal(0, pool.RetryRelease());
            Assert.True(pool.IsReleased, $"round {round}: {pool.InFlight} pages still in flight");
            Assert.Equal(pool.PagesHeld, pool.PagesReleased);
            Leaks.AssertNone(allocator);
        }
    }

    private static void Write(Span<byte> span, long id)
    {
        span.Fill((byte)id);
        if (span.Length >= 8)
        {
            BinaryPrimitives.WriteInt64LittleEndian(span, id);
        }
    }

    private static void Check(ReadOnlySpan<byte> span, long id)
    {
        bool intact = span.Length >= 8
            ? BinaryPrimitives.ReadInt64LittleEndian(span) == id && !span[8..].ContainsAnyExcept((byte)id)
            : !span.ContainsAnyExcept((byte)id);
        if (!intact)
        {
            throw new InvalidOperationException($"buffer {id} was overwritten while it was out");
        }
    }
}
