namespace PageFrag.Cli.FragTest;

/// <summary>
/// What the coordinator and the two test threads share besides the ring: the abort flag and the first
/// failure. Any thread may read or set it.
/// </summary>
internal sealed class RunControl
{
    private volatile bool _aborted;
    private string? _failure;
    private bool _usageError;

    /// <summary>Set when the run must stop early; the loops read it only on their slow paths.</summary>
    public bool Aborted => _aborted;

    /// <summary>The first failure reported, or null.</summary>
    public string? Failure => Volatile.Read(ref _failure);

    /// <summary>True when the failure is the user's doing (e.g. a CPU that cannot be pinned): exit code 2.</summary>
    public bool IsUsageError => Volatile.Read(ref _usageError);

    /// <summary>Records a failure (the first one wins) and stops both loops.</summary>
    public void Fail(string message, bool usageError = false)
    {
        if (Interlocked.CompareExchange(ref _failure, message, null) is null)
        {
            Volatile.Write(ref _usageError, usageError);
        }

        _aborted = true;
    }
}

/// <summary>A check of the kernel test failed inside a loop ("wrong va", "wrong probed info").</summary>
internal sealed class FragTestFailureException(string message) : Exception(message);
