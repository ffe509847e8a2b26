namespace PageFrag.Pages;

/// <summary>
/// Makes a <see cref="PageAllocator"/> fail allocations on purpose, for tests and for the command line
/// tool (the kernel's fail_page_alloc). A failed allocation is reported exactly like running out of
/// memory: a <c>false</c> from the <c>Try…</c> method, nothing else changed.
/// </summary>
/// <remarks>Defaults: nothing fails.</remarks>
public sealed class FaultInjection
{
    private long _counter;

    /// <summary>Every allocation of this order or higher fails. Default <see cref="int.MaxValue"/> (never).</summary>
    public int FailOrderAtLeast { get; init; } = int.MaxValue;

    /// <summary>
    /// Every n-th allocation attempt fails (1 = every attempt). Default 0 (never). Counted over all
    /// orders, after <see cref="FailOrderAtLeast"/>.
    /// </summary>
    public int FailEveryNth
    {
        get => _failEveryNth;
        init
        {
            if (value < 0)
            {
                ThrowHelper.ArgumentOutOfRange(nameof(FailEveryNth), value, "FailEveryNth must be 0 (never) or positive.");
            }

            _failEveryNth = value;
        }
    }

    private readonly int _failEveryNth;

    /// <summary>How many allocations this object has failed so far.</summary>
    public long Injected => Interlocked.Read(ref _injected);

    private long _injected;

    internal bool ShouldFail(int order)
    {
        if (order >= FailOrderAtLeast)
        {
            Interlocked.Increment(ref _injected);
            return true;
        }

        if (_failEveryNth > 0 && Interlocked.Increment(ref _counter) % _failEveryNth == 0)
        {
            Interlocked.Increment(ref _injected);
            return true;
        }

        return false;
    }
}
