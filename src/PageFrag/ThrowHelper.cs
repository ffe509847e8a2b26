using System.Diagnostics.CodeAnalysis;

namespace PageFrag;

/// <summary>
/// Cold throw paths, kept out of the hot methods so that those stay small enough to inline.
/// </summary>
internal static class ThrowHelper
{
    [DoesNotReturn]
    public static void ArgumentOutOfRange(string paramName, object? actual, string message) =>
        throw new ArgumentOutOfRangeException(paramName, actual, message);

    [DoesNotReturn]
    public static void Argument(string paramName, string message) =>
        throw new ArgumentException(message, paramName);

    [DoesNotReturn]
    public static void InvalidOperation(string message) =>
        throw new InvalidOperationException(message);

    [DoesNotReturn]
    public static void ObjectDisposed(string name) =>
        throw new ObjectDisposedException(name);

    [DoesNotReturn]
    public static void EmptyHandle(string what) =>
        throw new InvalidOperationException($"The {what} is empty: it came from a failed or default allocation.");

    [DoesNotReturn]
    public static void DoubleFree(string detail) =>
        throw new PageFragDoubleFreeException(detail);
}

/// <summary>
/// Thrown when a fragment or page is freed more often than it was allocated, or freed after the page
/// that held it was already returned or reused. The allocator's counters are left as they were before
/// the offending call.
/// </summary>
public sealed class PageFragDoubleFreeException : InvalidOperationException
{
    /// <summary>Creates the exception with a message that says what was freed twice.</summary>
    public PageFragDoubleFreeException(string message) : base(message)
    {
    }
}
