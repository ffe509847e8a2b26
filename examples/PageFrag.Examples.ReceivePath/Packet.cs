using System.Buffers.Binary;
using PageFrag.Pool;

namespace PageFrag.Examples.ReceivePath;

/// <summary>
/// A received datagram: the pool buffers that hold it (an skb's frags), its length, and its truesize, which is
/// what a socket's receive budget should be charged.
/// </summary>
/// <remarks>Built on the receiving (owner) thread, consumed and freed on any thread.</remarks>
public readonly struct Packet
{
    private readonly PagePoolBuffer[] _fragments;

    private Packet(PagePoolBuffer[] fragments, int length, int trueSize)
    {
        _fragments = fragments;
        Length = length;
        TrueSize = trueSize;
    }

    /// <summary>Bytes of the datagram.</summary>
    public int Length { get; }

    /// <summary>Memory the packet keeps from reuse: the sum of its buffers' truesizes.</summary>
    public int TrueSize { get; }

    /// <summary>The buffers, in order.</summary>
    public ReadOnlySpan<PagePoolBuffer> Fragments => _fragments;

    /// <summary>Takes the buffers that received <paramref name="length"/> bytes; buffers left unused go straight back.</summary>
    public static Packet Take(List<PagePoolBuffer> buffers, int length)
    {
        int used = 0;
        int covered = 0;
        while (used < buffers.Count && covered < Math.Max(length, 1))
        {
            covered += buffers[used].Length;
            used++;
        }

        var fragments = new PagePoolBuffer[used];
        int trueSize = 0;
        for (int i = 0; i < buffers.Count; i++)
        {
            if (i < used)
            {
                fragments[i] = buffers[i];
                trueSize += buffers[i].TrueSize;
            }
            else
            {
                buffers[i].Free(); // on the owner thread: straight back into the pool's cache
            }
        }

        buffers.Clear();
        return new Packet(fragments, length, trueSize);
    }

    /// <summary>Writes the test pattern of datagram <paramref name="seq"/> into <paramref name="datagram"/>.</summary>
    public static void Fill(Span<byte> datagram, int seq)
    {
        BinaryPrimitives.WriteInt32LittleEndian(datagram, seq);
        BinaryPrimitives.WriteInt32LittleEndian(datagram[4..], datagram.Length);
        for (int i = 8; i < datagram.Length; i++)
        {
            datagram[i] = (byte)(seq + i);
        }
    }

    /// <summary>True when the bytes are the pattern the sender wrote.</summary>
    public bool Check()
    {
        if (Length < 8)
        {
            return false;
        }

        int position = 0;
        int seq = 0;
        int declared = 0;
        Span<byte> header = stackalloc byte[8];
        foreach (PagePoolBuffer f in _fragments)
        {
            ReadOnlySpan<byte> bytes = f.Span[..Math.Min(f.Length, Length - position)];
            for (int i = 0; i < bytes.Length; i++, position++)
            {
                if (position < 8)
                {
                    header[position] = bytes[i];
                    if (position == 7)
                    {
                        seq = BinaryPrimitives.ReadInt32LittleEndian(header);
                        declared = BinaryPrimitives.ReadInt32LittleEndian(header[4..]);
                    }
                }
                else if (bytes[i] != (byte)(seq + position))
                {
                    return false;
                }
            }
        }

        return declared == Length;
    }

    /// <summary>Frees every buffer of the packet (any thread).</summary>
    public void Free()
    {
        foreach (PagePoolBuffer f in _fragments)
        {
            f.Free();
        }
    }
}
