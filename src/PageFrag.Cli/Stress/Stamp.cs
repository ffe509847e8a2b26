using System.Buffers;
using System.Buffers.Binary;

namespace PageFrag.Cli.Stress;

/// <summary>
/// Marks every buffer with what only its holder may have written, and checks the mark before the buffer is
/// freed: a buffer that shares bytes with another live one (an overlap), or that someone wrote after it was
/// freed and handed out again, no longer carries its own mark.
/// </summary>
/// <remarks>
/// A buffer's mark: its id in the first 8 bytes (when it has 8), every other byte a value derived from the id.
/// A message written through the buffer writer carries a pattern that depends on the position too, so a
/// segment put in the wrong place of a chain is caught as well.
/// </remarks>
internal static class Stamp
{
    /// <summary>The fill byte of <paramref name="id"/>; never 0, so untouched fresh memory does not pass.</summary>
    public static byte Fill(long id) => (byte)(((ulong)id * 0x9E3779B97F4A7C15UL >> 56) | 1);

    public static void Write(Span<byte> span, long id)
    {
        span.Fill(Fill(id));
        if (span.Length >= 8)
        {
            BinaryPrimitives.WriteInt64LittleEndian(span, id);
        }
    }

    /// <summary>Fills bytes that extend a stamped buffer (a coalesced commit).</summary>
    public static void Extend(Span<byte> tail, long id) => tail.Fill(Fill(id));

    /// <summary>True when <paramref name="span"/> still carries the mark of <paramref name="id"/>.</summary>
    public static bool Check(ReadOnlySpan<byte> span, long id)
    {
        byte fill = Fill(id);
        if (span.Length >= 8 && BinaryPrimitives.ReadInt64LittleEndian(span) == id)
        {
            return !span[8..].ContainsAnyExcept(fill);
        }

        return !span.ContainsAnyExcept(fill);
    }

    /// <summary>The byte a message of <paramref name="id"/> has at <paramref name="position"/>.</summary>
    public static byte At(long id, long position) => (byte)(Fill(id) + position * 7 + (position >> 8));

    public static void WritePattern(Span<byte> span, long id, long start)
    {
        for (int i = 0; i < span.Length; i++)
        {
            span[i] = At(id, start + i);
        }
    }

    /// <summary>Checks a whole message; <paramref name="badAt"/> is the first wrong position, or -1.</summary>
    public static bool CheckPattern(in ReadOnlySequence<byte> sequence, long id, out long badAt)
    {
        long position = 0;
        foreach (ReadOnlyMemory<byte> segment in sequence)
        {
            ReadOnlySpan<byte> span = segment.Span;
            for (int i = 0; i < span.Length; i++)
            {
                if (span[i] != At(id, position + i))
                {
                    badAt = position + i;
                    return false;
                }
            }

            position += span.Length;
        }

        badAt = -1;
        return true;
    }
}
