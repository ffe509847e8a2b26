using System.Buffers;
using System.Buffers.Binary;
using System.IO.Pipelines;
using BenchmarkDotNet.Attributes;
using Microsoft.IO;
using PageFrag.Buffers;

namespace PageFrag.Benchmarks;

/// <summary>
/// <c>pagefrag bench</c>'s scenario 4 under BenchmarkDotNet: serialize <see cref="Messages"/> small messages
/// (10 to 300 bytes: a 2-byte length, then the payload) through <see cref="IBufferWriter{T}"/> into one
/// sequence, read its last byte, release it. Every writer is created once and reused, as a server would;
/// figures are per message. <see cref="ArrayBufferWriter{T}"/> is the baseline.
/// </summary>
/// <remarks>
/// The sequence is about 155 bytes per message: 4096 messages fill about twenty 32 KiB pages; a
/// <see cref="FragmentChain"/> keeps the segment objects it used, so the PageFrag writer allocates nothing once warm.
/// The <see cref="Pipe"/> has the default pool (which rents from <c>ArrayPool&lt;byte&gt;.Shared</c>) and never
/// pauses the writer, since nothing reads until the sequence is complete.
/// </remarks>
[MemoryDiagnoser]
public class WriterBenchmarks : FragCacheBenchmark
{
    private int[] _sizes = [];
    private long _total;
    private FragBufferWriter? _fragWriter;
    private readonly ArrayBufferWriter<byte> _arrayWriter = new();
    private readonly RecyclableMemoryStreamManager _rms = new();
    private readonly Pipe _pipe = new(new PipeOptions(pauseWriterThreshold: 0, resumeWriterThreshold: 0, useSynchronizationContext: false));

    /// <summary>Messages per sequence.</summary>
    [Params(4096)]
    public int Messages { get; set; }

    internal override long ExpectedChecksum => _total + _sizes[0] + (byte)(Messages - 1);

    protected override void AfterSetup()
    {
        var random = new Random(42);
        _sizes = new int[Messages];
        _total = 0;
        for (int i = 0; i < _sizes.Length; i++)
        {
            _sizes[i] = random.Next(10, 301);
            _total += _sizes[i];
        }

        _fragWriter = new FragBufferWriter(Cache);
    }

    protected override void BeforeCleanup()
    {
        _fragWriter?.Dispose();
        _fragWriter = null;
    }

    [Benchmark(Baseline = true, OperationsPerInvoke = 4096)]
    public long ArrayBufferWriterSequence()
    {
        Serialize(_arrayWriter);
        long sum = Checksum(new ReadOnlySequence<byte>(_arrayWriter.WrittenMemory));
        _arrayWriter.ResetWrittenCount();
        return sum;
    }

    [Benchmark(OperationsPerInvoke = 4096)]
    public long PageFragWriterSequence()
    {
        FragBufferWriter writer = _fragWriter!;
        Serialize(writer);
        using FragmentChain chain = writer.Detach();
        return Checksum(chain.Sequence);
    }

    [Benchmark(OperationsPerInvoke = 4096)]
    public long RecyclableMemoryStreamSequence()
    {
        using RecyclableMemoryStream stream = _rms.GetStream("pagefrag-benchmarks");
        Serialize(stream);
        return Checksum(stream.GetReadOnlySequence());
    }

    [Benchmark(OperationsPerInvoke = 4096)]
    public long PipeSequence()
    {
        Serialize(_pipe.Writer);
        ValueTask<FlushResult> flush = _pipe.Writer.FlushAsync();
        if (!flush.IsCompletedSuccessfully || !_pipe.Reader.TryRead(out ReadResult result))
        {
            throw new InvalidOperationException("The pipe did not flush at once although its writer never pauses.");
        }

        _ = flush.Result;
        long sum = Checksum(result.Buffer);
        _pipe.Reader.AdvanceTo(result.Buffer.End);
        _pipe.Writer.Complete();
        _pipe.Reader.Complete();
        _pipe.Reset();
        return sum;
    }

    private void Serialize(IBufferWriter<byte> output)
    {
        int[] sizes = _sizes;
        for (int i = 0; i < sizes.Length; i++)
        {
            int size = sizes[i];
            Span<byte> span = output.GetSpan(size);
            BinaryPrimitives.WriteUInt16LittleEndian(span, (ushort)size);
            span.Slice(2, size - 2).Fill((byte)i);
            output.Advance(size);
        }
    }

    /// <summary>The length, the first message's length field and the last byte: all writers must agree.</summary>
    private static long Checksum(ReadOnlySequence<byte> sequence)
    {
        ReadOnlySpan<byte> first = sequence.FirstSpan;
        ReadOnlySequence<byte> last = sequence.Slice(sequence.Length - 1);
        return sequence.Length + BinaryPrimitives.ReadUInt16LittleEndian(first) + last.FirstSpan[0];
    }
}
