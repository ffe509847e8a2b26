using System.Diagnostics.CodeAnalysis;

namespace PageFrag.Buffers;

/// <summary>
/// Cold throw paths of the buffer adapters. Types and messages follow what .NET's own
/// <c>ArrayBufferWriter&lt;T&gt;</c> and <c>MemoryPool&lt;byte&gt;.Shared</c> throw in the same case, so code
/// written against those keeps catching the same exceptions.
/// </summary>
internal static class BufferThrowHelper
{
    [DoesNotReturn]
    public static void NegativeSizeHint(int sizeHint) =>
        throw new ArgumentException($"sizeHint must be zero or positive, but was {sizeHint}.", nameof(sizeHint));

    [DoesNotReturn]
    public static void SizeHintTooLarge(int sizeHint, int max) =>
        throw new ArgumentOutOfRangeException(nameof(sizeHint), sizeHint, $"sizeHint must be at most {max} bytes (Array.MaxLength, the largest buffer .NET can allocate).");

    [DoesNotReturn]
    public static void NegativeAdvance(int count) =>
        throw new ArgumentException($"count must be zero or positive, but was {count}.", nameof(count));

    [DoesNotReturn]
    public static void AdvancedTooFar(int capacity) =>
        throw new InvalidOperationException($"Cannot advance past the end of the buffer, which has a size of {capacity}.");

    [DoesNotReturn]
    public static void RentSize(int minBufferSize, int maxBufferSize) =>
        throw new ArgumentOutOfRangeException(nameof(minBufferSize), minBufferSize, $"minBufferSize must be -1 (the default size) or between 0 and MaxBufferSize ({maxBufferSize}).");

    [DoesNotReturn]
    public static void OutOfPages(long bytes) =>
        throw new InsufficientMemoryException($"The PageAllocator could not supply {bytes} bytes: its memory limit is reached or an allocation fault was injected.");

    [DoesNotReturn]
    public static void Disposed(string objectName) =>
        throw new ObjectDisposedException(objectName);

    [DoesNotReturn]
    public static void Disposed(string objectName, string message) =>
        throw new ObjectDisposedException(objectName, message);
}
