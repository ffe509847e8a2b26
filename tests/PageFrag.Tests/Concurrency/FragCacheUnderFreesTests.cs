using System.Buffers.Binary;
using System.Collections.Concurrent;
using PageFrag.Frag;
using PageFrag.Pages;
using PageFrag.Tests.Frag;
using PageFrag.Tests.Infrastructure;

namespace PageFrag.Tests.Concurrency;

/// <summary>
/// The cache's two sides at once: one owner allocating, committing, aborting, freeing locally, refilling and
/// reusing pages in place, while other threads free what it hands over. The race that matters is the owner
/// giving back its bias while the last fragments of the page are being freed: exactly one side must see the
/// count reach zero, and the page must then be reused or released exactly once. Fixed operation counts: each
/// test ends on its own in about a second.
/// </summary>
public class FragCacheUnderFreesTests
{
    // A short hand-off: fragments come back quickly, so pages are often entirely free when the owner leaves them.
    private const int InFlight = 48;

    [Theory]
    [InlineData(1, 31)]
    [InlineData(3, 32)]
    public void An_owner_refilling_and_reusing_pages_in_place_while_threads_free_keeps_every_count_exact(int freers, int seed)
    {
        using PageAllocator allocator = FragKit.NewAllocator(arenaSize: 1 << 20);
        long allocationsBefore = allocator.GetStats().Allocations;
        var cache = new PageFragCache(allocator);
        var run = new Handoff(freers);

        run.Start(() => Own(cache, run, operations: 80_000, seed));

        Assert.True(run.Handed > 40_000, $"only {run.Handed} fragments handed over");
        Assert.Equal(run.Handed, run.Freed);
        Assert.True(cache.PagesReused > 0, "no page was found entirely free and reused in place");
        Assert.True(cache.PagesAllocated > 1, "the cache never left its first page");

        // Every page the cache took came from the allocator exactly once, and every one of them came back.
        Assert.Equal(cache.PagesAllocated, allocator.GetStats().Allocations - allocationsBefore);
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void With_only_the_reserve_left_pfmemalloc_pages_are_never_reused_in_place_even_while_threads_free_them()
    {
        // 64 pages with the top 32 reserved; the ordinary half is taken, so every page the cache gets is pfmemalloc.
        using PageAllocator allocator = FragKit.NewAllocator(arenaSize: 256 * 1024, maxBytes: 256 * 1024, reserveBytes: 128 * 1024);
        var hog = new List<Page>();
        while (allocator.TryAllocPages(0, AllocFlags.None, out Page page))
        {
            hog.Add(page);
        }

        Assert.Equal(32, hog.Count);
        var cache = new PageFragCache(allocator, AllocFlags.MayUseReserve);
        var run = new Handoff(freers: 2);

        // Order-0 pages only, and at most 48 fragments of up to 1 KiB out: well within the 32 reserve pages.
        run.Start(() => Own(cache, run, operations: 30_000, seed: 33, onlyPfMemalloc: true, maxSize: 1024));

        Assert.Equal(run.Handed, run.Freed);
        Assert.Equal(0, cache.PagesReused);
        Assert.True(cache.PagesAllocated > 100, $"only {cache.PagesAllocated} pages taken");
        Assert.Equal(cache.PagesAllocated, allocator.GetStats().PfMemallocAllocations);

        foreach (Page page in hog)
        {
            allocator.FreePages(page);
        }

        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    private static void Own(PageFragCache cache, Handoff run, int operations, int seed, bool onlyPfMemalloc = false, int maxSize = 8192)
    {
        var random = new Random(seed);
        long id = 0;
        for (int op = 0; op < operations && run.Error is null; op++)
        {
            while (run.Count >= InFlight && run.Error is null)
            {
                Thread.Yield();
            }

            int kind = random.Next(100);
            int size = random.Next(100) < 70 ? random.Next(8, maxSize / 4 + 1) : random.Next(maxSize / 4 + 1, maxSize + 1);
            PageFragment f;
            if (kind < 60)
            {
                if (!cache.TryAlloc(size, out f))
                {
                    throw new InvalidOperationException($"a {size} B allocation failed");
                }
            }
            else
            {
                if (!cache.TryPrepare(size, out PreparedFragment prepared))
                {
                    throw new InvalidOperationException($"a {size} B preparation failed");
                }

                f = cache.Commit(prepared, random.Next(size, Math.Min(prepared.Size, size * 2) + 1));
            }

            if (onlyPfMemalloc && !cache.CurrentPage.IsPfMemalloc)
            {
                throw new InvalidOperationException("the cache got an ordinary page while only the reserve was left");
            }

            Write(f, ++id);
            if (kind % 10 == 0)
            {
                cache.Abort(f);
            }
            else if (kind % 10 == 1)
            {
                Check(f, id);
                cache.FreeLocal(f);
            }
            else
            {
                run.Add(f, id);
            }
        }
    }

    private static void Write(PageFragment f, long id)
    {
        Span<byte> span = f.Span;
        span.Fill((byte)id);
        BinaryPrimitives.WriteInt64LittleEndian(span, id);
    }

    private static void Check(PageFragment f, long id)
    {
        ReadOnlySpan<byte> span = f.Span;
        if (BinaryPrimitives.ReadInt64LittleEndian(span) != id || span[8..].ContainsAnyExcept((byte)id))
        {
            throw new InvalidOperationException($"{f} (id {id}) was overwritten while it was out");
        }
    }

    /// <summary>The owner's hand-off to the freeing threads, who check each fragment and free it.</summary>
    private sealed class Handoff(int freers)
    {
        private readonly ConcurrentQueue<(PageFragment Fragment, long Id)> _queue = new();
        private long _handed;
        private long _freed;
        private int _count;
        private volatile bool _done;
        private Exception? _error;

        public long Handed => Interlocked.Read(ref _handed);

        public long Freed => Interlocked.Read(ref _freed);

        public int Count => Volatile.Read(ref _count);

        public Exception? Error => Volatile.Read(ref _error);

        public void Add(PageFragment f, long id)
        {
            Interlocked.Increment(ref _count);
            Interlocked.Increment(ref _handed);
            _queue.Enqueue((f, id));
        }

        /// <summary>Runs the owner and the freers to the end; rethrows the first failure.</summary>
        public void Start(Action owner)
        {
            var threads = new List<Thread> { new(() => Guard(() => { owner(); _done = true; })) };
            for (int i = 0; i < freers; i++)
            {
                threads.Add(new Thread(() => Guard(Free)));
            }

            foreach (Thread t in threads)
            {
                t.Start();
            }

            foreach (Thread t in threads)
            {
                Assert.True(t.Join(TimeSpan.FromSeconds(60)), "a thread did not finish");
            }

            if (Error is Exception e)
            {
                throw new InvalidOperationException("A worker failed.", e);
            }

            Assert.True(_queue.IsEmpty);
        }

        private void Free()
        {
            var spin = default(SpinWait);
            while (_error is null)
            {
                if (_queue.TryDequeue(out var item))
                {
                    Check(item.Fragment, item.Id);

                    // Odd ids by address, even ones by handle: both paths race with the owner.
                    if ((item.Id & 1) == 1)
                    {
                        PageFragCache.Free(item.Fragment.Address);
                    }
                    else
                    {
                        item.Fragment.Free();
                    }

                    Interlocked.Increment(ref _freed);
                    Interlocked.Decrement(ref _count);
                }
                else if (_done && _queue.IsEmpty)
                {
                    return;
                }
                else
                {
                    spin.SpinOnce(sleep1Threshold: -1);
                }
            }
        }

        private void Guard(Action body)
        {
            try
            {
                body();
            }
            catch (Exception e)
            {
                Interlocked.CompareExchange(ref _error, e, null);
                _done = true;
            }
        }
    }
}
