using System.Collections.Concurrent;
using PageFrag.Frag;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;

namespace PageFrag.Tests.Frag;

/// <summary>
/// Session 6 attack: fragments that start on 4 KiB page starts keep their state byte in the arena's dense table
/// (<see cref="Arena.StateIndex"/>), and the cache counts other threads' freed marks from its list of the first 64
/// starts or, past 64, by scanning the page. Neither way may miss a mark on a page start or count one twice: a missed
/// mark is a page kept for good, a mark counted twice a page handed out while a fragment on it is live.
/// </summary>
public class PageStartMarkTests
{
    [Theory]
    [InlineData(63)]
    [InlineData(64)]
    [InlineData(65)]
    [InlineData(66)]
    [InlineData(200)]
    [InlineData(512)]
    [InlineData(1500)]
    public void Marks_left_on_page_starts_are_counted_once_whether_the_cache_kept_the_starts_or_scans(int count)
    {
        using PageAllocator allocator = Leaks.NewAllocator(1 << 20);
        var addresses = new nint[count];
        using (var cache = new PageFragCache(allocator))
        {
            // 64-byte fragments: every 64th starts on a 4 KiB page start, whose state byte is in the dense table.
            for (int i = 0; i < count; i++)
            {
                Assert.True(cache.TryAlloc(64, out PageFragment f));
                addresses[i] = f.Address;
            }

            // Another thread frees them all by address while the cache still carves the last page: marks.
            var t = new Thread(() =>
            {
                foreach (nint a in addresses)
                {
                    PageFragCache.Free(a);
                }
            });
            t.Start();
            t.Join();

            foreach (nint a in (nint[])[addresses[0], addresses[^1], addresses[Math.Min(64, count - 1)]])
            {
                Assert.Throws<PageFragDoubleFreeException>(() => PageFragCache.Free(a));
            }

            // The next allocation still works on the page (its bytes follow the freed ones), then the cache leaves.
            Assert.True(cache.TryAlloc(64, out PageFragment after));
            PageFragCache.Free(after);
            cache.Drain();
        }

        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_thread_freeing_page_start_fragments_by_address_while_the_cache_carves_and_leaves_pages_loses_none()
    {
        using PageAllocator allocator = Leaks.NewAllocator(1 << 20);
        var queue = new ConcurrentQueue<nint>();
        long produced = 0, freed = 0;
        var stop = new ManualResetEventSlim();
        Exception? failure = null;
        using var gate = new Barrier(2);
        var consumer = new Thread(() =>
        {
            try
            {
                gate.SignalAndWait();
                while (!stop.IsSet || !queue.IsEmpty)
                {
                    if (queue.TryDequeue(out nint a))
                    {
                        PageFragCache.Free(a);
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

        using (var cache = new PageFragCache(allocator))
        {
            gate.SignalAndWait();
            var until = DateTime.UtcNow.AddSeconds(1);
            int[] sizes = [64, 4096, 8, 4032, 2048, 12, 128];
            for (int i = 0; DateTime.UtcNow < until && failure is null; i++)
            {
                // Sizes that put starts on page starts often (4096, 64 + 4032, 2048), mixed with small ones; a short
                // backlog keeps many frees on pages the cache still holds.
                if (queue.Count > 256)
                {
                    Thread.SpinWait(20);
                    continue;
                }

                if (cache.TryAlloc(sizes[i % sizes.Length], out PageFragment f))
                {
                    queue.Enqueue(f.Address);
                    produced++;
                }
            }

            stop.Set();
            Assert.True(consumer.Join(TimeSpan.FromSeconds(10)), "the freeing thread did not end");
            cache.Drain();
        }

        Assert.Null(failure);
        Assert.Equal(produced, freed);
        Assert.True(produced > 1000, $"only {produced} fragments in a second");
        Leaks.AssertNone(allocator);
    }
}
