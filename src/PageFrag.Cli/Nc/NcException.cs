namespace PageFrag.Cli.Nc;

/// <summary>
/// A failure that <c>pagefrag nc</c> reports to its user as one line on standard error, with no stack trace:
/// connection refused, address in use, unknown host, a closed standard output.
/// </summary>
internal sealed class NcException : Exception
{
    public NcException(string message, int exitCode = ExitCodes.Failure)
        : base(message)
    {
        ExitCode = exitCode;
    }

    public NcException(string message, Exception inner, int exitCode = ExitCodes.Failure)
        : base(message, inner)
    {
        ExitCode = exitCode;
    }

    /// <summary>The process exit code: <see cref="ExitCodes.Failure"/>, or <see cref="ExitCodes.Usage"/> for input the user got wrong.</summary>
    public int ExitCode { get; }
}

/// <summary>Standard output can no longer be written (its reader went away): the netcat stops with a message.</summary>
internal sealed class StdoutClosedException : IOException
{
    public StdoutClosedException(string reason, Exception? inner = null)
        : base($"standard output is closed ({reason})", inner)
    {
    }
}
