using System.Collections.Concurrent;
using PageFrag.Frag;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;

namespace PageFrag.Tests.Frag;

/// <summary>
/// The ownership model under real threads: one thread owns the allocation side, others free what it
/// hands over (the page_frag_test push/pop pair). Fixed operation counts, no timing.
/// </summary>
public class PageFragCacheConcurrencyTests
{
    // Like the selftest's 512-entry ring: the owner waits when this many fragments are in flight.
    private const int InFlight = 512;

    [Theory]
    [InlineData(1, 60_000, 11)]
    [InlineData(2, 60_000, 12)]
    public void An_owner_allocating_while_other_threads_free_its_fragments_corrupts_and_leaks_nothing(int freers, int operations, int seed)
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        long allocationsBefore = allocator.GetStats().Allocations;
        var cache = new PageFragCache(allocator);
        var run = new Run();

        var threads = new List<Thread> { new(() => run.Guard(() => Own(cache, run, operations, seed))) };
        for (int i = 0; i < freers; i++)
        {
            threads.Add(new Thread(() => run.Guard(() => Free(run))));
        }

        foreach (Thread t in threads)
        {
            t.Start();
        }

        foreach (Thread t in threads)
        {
            Assert.True(t.Join(TimeSpan.FromSeconds(60)), "a thread did not finish");
        }

        if (run.Error is not null)
        {
            throw new InvalidOperationException("A worker failed.", run.Error);
        }

        Assert.True(run.Queue.IsEmpty);
        Assert.True(run.Handed > operations / 2, $"only {run.Handed} fragments handed over");
        Assert.Equal(run.Handed, run.Freed);
        Assert.Equal(run.Handed, run.FreedByAddress + run.FreedByHandle);
        Assert.True(run.FreedByAddress > 0 && run.FreedByHandle > 0);
        Assert.True(run.Aborted > 0 && run.Coalesced > 0);

        cache.Drain();
        PageAllocatorStats stats = allocator.GetStats();
        Assert.Equal(cache.PagesAllocated, stats.Allocations - allocationsBefore);
        Leaks.AssertNone(allocator);
    }

    private static void Own(PageFragCache cache, Run run, int operations, int seed)
    {
        var random = new Random(seed);
        for (int op = 0; op < operations && run.Error is null; op++)
        {
            while (run.Queue.Count >= InFlight && run.Error is null)
            {
                Thread.Yield();
            }

            int kind = random.Next(100);
            PageFragment f;
            if (kind < 35)
            {
                int size = random.Next(1, 2049);
                if (!cache.TryAlloc(size, out f))
                {
                    throw new InvalidOperationException($"a {size} B allocation failed with unlimited memory");
                }
            }
            else if (kind < 50)
            {
                int alignment = 1 << random.Next(0, 13);
                if (!cache.TryAlloc(random.Next(1, 1500), alignment, out f))
                {
                    throw new InvalidOperationException("an aligned allocation failed");
                }

                Check(f.Address % alignment == 0, "misaligned fragment");
            }
            else if (kind < 65)
            {
                int min = random.Next(1, 512);
                if (!cache.TryPrepare(min, random.Next(2) == 0 ? 1 : 64, out PreparedFragment prepared))
                {
                    throw new InvalidOperationException("prepare failed");
                }

                int used = Math.Min(prepared.Size, min + random.Next(0, 1024));
                f = cache.Commit(prepared, used);
            }
            else if (kind < 77)
            {
                if (!cache.TryAlloc(random.Next(1, 300), out f))
                {
                    throw new InvalidOperationException("allocation failed");
                }

                if (cache.TryProbe(random.Next(1, 200), out PreparedFragment probed))
                {
                    // A fragment under 8 bytes consumed a whole granule and cannot be extended.
                    if (cache.TryCommitNoRef(probed, Math.Min(probed.Size, random.Next(1, 400)), ref f))
                    {
                        run.Coalesced++;
                    }
                }
            }
            else if (kind < 87)
            {
                int offset = cache.Offset;
                long refills = cache.PagesAllocated + cache.PagesReused;
                if (!cache.TryAlloc(random.Next(8, 700), 1 << random.Next(0, 7), out PageFragment aborted))
                {
                    throw new InvalidOperationException("allocation failed");
                }

                bool refilled = cache.PagesAllocated + cache.PagesReused != refills;
                cache.Abort(aborted);
                Check(cache.Offset == aborted.PageOffset + 8 && (refilled || aborted.PageOffset >= offset), "abort did not rewind the offset to past the start granule");
                run.Aborted++;
                continue;
            }
            else if (kind < 92)
            {
                // Prepare and use nothing.
                _ = cache.TryPrepare(random.Next(1, 4096), out _);
                continue;
            }
            else if (kind < 99)
            {
                // Outside the contract's 4 KiB: fine on an order-3 page, refused on an order-0 one.
                if (!cache.TryAlloc(5000, out f))
                {
                    Check(cache.CurrentPageSize == PageConstants.PageSize, "an over-page request failed on an order-3 page");
                    continue;
                }
            }
            else
            {
                cache.Drain();
                continue;
            }

            FragKit.Fill(f, op);
            run.Queue.Enqueue(new Handover(f, op));
            run.Handed++;
        }

        Volatile.Write(ref run.OwnerDone, true);
    }

    private static void Free(Run run)
    {
        while (run.Error is null)
        {
            if (!run.Queue.TryDequeue(out Handover h))
            {
                if (Volatile.Read(ref run.OwnerDone) && run.Queue.IsEmpty)
                {
                    return;
                }

                Thread.Yield();
                continue;
            }

            // Written by the owner before the handover; any later write is another fragment overlapping.
            Check(FragKit.IsIntact(h.Fragment, h.Seed), $"{h.Fragment} was overwritten while in flight");
            if (h.Seed % 3 == 0)
            {
                PageFragCache.Free(h.Fragment.Address);
                Interlocked.Increment(ref run.FreedByAddress);
            }
            else
            {
                h.Fragment.Free();
                Interlocked.Increment(ref run.FreedByHandle);
            }

            Interlocked.Increment(ref run.Freed);
        }
    }

    private static void Check(bool condition, string message)
    {
        if (!condition)
        {
            throw new InvalidOperationException(message);
        }
    }

    private readonly record struct Handover(PageFragment Fragment, int Seed);

    private sealed class Run
    {
        public readonly ConcurrentQueue<Handover> Queue = new();
        public bool OwnerDone;
        public long Handed;
        public long Freed;
        public long FreedByAddress;
        public long FreedByHandle;
        public long Aborted;
        public long Coalesced;
        private Exception? _error;

        public Exception? Error => Volatile.Read(ref _error);

        public void Guard(Action body)
        {
            try
            {
                body();
            }
            catch (Exception e)
            {
                Interlocked.CompareExchange(ref _error, e, null);
            }
        }
    }
}
