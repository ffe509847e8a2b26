using System.Runtime.CompilerServices;

namespace PageFrag.Pages;

/// <summary>
/// Lock waits for paths that must not end half-done: a free that has uncharged its block and must put it on a list,
/// a drain or a dispose that has started to move pages, a pool's release that has claimed its owner's side. A
/// contended lock's wait can throw: <see cref="ThreadInterruptedException"/> when another thread calls
/// <see cref="Thread.Interrupt"/>, and <see cref="OutOfMemoryException"/> when the wait cannot create what it blocks
/// on (the monitor's sync block on .NET 8, the waiter event of <c>System.Threading.Lock</c>). Thrown there, the
/// exception would leave the path's work half-done: a block on no list, a count that never comes back, pages a
/// disposed owner keeps for ever. Here the wait goes on instead; an interrupt is noted and raised again for the
/// thread's next blocking call (<see cref="Arena.KeepInterrupt"/>), as <see cref="Arena.SpinOnceKeepingInterrupt"/>
/// does for spins.
/// </summary>
internal static class LockWait
{
    /// <summary>
    /// Takes <paramref name="gate"/>, waiting as long as it takes; an interrupt thrown by the wait (the lock is then
    /// not taken) is noted in <paramref name="interrupted"/> and the wait goes on. The caller raises it again with
    /// <see cref="Arena.KeepInterrupt"/> once its work is done. An uncontended lock costs what <c>lock</c> does.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void EnterKeepingInterrupt(Lock gate, ref bool interrupted)
    {
        if (!gate.TryEnter())
        {
            EnterSlow(gate, ref interrupted);
        }
    }

    /// <summary>
    /// <see cref="EnterKeepingInterrupt(Lock, ref bool)"/> for an object used as a monitor (released with
    /// <see cref="Monitor.Exit"/>).
    /// </summary>
    public static void EnterKeepingInterrupt(object monitor, ref bool interrupted)
    {
        while (true)
        {
            try
            {
                Monitor.Enter(monitor);
                return;
            }
            catch (ThreadInterruptedException)
            {
                interrupted = true;
            }
            catch (OutOfMemoryException)
            {
                Thread.Yield();
            }
        }
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void EnterSlow(Lock gate, ref bool interrupted)
    {
        while (true)
        {
            try
            {
                gate.Enter();
                return;
            }
            catch (ThreadInterruptedException)
            {
                interrupted = true;
            }
            catch (OutOfMemoryException)
            {
                // The wait could not create its sync block or event. Entering a lock nobody holds allocates nothing:
                // let the holder run, and try again.
                Thread.Yield();
            }
        }
    }
}
