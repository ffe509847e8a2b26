using System.Collections.Concurrent;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;
using static PageFrag.Tests.Pages.PageTestKit;

namespace PageFrag.Tests.Pages;

public class ConcurrencyTests
{
    // Set when any worker fails, so that workers waiting on each other give up instead of waiting forever.
    private volatile bool _failed;

    // Limited: a 16-arena limit, so that failures under pressure are part of the run too, and every charge is decided
    // on one exact count. Unlimited: each CPU counts pages and allocations in its own slot, and the sums must still
    // come out exact when pages are allocated on one thread and released on another.
    [Theory]
    [InlineData(2, true)]
    [InlineData(4, true)]
    [InlineData(2, false)]
    [InlineData(4, false)]
    public void Threads_that_allocate_mixed_orders_and_free_each_others_pages_leave_exact_counts_and_no_leak(int threadCount, bool limited)
    {
        const int opsPerThread = 4000;

        using PageAllocator allocator = Leaks.NewAllocator(SmallArena, maxBytes: limited ? 16 * SmallArena : long.MaxValue);
        var inboxes = new ConcurrentQueue<(Page Page, long Stamp)>[threadCount];
        for (int t = 0; t < threadCount; t++)
        {
            inboxes[t] = new ConcurrentQueue<(Page, long)>();
        }

        long successes = 0;
        long failures = 0;
        RunThreads(threadCount, t =>
        {
            var random = new Random(1234 + t);
            long mySuccesses = 0;
            long myFailures = 0;
            for (int i = 0; i < opsPerThread; i++)
            {
                int order = random.Next(5);
                if (allocator.TryAllocPages(order, AllocFlags.None, out Page page))
                {
                    mySuccesses++;
                    long stamp = ((long)t << 32) | (uint)i;
                    Stamp(page, stamp);

                    // Every fourth block is shared: the sender drops its own reference while the receiver may
                    // already be dropping the other, so the two decrements race.
                    bool shared = (i & 3) == 0;
                    if (shared)
                    {
                        page.AddRef();
                    }

                    inboxes[(t + 1) % threadCount].Enqueue((page, stamp));
                    if (shared)
                    {
                        allocator.FreePages(page);
                    }
                }
                else
                {
                    myFailures++;
                }

                for (int k = 0; k < 2 && inboxes[t].TryDequeue(out (Page Page, long Stamp) item); k++)
                {
                    CheckAndFree(allocator, item.Page, item.Stamp);
                }
            }

            Interlocked.Add(ref successes, mySuccesses);
            Interlocked.Add(ref failures, myFailures);
        });

        foreach (ConcurrentQueue<(Page Page, long Stamp)> inbox in inboxes)
        {
            while (inbox.TryDequeue(out (Page Page, long Stamp) item))
            {
                CheckAndFree(allocator, item.Page, item.Stamp);
            }
        }

        PageAllocatorStats stats = allocator.GetStats();
        Assert.Equal(successes, stats.Allocations);
        Assert.Equal(failures, stats.Failures);
        Assert.Equal(threadCount * opsPerThread, successes + failures);
        Assert.True(!limited || stats.Arenas <= 16);
        Assert.True(limited || failures == 0, "an allocator without a limit never refuses a block while arenas can grow");
        AssertClean(allocator);
    }

    [Fact]
    public void Pages_allocated_on_one_thread_and_freed_on_another_all_come_back()
    {
        const int count = 5000;
        using PageAllocator allocator = Leaks.NewAllocator(SmallArena, maxBytes: 4 * SmallArena);
        var pipe = new ConcurrentQueue<(Page Page, long Stamp)>();
        int producerThread = 0;
        int consumerThread = 0;
        long producerFailures = 0;

        RunThreads(2, t =>
        {
            if (t == 0)
            {
                producerThread = Environment.CurrentManagedThreadId;
                for (int i = 0; i < count; i++)
                {
                    Page page;

                    // At the limit, wait for the consumer to give pages back: memory comes back with the frees.
                    while (!allocator.TryAllocPages(i % 4, AllocFlags.None, out page))
                    {
                        if (_failed)
                        {
                            return;
                        }

                        producerFailures++;
                        Thread.Yield();
                    }

                    Stamp(page, i);
                    pipe.Enqueue((page, i));
                }
            }
            else
            {
                consumerThread = Environment.CurrentManagedThreadId;
                int freed = 0;
                while (freed < count && !_failed)
                {
                    if (pipe.TryDequeue(out (Page Page, long Stamp) item))
                    {
                        Assert.Equal(freed, item.Stamp);
                        CheckAndFree(allocator, item.Page, item.Stamp);
                        freed++;
                    }
                    else
                    {
                        Thread.Yield();
                    }
                }
            }
        });

        Assert.NotEqual(producerThread, consumerThread);
        PageAllocatorStats stats = allocator.GetStats();
        Assert.Equal(count, stats.Allocations);
        Assert.Equal(producerFailures, stats.Failures);
        AssertClean(allocator);
    }

    [Fact]
    public void Concurrent_AddRef_and_FreePages_on_one_block_keep_its_count_exact()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        Page page = Alloc(allocator, 2);
        RunThreads(3, _ =>
        {
            for (int i = 0; i < 20_000; i++)
            {
                page.AddRef();
                allocator.FreePages(page);
            }
        });

