using System.Diagnostics;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;

namespace PageFrag.Tests.Review;

/// <summary>
/// Review of session 5: without a limit, <see cref="PageAllocator.PagesInUse"/> is a sum of per-CPU slots read one
/// after the other. A page allocated on one core and freed on another while a reader sums can make the reader see
/// the free without the allocation: the count reads below the pages really held (below zero when none is held).
/// </summary>
public class PerCpuCounterAttackTests
{
    [Fact]
    public void PagesInUse_never_reads_below_the_pages_held_while_pages_move_between_threads()
    {
        using PageAllocator allocator = Leaks.NewAllocator(1 << 20);
        Page slot = default;
        int full = 0, stop = 0, producerDone = 0;
        long moved = 0;
        Exception? failure = null;
        using var start = new Barrier(3);
        var producer = new Thread(() =>
        {
            try
            {
                start.SignalAndWait();
                while (Volatile.Read(ref stop) == 0)
                {
                    if (Volatile.Read(ref full) == 0)
                    {
                        Assert.True(allocator.TryAllocPages(0, AllocFlags.None, out Page page));
                        slot = page;
                        Volatile.Write(ref full, 1);
                    }
                }
            }
            catch (Exception e)
            {
                failure = e;
                Volatile.Write(ref stop, 1);
            }
            finally
            {
                Volatile.Write(ref producerDone, 1);
            }
        });
        var consumer = new Thread(() =>
        {
            start.SignalAndWait();
            // Until the producer has ended and its last page is freed: it may allocate once more after this thread
            // sees the stop flag (it read the flag before it was set).
            while (Volatile.Read(ref producerDone) == 0 || Volatile.Read(ref full) != 0)
            {
                if (Volatile.Read(ref full) != 0)
                {
                    allocator.FreePages(slot);
                    moved++;
                    Volatile.Write(ref full, 0);
                }
            }
        });
        producer.Start();
        consumer.Start();
        start.SignalAndWait();
        long min = long.MaxValue;
        var clock = Stopwatch.StartNew();
        // The budget, but until more than 100 pages moved (three spinning threads on a loaded 2-core machine moved
        // fewer in it once), and never more than 30 s.
        while ((clock.ElapsedMilliseconds < 1500 || Volatile.Read(ref moved) <= 100) && clock.ElapsedMilliseconds < 30_000 && Volatile.Read(ref stop) == 0)
        {
            // At most one page is held at any time (the producer allocates only while the slot is empty).
            min = Math.Min(min, allocator.PagesInUse);
        }

        Volatile.Write(ref stop, 1);
        producer.Join();
        consumer.Join();
        Assert.Null(failure);
        Assert.True(moved > 100, $"only {moved} pages moved");
        allocator.DrainPerCpuLists();
        Leaks.AssertNone(allocator);
        Assert.True(min >= 0, $"PagesInUse read {min} while at most one page was held and none was freed twice");
    }
}
