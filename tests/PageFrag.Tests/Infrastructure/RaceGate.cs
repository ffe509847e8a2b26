namespace PageFrag.Tests.Infrastructure;

/// <summary>
/// A spinning start gate for two-thread races: a second thread runs <c>second</c> each time the test thread
/// calls <see cref="Race"/>, and both leave the gate within nanoseconds of each other (a barrier would let one
/// of them run ahead by microseconds). Dispose stops and joins the second thread; check <see cref="Failure"/>
/// after it.
/// </summary>
internal sealed class RaceGate : IDisposable
{
    private readonly Thread _thread;
    private int _go;
    private int _done;
    private int _rounds;
    private Exception? _failure;

    public RaceGate(Action second)
    {
        _thread = new Thread(() =>
        {
            try
            {
                var spin = default(SpinWait);
                for (int round = 1; ; round++)
                {
                    int g;
                    while ((g = Volatile.Read(ref _go)) < round)
                    {
                        spin.SpinOnce(-1);
                    }

                    if (g == int.MaxValue)
                    {
                        return;
                    }

                    second();
                    Volatile.Write(ref _done, round);
                }
            }
            catch (Exception e)
            {
                Volatile.Write(ref _failure, e);
            }
        });
        _thread.Start();
    }

    /// <summary>What the second thread threw, which ended it; null while it runs.</summary>
    public Exception? Failure => Volatile.Read(ref _failure);

    /// <summary>
    /// Opens the gate for one round: the second thread runs its action while this thread runs
    /// <paramref name="first"/>; returns when both are done (or the second thread failed).
    /// </summary>
    public void Race(Action first)
    {
        _rounds++;
        Volatile.Write(ref _go, _rounds);
        first();
        var spin = default(SpinWait);
        while (Volatile.Read(ref _done) < _rounds && Failure is null)
        {
            spin.SpinOnce(-1);
        }
    }

    public void Dispose()
    {
        Volatile.Write(ref _go, int.MaxValue);
        _thread.Join();
    }
}
