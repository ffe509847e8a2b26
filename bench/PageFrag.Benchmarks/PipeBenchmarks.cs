using System.Buffers;
using System.IO.Pipelines;
using BenchmarkDotNet.Attributes;
using PageFrag.Buffers;
using PageFrag.Pages;

namespace PageFrag.Benchmarks;

/// <summary>
/// Pipe throughput with the pool as the only difference: a burst of <see cref="Messages"/> messages of
/// <see cref="MessageSize"/> bytes is written through <c>GetSpan</c>/<c>Advance</c>, flushed, read and
/// consumed, on one thread. The pipe rents a segment (4096 bytes, its default minimum) whenever the last
/// one is full and returns it once the reader has consumed it, so every 4 KiB of data is one rent and
/// one return. <c>MemoryPool&lt;byte&gt;.Shared</c> (the pipe's default, backed by <c>ArrayPool</c>) is
/// the baseline.
/// </summary>
[MemoryDiagnoser]
public class PipeBenchmarks
{
    /// <summary>Messages per burst (and per benchmark call).</summary>
    public const int Messages = 16;

    private Pipe? _sharedPipe;
    private Pipe? _pageFragPipe;
    private PageFragMemoryPool? _pageFragPool;

    /// <summary>A small protocol message and a large response body.</summary>
    [Params(1024, 65536)]
    public int MessageSize { get; set; }

    /// <summary>Test hook: when set before <see cref="GlobalSetup"/>, PageFrag's pool takes its pages from here.</summary>
    internal PageAllocator? Allocator { get; set; }

    /// <summary>What every benchmark method returns for the current parameters: the sum of the bytes read.</summary>
    internal long ExpectedChecksum
    {
        get
        {
            long sum = 0;
            for (int m = 0; m < Messages; m++)
            {
                sum += (long)MessageSize * (byte)(m + 1);
            }

            return sum;
        }
    }

    /// <summary>PageFrag's pool (valid between set-up and clean-up).</summary>
    internal PageFragMemoryPool Pool => _pageFragPool!;

    [GlobalSetup]
    public void GlobalSetup()
    {
        _sharedPipe = NewPipe(MemoryPool<byte>.Shared);
        _pageFragPool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = Allocator });
        _pageFragPipe = NewPipe(_pageFragPool);
    }

    [GlobalCleanup]
    public void GlobalCleanup()
    {
        foreach (Pipe? pipe in (Pipe?[])[_sharedPipe, _pageFragPipe])
        {
            pipe?.Writer.Complete();
            pipe?.Reader.Complete();
        }

        _pageFragPool?.Dispose();
        _sharedPipe = _pageFragPipe = null;
        _pageFragPool = null;
    }

    [Benchmark(Baseline = true)]
    public long SharedPool() => Burst(_sharedPipe!, MessageSize);

    [Benchmark]
    public long PageFragPool() => Burst(_pageFragPipe!, MessageSize);

    private static Pipe NewPipe(MemoryPool<byte> pool) =>
        // A pause threshold of 0 never pauses the writer, so FlushAsync completes synchronously.
        new(new PipeOptions(pool: pool, pauseWriterThreshold: 0, resumeWriterThreshold: 0, useSynchronizationContext: false));

    private static long Burst(Pipe pipe, int messageSize)
    {
        PipeWriter writer = pipe.Writer;
        for (int m = 0; m < Messages; m++)
        {
            for (int done = 0; done < messageSize;)
            {
                Span<byte> span = writer.GetSpan(1);
                int n = Math.Min(span.Length, messageSize - done);
                span[..n].Fill((byte)(m + 1));
                writer.Advance(n);
                done += n;
            }
        }

        ValueTask<FlushResult> flush = writer.FlushAsync();
        if (!flush.IsCompletedSuccessfully)
        {
            throw new InvalidOperationException("The flush did not complete synchronously.");
        }

        PipeReader reader = pipe.Reader;
        if (!reader.TryRead(out ReadResult result))
        {
            throw new InvalidOperationException("The reader saw nothing after a flush.");
        }

        long sum = 0;
        foreach (ReadOnlyMemory<byte> segment in result.Buffer)
        {
            sum += Sum(segment.Span);
        }

        reader.AdvanceTo(result.Buffer.End);
        return sum;
    }

    private static long Sum(ReadOnlySpan<byte> span)
    {
        // Whole segments are filled with one value per message, so summing by runs keeps the read cheap
        // while still reading every byte.
        long sum = 0;
        while (!span.IsEmpty)
        {
            byte value = span[0];
            int run = span.IndexOfAnyExcept(value);
            if (run < 0)
            {
                run = span.Length;
            }

            sum += (long)run * value;
            span = span[run..];
        }

        return sum;
    }
}
