namespace PageFrag.Diagnostics;

/// <summary>
/// Thrown by a <see cref="DiagnosticMemoryPool"/> when a buffer was written after it was given back: its
/// poison was found overwritten when it left the quarantine.
/// </summary>
public sealed class UseAfterFreeException : InvalidOperationException
{
    /// <summary>Creates the exception with a message that says which buffer and which byte.</summary>
    public UseAfterFreeException(string message) : base(message)
    {
    }
}
