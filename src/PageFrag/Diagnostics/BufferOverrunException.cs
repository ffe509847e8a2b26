namespace PageFrag.Diagnostics;

/// <summary>
/// Thrown by <c>Dispose</c> of a <see cref="DiagnosticMemoryPool"/> buffer when its guard zone (see
/// <see cref="DiagnosticMemoryPoolOptions.GuardBytes"/>) was overwritten: something wrote past the end of
/// the buffer. The buffer has been given back when it is thrown.
/// </summary>
public sealed class BufferOverrunException : InvalidOperationException
{
    /// <summary>Creates the exception with a message that says which buffer and which byte.</summary>
    public BufferOverrunException(string message) : base(message)
    {
    }
}
