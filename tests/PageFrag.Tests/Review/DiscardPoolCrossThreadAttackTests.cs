using System.Buffers;
using System.Collections.Concurrent;
using System.Diagnostics;
using PageFrag.Buffers;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;

namespace PageFrag.Tests.Review;

/// <summary>
/// Review of session 5: <see cref="PageAllocator.DiscardFreeMemory"/> and <see cref="PageFragMemoryPool.Trim"/> on
/// a third thread while pool buffers (fragments and dedicated blocks) are rented on one thread and disposed on
/// another (the contended return path that leaves the cache's page with marks to count), and disposed on the
/// renting thread too. A discard that covered a held page, or a fragment state a live buffer needs, shows as a
/// buffer whose bytes read zero or whose Dispose is refused.
/// </summary>
public class DiscardPoolCrossThreadAttackTests
{
    [Fact]
    public void Discard_and_pool_trim_racing_cross_thread_rent_and_dispose_never_touch_a_rented_buffer()
    {
        using PageAllocator allocator = Leaks.NewAllocator(1 << 20);
        var queue = new ConcurrentQueue<(IMemoryOwner<byte> Owner, byte Pattern)>();
        var failures = new ConcurrentQueue<Exception>();
        int stop = 0;
        long rents = 0, passes = 0;
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator, MaxBufferSize = 65536 }))
        using (var start = new Barrier(3))
        {
            void Guard(Action body)
            {
                try
                {
                    start.SignalAndWait();
                    body();
                }
                catch (Exception e)
                {
                    failures.Enqueue(e);
                    Volatile.Write(ref stop, 1);
                }
            }

            var producer = new Thread(() => Guard(() =>
            {
                var random = new Random(5);
                var local = new List<(IMemoryOwner<byte>, byte)>();
                byte next = 1;
                while (Volatile.Read(ref stop) == 0)
                {
                    int size = random.Next(4) == 0 ? random.Next(4097, 40000) : random.Next(1, 4097);
                    IMemoryOwner<byte> owner = pool.Rent(size);
                    byte pattern = next;
                    next = (byte)(next == 255 ? 1 : next + 1); // never 0: memory given back reads zeros
                    owner.Memory.Span.Fill(pattern);
                    rents++;
                    if (random.Next(3) == 0)
                    {
                        // Kept and disposed on the renting thread (the slot's own return path).
                        local.Add((owner, pattern));
                        if (local.Count > 32)
                        {
                            int victim = random.Next(local.Count);
                            CheckAndDispose(local[victim]);
                            local.RemoveAt(victim);
                        }
                    }
                    else
                    {
                        queue.Enqueue((owner, pattern));
                        while (queue.Count > 64 && Volatile.Read(ref stop) == 0)
                        {
                            Thread.Yield();
                        }
                    }
                }

                foreach ((IMemoryOwner<byte>, byte) held in local)
                {
                    CheckAndDispose(held);
                }
            }));

            var consumer = new Thread(() => Guard(() =>
            {
                while (Volatile.Read(ref stop) == 0 || !queue.IsEmpty)
                {
                    if (queue.TryDequeue(out (IMemoryOwner<byte>, byte) held))
                    {
                        CheckAndDispose(held);
                    }
                    else
                    {
                        Thread.Yield();
                    }
                }
            }));

            producer.Start();
            consumer.Start();
            var clock = Stopwatch.StartNew();
            Guard(() =>
            {
                while (clock.ElapsedMilliseconds < 1500 && Volatile.Read(ref stop) == 0)
                {
                    allocator.DiscardFreeMemory();
                    if (++passes % 4 == 0)
                    {
                        pool.Trim();
                    }
                }
            });

            Volatile.Write(ref stop, 1);
            producer.Join();
            consumer.Join();
            while (queue.TryDequeue(out (IMemoryOwner<byte>, byte) left))
            {
                CheckAndDispose(left);
            }

            Assert.Empty(failures);
            Assert.True(rents > 100, $"only {rents} rents");
            Assert.True(passes > 0);
            if (PhysicalMemory.IsSupported)
            {
                Assert.True(allocator.BytesDiscarded > 0, "the race gave memory back while buffers were rented");
            }
            PageFragMemoryPoolStats stats = pool.GetStats();
            Assert.Equal(stats.Rents, stats.Returns);
            Assert.Equal(0, stats.OutstandingBytes);
        }

        allocator.Trim();
        allocator.DrainPerCpuLists();
        Leaks.AssertNone(allocator);
    }

    private static void CheckAndDispose((IMemoryOwner<byte> Owner, byte Pattern) held)
    {
        int bad = held.Owner.Memory.Span.IndexOfAnyExcept(held.Pattern);
        Assert.True(bad < 0, $"a rented buffer of {held.Owner.Memory.Length} bytes lost its bytes at {bad}");

        // A buffer whose fragment state was given back (read 0) would be refused here as a double free.
        held.Owner.Dispose();
    }
}
