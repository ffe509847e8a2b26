namespace PageFrag.Cli;

/// <summary>The process exit codes of every <c>pagefrag</c> command.</summary>
internal static class ExitCodes
{
    public const int Success = 0;

    /// <summary>The command ran and found a problem: watchdog, leak, wrong address.</summary>
    public const int Failure = 1;

    /// <summary>The command line was wrong: unknown option, value out of range.</summary>
    public const int Usage = 2;
}