        Assert.Equal(1, page.RefCount);
        Assert.Equal(4, allocator.PagesInUse);
        allocator.FreePages(page);
        AssertClean(allocator);
    }

    [Fact]
    public void Address_lookups_stay_correct_while_other_allocators_create_trim_and_dispose_arenas()
    {
        using PageAllocator reader = Leaks.NewAllocator();
        var held = new List<Page>();
        for (int i = 0; i < 8; i++)
        {
            held.Add(Alloc(reader, i % 5));
        }

        int writerDone = 0;
        long lookups = 0;
        RunThreads(2, t =>
        {
            if (t == 0)
            {
                for (int round = 0; round < 200; round++)
                {
                    using PageAllocator churn = Leaks.NewAllocator(32 * 1024);
                    Page a = Alloc(churn, round % 4);
                    Page b = Alloc(churn, 3);
                    Assert.True(PageAllocator.TryGetPage(b.Address + 100, out Page found) && found == b);
                    churn.FreePages(b);
                    Assert.True(churn.Trim() >= 1);
                    churn.FreePages(a);
                    if (round % 2 == 0)
                    {
                        churn.Trim();
                    }
                }

                Volatile.Write(ref writerDone, 1);
            }
            else
            {
                // At least a fixed number of rounds, then until the writer is done.
                for (int i = 0; i < 20_000 || Volatile.Read(ref writerDone) == 0; i++)
                {
                    Page page = held[i % held.Count];
                    nint address = page.Address + (nint)((977L * i) % page.Length);
                    if (!PageAllocator.TryGetPage(address, out Page found) || found != page)
                    {
                        throw new InvalidOperationException($"lookup of 0x{address:x} in {page} gave {found}");
                    }

                    lookups++;
                }
            }
        });

        Assert.True(lookups >= 20_000);
        foreach (Page page in held)
        {
            reader.FreePages(page);
        }

        AssertClean(reader);
    }

    [Fact]
    public void Trim_and_stats_running_alongside_allocations_and_frees_corrupt_nothing()
    {
        const int opsPerWorker = 3000;
        using PageAllocator allocator = Leaks.NewAllocator(SmallArena, maxBytes: 8 * SmallArena);
        long successes = 0;
        int workersDone = 0;
        long trims = 0;
        long calls = 0;
        RunThreads(3, t =>
        {
            if (t == 2)
            {
                while (Volatile.Read(ref workersDone) < 2 && !_failed)
                {
                    // Both kinds: the idle trim's marks are read and cleared under the same lock as the takes.
                    trims += (++calls & 1) == 0 ? allocator.Trim() : allocator.Trim(idleOnly: true);
                    PageAllocatorStats stats = allocator.GetStats();
                    if (stats.TotalPages > 8 * 16 || stats.Arenas != stats.PagesPerArena.Count)
                    {
                        throw new InvalidOperationException($"impossible stats: {stats}");
                    }
                }

                return;
            }

            try
            {
                Work(t);
            }
            finally
            {
                // Also on failure, so that the trimming thread stops.
                Interlocked.Increment(ref workersDone);
            }
        });

        void Work(int t)
        {
            var random = new Random(99 + t);
            var mine = new List<(Page Page, long Stamp)>();
            long ok = 0;
            for (int i = 0; i < opsPerWorker; i++)
            {
                if (mine.Count > 0 && (mine.Count > 12 || random.Next(2) == 0))
                {
                    int k = random.Next(mine.Count);
                    CheckAndFree(allocator, mine[k].Page, mine[k].Stamp);
                    mine[k] = mine[^1];
                    mine.RemoveAt(mine.Count - 1);
                }
                else if (allocator.TryAllocPages(random.Next(5), AllocFlags.None, out Page page))
                {
                    ok++;
                    long stamp = ((long)t << 32) | (uint)i;
                    Stamp(page, stamp);
                    mine.Add((page, stamp));
                }
            }

            foreach ((Page page, long stamp) in mine)
            {
                CheckAndFree(allocator, page, stamp);
            }

            Interlocked.Add(ref successes, ok);
        }

        Assert.Equal(successes, allocator.GetStats().Allocations);
        AssertClean(allocator);
        allocator.Trim();
        PageAllocatorStats final = allocator.GetStats();
        Assert.Equal(0, final.Arenas);
        Assert.True(final.ArenasTrimmed >= trims);
    }

    private static void CheckAndFree(PageAllocator allocator, Page page, long stamp)
    {
        if (!HasStamp(page, stamp))
        {
            throw new InvalidOperationException($"{page} lost its stamp {stamp:x}: another owner wrote to it");
        }

        if (!PageAllocator.TryGetPage(page.Address + page.Length - 1, out Page found) || found != page)
        {
            throw new InvalidOperationException($"the last byte of {page} resolves to {found}");
        }

        if (page.RefCount < 1)
        {
            throw new InvalidOperationException($"{page} is held but has refcount {page.RefCount}");
        }

        allocator.FreePages(page);
    }

    /// <summary>Runs <paramref name="body"/> on real threads released together, and rethrows the first failure.</summary>
    private void RunThreads(int count, Action<int> body)
    {
        var errors = new ConcurrentQueue<Exception>();
        using var start = new Barrier(count);
        var threads = new Thread[count];
        for (int t = 0; t < count; t++)
        {
            int id = t;
            threads[t] = new Thread(() =>
            {
                try
                {
                    start.SignalAndWait();
                    body(id);
                }
                catch (Exception e)
                {
                    _failed = true;
                    errors.Enqueue(e);
                }
            });
            threads[t].IsBackground = true;
            threads[t].Start();
        }

        foreach (Thread thread in threads)
        {
            // Not a timing assertion: a guard so that a deadlock fails the run instead of hanging it.
            Assert.True(thread.Join(TimeSpan.FromMinutes(2)), "a worker thread did not finish (deadlock?)");
        }

        if (!errors.IsEmpty)
        {
            throw new AggregateException(errors);
        }
    }
}
