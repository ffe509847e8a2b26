using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;

namespace PageFrag.Tests.Pages;

/// <summary>
/// A free that drops a block's last reference owns the block until it is on a list. A <see cref="Thread.Interrupt"/>
/// while that free waits for a contended list lock must not end the free half-done (the block would be on no list and
/// owned by nobody: a leaked page): the free completes, and the interrupt reaches the thread's next blocking call.
/// </summary>
public class FreeInterruptTests
{
    [Theory]
    [InlineData(0)] // a per-CPU list's lock
    [InlineData(4)] // above the per-CPU orders: the buddy lock
    public void An_interrupt_while_a_free_waits_for_a_list_lock_is_kept_for_later_and_leaks_nothing(int order)
    {
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 256 * 1024);
        Assert.True(allocator.TryAllocPages(order, AllocFlags.None, out Page page));
        var locks = allocator.FreeLocksForTests();

        Exception? freeThrew = null;
        bool sleepInterrupted = false;
        var freer = new Thread(() =>
        {
            try
            {
                allocator.FreePages(page);
            }
            catch (Exception e)
            {
                freeThrew = e;
                return;
            }

            try
            {
                Thread.Sleep(1);
            }
            catch (ThreadInterruptedException)
            {
                sleepInterrupted = true;
            }
        });

        foreach (var gate in locks)
        {
            gate.Enter();
        }

        try
        {
            freer.Start();

            // Wait until the free blocks on a lock this thread holds, then interrupt it there.
            var deadline = DateTime.UtcNow.AddSeconds(10);
            while ((freer.ThreadState & ThreadState.WaitSleepJoin) == 0 && DateTime.UtcNow < deadline)
            {
                Thread.Yield();
            }

            Assert.True((freer.ThreadState & ThreadState.WaitSleepJoin) != 0, "the free never waited for a lock");
            freer.Interrupt();
            Thread.Sleep(50);
        }
        finally
        {
            foreach (var gate in locks)
            {
                gate.Exit();
            }
        }

        Assert.True(freer.Join(TimeSpan.FromSeconds(10)), "the free did not finish once the locks were free");
        Assert.Null(freeThrew);
        Assert.True(sleepInterrupted, "the interrupt was lost instead of reaching the thread's next blocking call");
        allocator.DrainPerCpuLists();
        Leaks.AssertNone(allocator);
        Assert.Equal(allocator.GetStats().TotalPages, allocator.GetStats().FreePages);
    }
}
