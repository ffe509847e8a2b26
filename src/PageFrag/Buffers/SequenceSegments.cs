using System.Buffers;
using System.Runtime.InteropServices;

namespace PageFrag.Buffers;

/// <summary>
/// Conversions a socket needs: any <see cref="ReadOnlySequence{T}"/> of array-backed memory (PageFrag's
/// buffers always are) as the <c>IList&lt;ArraySegment&lt;byte&gt;&gt;</c> of a gather send. Stateless; any thread.
/// </summary>
public static class SequenceSegments
{
    /// <summary>
    /// Appends one array segment per non-empty segment of <paramref name="sequence"/> to
    /// <paramref name="destination"/> (which is not cleared first). Allocates nothing when the list has room.
    /// </summary>
    /// <returns>The number of segments appended.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="destination"/> is null.</exception>
    /// <exception cref="ArgumentException">A segment is not backed by an array (native or custom memory).</exception>
    public static int CopyArraySegmentsTo(in ReadOnlySequence<byte> sequence, ICollection<ArraySegment<byte>> destination)
    {
        ArgumentNullException.ThrowIfNull(destination);
        int added = 0;
        foreach (ReadOnlyMemory<byte> memory in sequence)
        {
            if (!memory.IsEmpty)
            {
                destination.Add(ToArraySegment(memory));
                added++;
            }
        }

        return added;
    }

    internal static ArraySegment<byte> ToArraySegment(ReadOnlyMemory<byte> memory)
    {
        if (!MemoryMarshal.TryGetArray(memory, out ArraySegment<byte> segment))
        {
            throw new ArgumentException("A segment of the sequence is not backed by an array, so it cannot be sent as an ArraySegment.", "sequence");
        }

        return segment;
    }
}
