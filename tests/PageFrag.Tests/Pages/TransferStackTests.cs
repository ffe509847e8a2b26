using System.Collections.Concurrent;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;
using static PageFrag.Tests.Pages.PageTestKit;

namespace PageFrag.Tests.Pages;

/// <summary>
/// Order-3 blocks a per-CPU list spills go to the allocator's transfer stack, where another CPU's refill takes
/// them without the buddy lists (issue 14 item 4).
/// </summary>
public class TransferStackTests
{
    [Fact]
    public void Order_3_blocks_spilled_beyond_the_high_mark_wait_on_the_transfer_stack_and_count_as_cached()
    {
        using PageAllocator allocator = OneArena(4 << 20);
        var pages = new List<Page>();
        for (int i = 0; i < 64; i++)
        {
            pages.Add(Alloc(allocator, 3));
        }

        foreach (Page p in pages)
        {
            allocator.FreePages(p);
        }

        int transferred = allocator.TransferStackBlocks;
        Assert.InRange(transferred, 4, 32);
        PageAllocatorStats stats = allocator.GetStats();
        Assert.True(stats.IsConsistent);
        Assert.True(stats.CachedPages >= transferred * 8L);

        // A block parked there is free: refused by FreePages, found again by allocations.
        Assert.Throws<PageFragDoubleFreeException>(() => allocator.FreePages(pages[^1]));
        pages.Clear();
        for (int i = 0; i < 64; i++)
        {
            Page p = Alloc(allocator, 3);
            Assert.Equal(0, p.Address % (32 * 1024));
            pages.Add(p);
        }

        foreach (Page p in pages)
        {
            allocator.FreePages(p);
        }

        AssertClean(allocator);
        Assert.Equal(0, allocator.TransferStackBlocks);
    }

    [Fact]
    public void The_transfer_stack_holds_one_batch_per_cpu_and_at_most_32_blocks()
    {
        int expected = Math.Clamp(4 * Environment.ProcessorCount, 4, 32);
        using PageAllocator allocator = OneArena(4 << 20);
        Assert.Equal(expected, allocator.TransferStackCapacity);

        // 128 order-3 blocks (the whole arena) freed at once: the per-CPU lists keep at most their high mark each, the
        // transfer stack at most its capacity, and everything beyond goes back to the buddy lists, where it is free
        // memory that DiscardFreeMemory can give back.
        var pages = new List<Page>();
        for (int i = 0; i < 128; i++)
        {
            pages.Add(Alloc(allocator, 3));
        }

        foreach (Page p in pages)
        {
            allocator.FreePages(p);
        }

        Assert.InRange(allocator.TransferStackBlocks, 4, expected);
        long kept = allocator.GetStats().CachedPages;
        long most = ((long)Environment.ProcessorCount * PageAllocator.PerCpuHighMark(3) + expected) * 8;
        Assert.InRange(kept, 8, most);
        AssertClean(allocator);
    }

    [Fact]
    public void Dispose_forgets_the_blocks_on_the_transfer_stack_so_the_stats_add_up()
    {
        PageAllocator allocator = OneArena(4 << 20);
        var pages = new List<Page>();
        for (int i = 0; i < 48; i++)
        {
            pages.Add(Alloc(allocator, 3));
        }

        foreach (Page p in pages)
        {
            allocator.FreePages(p);
        }

        Assert.True(allocator.TransferStackBlocks > 0);
        allocator.Dispose();
        Assert.Equal(0, allocator.TransferStackBlocks);
        PageAllocatorStats stats = allocator.GetStats();
        Assert.True(stats.IsConsistent);
        Assert.Equal(0, stats.CachedPages);
        Assert.Equal(0, stats.PagesInUse);
    }

    [Fact]
    public void Pages_allocated_on_one_thread_and_freed_on_another_cycle_without_loss()
    {
        using PageAllocator allocator = Leaks.NewAllocator(4 << 20, maxBytes: 8 << 20);
        using var handOver = new BlockingCollection<Page>(boundedCapacity: 256);
        using var start = new Barrier(2);
        var stopAt = DateTime.UtcNow.AddSeconds(1.5);
        long allocated = 0;
        long freed = 0;
        Exception? failure = null;

        var producer = new Thread(() =>
        {
            try
            {
                start.SignalAndWait();
                while (DateTime.UtcNow < stopAt)
                {
                    for (int i = 0; i < 64; i++)
                    {
                        if (allocator.TryAllocPages(3, AllocFlags.None, out Page p))
                        {
                            p.Span[0] = 1;
                            p.Span[^1] = 2;
                            handOver.Add(p);
                            allocated++;
                        }
                    }
                }
            }
            catch (Exception e)
            {
                failure ??= e;
            }
            finally
            {
                handOver.CompleteAdding();
            }
        });

        var consumer = new Thread(() =>
        {
            try
            {
                start.SignalAndWait();
                foreach (Page p in handOver.GetConsumingEnumerable())
                {
                    Assert.Equal(1, p.RefCount);
                    allocator.FreePages(p);
                    freed++;
                }
            }
            catch (Exception e)
            {
                failure ??= e;
                foreach (Page p in handOver.GetConsumingEnumerable())
                {
                    allocator.FreePages(p);
                }
            }
        });

        producer.Start();
        consumer.Start();
        producer.Join();
        consumer.Join();
        Assert.Null(failure);
        Assert.True(allocated > 0);
        Assert.Equal(allocated, freed);
        AssertClean(allocator);
    }
}
