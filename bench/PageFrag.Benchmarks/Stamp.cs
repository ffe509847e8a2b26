using System.Runtime.CompilerServices;

namespace PageFrag.Benchmarks;

/// <summary>
/// What every variant does with its buffer, so that they all do the same work and give the same answer:
/// write a byte at both ends when the buffer is handed out, read both back (with the length) before it
/// is given back. The sum is returned, so the JIT cannot drop the buffer, and the unit tests check it,
/// so a variant that hands out a short buffer, or two buffers that overlap, gives a wrong total.
/// </summary>
internal static class Stamp
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void Write(Span<byte> buffer, int i)
    {
        buffer[0] = (byte)i;
        buffer[^1] = (byte)i;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static long Read(ReadOnlySpan<byte> buffer) => buffer[0] + buffer[^1] + buffer.Length;

    /// <summary>The total of <see cref="Read"/> over buffers 0 to <paramref name="count"/> - 1 of <paramref name="size"/> bytes.</summary>
    public static long Expected(int count, int size)
    {
        long sum = 0;
        for (int i = 0; i < count; i++)
        {
            sum += 2 * (byte)i + size;
        }

        return sum;
    }
}
