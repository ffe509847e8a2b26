using System.Buffers;
using PageFrag.Buffers;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;
using static PageFrag.Tests.Buffers.BufferTestSupport;

namespace PageFrag.Tests.Buffers;

/// <summary>
/// The pool's per-thread slots: a rent takes no lock, so trims, statistics and <c>Dispose</c> must meet
/// threads that rent and return at the same moment (the quiesce handshake), slots of ended threads are
/// reused, and a call back into the pool from inside a rent never touches the busy cache.
/// </summary>
public class PageFragMemoryPoolThreadSlotTests
{
    [Fact]
    public void Trims_and_statistics_racing_with_renting_threads_never_hand_out_a_live_buffer_and_leave_no_page()
    {
        using PageAllocator allocator = WarmAllocator(arenaSize: 1 << 20);
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator }))
        {
            const int Workers = 2;
            using var start = new Barrier(Workers + 1);
            long corrupted = 0, rounds = 0, trims = 0;
            var deadline = DateTime.UtcNow.AddSeconds(1.5);

            // Each worker keeps a window of live buffers stamped with its own pattern, checks it before each
            // return, and returns some on the other worker's thread through a queue.
            var handOff = new System.Collections.Concurrent.ConcurrentQueue<(IMemoryOwner<byte> Owner, byte Tag)>();
            void Work(int id)
            {
                var window = new Queue<(IMemoryOwner<byte> Owner, byte Tag)>();
                start.SignalAndWait();
                for (int i = 0; DateTime.UtcNow < deadline; i++)
                {
                    byte tag = (byte)(1 + (id * 61 + i) % 250);
                    IMemoryOwner<byte> owner = pool.Rent(1 + (i * 131 % 4000));
                    owner.Memory.Span.Fill(tag);
                    if (i % 4 == 0)
                    {
                        handOff.Enqueue((owner, tag));
                    }
                    else
                    {
                        window.Enqueue((owner, tag));
                    }

                    while (window.Count > 8 || (window.Count > 0 && i % 16 == 0))
                    {
                        Release(window.Dequeue());
                    }

                    if (handOff.TryDequeue(out var other))
                    {
                        Release(other);
                    }

                    Interlocked.Increment(ref rounds);
                }

                while (window.Count > 0)
                {
                    Release(window.Dequeue());
                }
            }

            void Release((IMemoryOwner<byte> Owner, byte Tag) item)
            {
                if (item.Owner.Memory.Span.ContainsAnyExcept(item.Tag))
                {
                    Interlocked.Increment(ref corrupted);
                }

                item.Owner.Dispose();
            }

            var threads = new List<Thread>();
            for (int w = 0; w < Workers; w++)
            {
                int id = w;
                threads.Add(new Thread(() => Work(id)));
            }

            threads.Add(new Thread(() =>
            {
                start.SignalAndWait();
                while (DateTime.UtcNow < deadline)
                {
                    pool.Trim(idleOnly: trims % 2 == 0);
                    Assert.True(pool.GetStats().OutstandingBytes >= 0);
                    trims++;
                    Thread.Sleep(1);
                }
            }));
            threads.ForEach(t => t.Start());
            threads.ForEach(t => t.Join());
            while (handOff.TryDequeue(out var left))
            {
                Release(left);
            }

            Assert.Equal(0, corrupted);
            Assert.True(trims > 10, $"only {trims} trims ran");
            Assert.True(rounds > 1000, $"only {rounds} rounds ran");
            PageFragMemoryPoolStats stats = pool.GetStats();
            Assert.Equal(stats.Rents, stats.Returns);
            Assert.Equal(0, stats.OutstandingBytes);

            // The workers' threads ended with pages in their caches: a trim still drains every one.
            pool.Trim();
            Assert.Equal(0, allocator.PagesInUse);
            Assert.Equal(0, pool.GetStats().PooledBytes);
        }

        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_thread_that_ended_leaves_its_slot_and_its_cache_page_to_the_next_new_thread()
    {
        using PageAllocator allocator = WarmAllocator();
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator }))
        {
            for (int i = 0; i < 20; i++)
            {
                var thread = new Thread(() => pool.Rent(100).Dispose());
                thread.Start();
                thread.Join();
            }

            // One slot served every thread in turn, and its one cache page was reused.
            Assert.Equal(1, pool.SlotCount);
            Assert.Equal(8, allocator.PagesInUse);
            Assert.Equal(20, pool.GetStats().Rents);
            pool.Trim();
            Assert.Equal(0, allocator.PagesInUse);
        }

        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_rent_and_a_return_made_from_inside_a_busy_slot_leave_its_cache_alone_and_a_trim_there_does_not_wait_for_itself()
    {
        using PageAllocator allocator = WarmAllocator();
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator }))
        {
            IMemoryOwner<byte> first = pool.Rent(100);
            PageFragMemoryPool.ThreadSlot slot = ((FragmentMemoryOwner)first).Home;
            int offset = slot.Cache.Offset;

            // What a metrics or event listener called back during a rent would do on the same thread.
            Assert.True(slot.Enter());
            IMemoryOwner<byte> nested = pool.Rent(100);
            first.Dispose();
            Assert.Equal(0, pool.Trim());
            PageFragMemoryPoolStats during = pool.GetStats();
            slot.Exit();

            Assert.Equal(offset, slot.Cache.Offset);
            Assert.Equal(1, during.DedicatedBlocks);
            Assert.Equal(4096, nested.Memory.Length);
            nested.Memory.Span.Fill(7);
            nested.Dispose();

            // Outside the nested call the slot works as before.
            pool.Rent(100).Dispose();
            PageFragMemoryPoolStats stats = pool.GetStats();
            Assert.Equal(3, stats.Rents);
            Assert.Equal(3, stats.Returns);
            Assert.Equal(0, stats.OutstandingBytes);
        }

        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Owners_disposed_on_another_thread_go_to_that_threads_slot_and_the_renting_thread_takes_them_back()
    {
        using PageAllocator allocator = WarmAllocator(arenaSize: 1 << 20);
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator, OwnersPerCpu = 0 }))
        {
            // The renter keeps no owner object of its own: every one it gets back came through the spare stash.
            var owners = new HashSet<object>(ReferenceEqualityComparer.Instance);
            for (int round = 0; round < 400; round++)
            {
                IMemoryOwner<byte>[] batch = new IMemoryOwner<byte>[4];
                for (int i = 0; i < batch.Length; i++)
                {
                    batch[i] = pool.Rent(256);
                    owners.Add(batch[i]);
                }

                var disposer = new Thread(() =>
                {
                    foreach (IMemoryOwner<byte> owner in batch)
                    {
                        owner.Dispose();
                    }
                });
                disposer.Start();
                disposer.Join();
            }

            // Without the hand-back through the disposing threads' slots every rent would create a new owner.
            Assert.True(owners.Count < 100, $"{owners.Count} owner objects for 1600 rents");
            PageFragMemoryPoolStats stats = pool.GetStats();
            Assert.Equal(1600, stats.Returns);
            Assert.Equal(0, stats.OutstandingBytes);
        }

        Leaks.AssertNone(allocator);
    }
}
