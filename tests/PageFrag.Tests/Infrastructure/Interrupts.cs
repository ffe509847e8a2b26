#if NET9_0_OR_GREATER
using LibraryLock = System.Threading.Lock;
#else
using LibraryLock = PageFrag.MonitorLock;
#endif

namespace PageFrag.Tests.Infrastructure;

/// <summary>
/// Runs an action on a new thread while this thread holds locks it will wait for, interrupts it there
/// (<see cref="Thread.Interrupt"/>), lets the locks go and reports how the action ended: whether it threw, and
/// whether the interrupt was kept for the thread's next blocking call (a <see cref="Thread.Sleep(int)"/> after the
/// action) instead of lost.
/// </summary>
internal static class Interrupts
{
    /// <summary>How the interrupted action ended.</summary>
    public readonly record struct Outcome(Exception? Threw, bool InterruptKept);

    /// <summary>
    /// Holds <paramref name="held"/> (entered with <paramref name="enter"/>, left with <paramref name="exit"/>), starts
    /// <paramref name="action"/> on a new thread, waits until that thread blocks, interrupts it, waits a little, then
    /// lets the locks go and joins it.
    /// </summary>
    public static Outcome WhileBlocked<TLock>(TLock[] held, Action<TLock> enter, Action<TLock> exit, Action action)
    {
        Exception? threw = null;
        bool kept = false;
        bool started = false;
        var worker = new Thread(() =>
        {
            Volatile.Write(ref started, true);
            try
            {
                action();
            }
            catch (Exception e)
            {
                threw = e;
                return;
            }

            try
            {
                Thread.Sleep(1);
            }
            catch (ThreadInterruptedException)
            {
                kept = true;
            }
        });

        foreach (TLock gate in held)
        {
            enter(gate);
        }

        try
        {
            worker.Start();

            // Wait until the action blocks on a lock this thread holds, then interrupt it there.
            var deadline = DateTime.UtcNow.AddSeconds(10);
            while ((!Volatile.Read(ref started) || (worker.ThreadState & ThreadState.WaitSleepJoin) == 0) && DateTime.UtcNow < deadline)
            {
                Thread.Yield();
            }

            Assert.True((worker.ThreadState & ThreadState.WaitSleepJoin) != 0, "the action never waited");
            worker.Interrupt();
            Thread.Sleep(50);
        }
        finally
        {
            foreach (TLock gate in held)
            {
                exit(gate);
            }
        }

        Assert.True(worker.Join(TimeSpan.FromSeconds(10)), "the action did not finish once the locks were free");
        return new Outcome(threw, kept);
    }

    /// <summary><see cref="WhileBlocked{TLock}"/> for the library's locks.</summary>
    public static Outcome WhileBlocked(LibraryLock[] held, Action action) =>
        WhileBlocked(held, static g => g.Enter(), static g => g.Exit(), action);

    /// <summary>Asserts that the action completed and the interrupt reached the thread's next blocking call.</summary>
    public static void AssertCompletedAndKept(Outcome outcome)
    {
        Assert.Null(outcome.Threw);
        Assert.True(outcome.InterruptKept, "the interrupt was lost instead of reaching the thread's next blocking call");
    }
}
