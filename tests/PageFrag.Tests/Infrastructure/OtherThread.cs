namespace PageFrag.Tests.Infrastructure;

/// <summary>
/// One long-lived background thread that runs actions synchronously for tests that need "a thread that is
/// not the owner" many times over (thousands of model steps): cheaper than a new thread per call.
/// </summary>
/// <remarks>Callers from several test threads take turns; an exception of the action is rethrown to the caller.</remarks>
internal static class OtherThread
{
    private static readonly Lock s_gate = new();
    private static readonly SemaphoreSlim s_start = new(0);
    private static readonly SemaphoreSlim s_done = new(0);
    private static Action? s_work;
    private static Exception? s_error;
    private static Thread? s_thread;

    /// <summary>The worker's managed thread id (starting it if needed).</summary>
    public static int ManagedThreadId
    {
        get
        {
            lock (s_gate)
            {
                return EnsureStarted().ManagedThreadId;
            }
        }
    }

    /// <summary>Runs <paramref name="action"/> on the worker and waits for it.</summary>
    public static void Run(Action action)
    {
        lock (s_gate)
        {
            EnsureStarted();
            s_work = action;
            s_error = null;
            s_start.Release();
            s_done.Wait();
            s_work = null;
            if (s_error is Exception e)
            {
                System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(e).Throw();
            }
        }
    }

    private static Thread EnsureStarted()
    {
        if (s_thread is null)
        {
            s_thread = new Thread(Loop) { IsBackground = true, Name = "PageFrag.Tests other thread" };
            s_thread.Start();
        }

        return s_thread;
    }

    private static void Loop()
    {
        while (true)
        {
            s_start.Wait();
            try
            {
                s_work!();
            }
            catch (Exception e)
            {
                s_error = e;
            }

            s_done.Release();
        }
    }
}
