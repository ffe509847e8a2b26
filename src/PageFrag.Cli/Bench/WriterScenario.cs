using System.Buffers;
using System.Buffers.Binary;
using System.Diagnostics;
using System.IO.Pipelines;
using System.Runtime.InteropServices;
using Microsoft.IO;
using PageFrag.Buffers;
using PageFrag.Frag;

namespace PageFrag.Cli.Bench;

/// <summary>
/// Scenario 4: serialize small messages (10 to 300 bytes, a 2-byte length then the payload) through
/// <see cref="IBufferWriter{T}"/> into one sequence, walk the sequence's segments (as a gather send
/// would), then release it. The figure is nanoseconds per message, the release included.
/// </summary>
/// <remarks>
/// Each writer is created once and reused from run to run, as a server would, so every peer is measured
/// warm: <see cref="ArrayBufferWriter{T}"/> keeps the capacity it grew to (its release is
/// <c>ResetWrittenCount</c>); a <see cref="RecyclableMemoryStream"/> comes from one manager with the
/// library's defaults and is disposed; the <see cref="Pipe"/> uses the default pool (which rents from
/// <c>ArrayPool&lt;byte&gt;.Shared</c>), never pauses the writer (<c>pauseWriterThreshold: 0</c>, since
/// nothing reads until the sequence is complete), and is reset after each sequence.
/// </remarks>
internal static partial class WriterScenario
{
    // CLOCK_THREAD_CPUTIME_ID: the CPU time of the calling thread, which a loaded machine does not inflate the way
    // it inflates wall time (the thread waiting for a core is not counted).
    private const int ClockThreadCpuTime = 3;

    public const int MinMessage = 10;
    public const int MaxMessage = 300;

    /// <summary>The message sizes, the same for every writer.</summary>
    public static int[] MessageSizes(int count, int seed)
    {
        var random = new Random(seed);
        int[] sizes = new int[count];
        for (int i = 0; i < sizes.Length; i++)
        {
            sizes[i] = random.Next(MinMessage, MaxMessage + 1);
        }

        return sizes;
    }

    /// <summary>Creates the writer a peer is measured with; dispose it after the last run.</summary>
    public static IWriterPeer Create(BenchPeer peer, PeerResources peers) => peer switch
    {
        BenchPeer.PageFrag => new FragWriterPeer(),
        BenchPeer.ArrayBufferWriter => new ArrayWriterPeer(),
        BenchPeer.RecyclableMemoryStream => new RmsPeer(peers.Rms),
        BenchPeer.Pipe => new PipePeer(),
        _ => throw new ArgumentOutOfRangeException(nameof(peer), peer, "Not a writer of scenario 4."),
    };

    public static RunFigures Run(IWriterPeer writer, int[] sizes, long totalBytes)
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();

        GcSnapshot before = GcSnapshot.Take();
        double cpuStart = ThreadCpuSeconds();
        long start = Stopwatch.GetTimestamp();
        IBufferWriter<byte> output = writer.Begin();
        Serialize(output, sizes);
        ReadOnlySequence<byte> sequence = writer.Complete();
        long length = sequence.Length;
        int segments = 0;
        int firstLength = 0;
        foreach (ReadOnlyMemory<byte> segment in sequence)
        {
            if (segments++ == 0 && segment.Length >= 2)
            {
                firstLength = BinaryPrimitives.ReadUInt16LittleEndian(segment.Span);
            }
        }

        writer.Release();
        long ticks = Stopwatch.GetTimestamp() - start;
        double cpu = ThreadCpuSeconds() - cpuStart;
        RunFigures figures = before.Since(Statistics.Seconds(ticks) * 1e9 / sizes.Length);
        if (length != totalBytes || firstLength != sizes[0])
        {
            throw new BenchFailureException($"the sequence holds {length} bytes starting with a length of {firstLength}, expected {totalBytes} bytes starting with {sizes[0]}.");
        }

        return figures with
        {
            Extra = double.IsNaN(cpu)
                ? [new("elapsed_s", Statistics.Seconds(ticks)), new("segments", segments), new("bytes", length)]
                :
                [
                    new("elapsed_s", Statistics.Seconds(ticks)), new("segments", segments), new("bytes", length),
                    new("thread_cpu_ns_per_message", cpu * 1e9 / sizes.Length),
                ],
        };
    }

    /// <summary>The bench thread's CPU time in seconds (Linux), or NaN where the clock is not available.</summary>
    private static double ThreadCpuSeconds()
    {
        if (!OperatingSystem.IsLinux() || ClockGetTime(ClockThreadCpuTime, out TimeSpec time) != 0)
        {
            return double.NaN;
        }

        return time.Seconds + (time.Nanoseconds / 1e9);
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct TimeSpec
    {
        public long Seconds;
        public long Nanoseconds;
    }

    [LibraryImport("libc", EntryPoint = "clock_gettime")]
    private static partial int ClockGetTime(int clock, out TimeSpec time);

    private static void Serialize(IBufferWriter<byte> output, int[] sizes)
    {
        for (int i = 0; i < sizes.Length; i++)
        {
            int size = sizes[i];
            Span<byte> span = output.GetSpan(size);
            BinaryPrimitives.WriteUInt16LittleEndian(span, (ushort)size);
            span.Slice(2, size - 2).Fill((byte)i);
            output.Advance(size);
        }
    }

    /// <summary>A writer under test: begin a sequence, complete it, release it; dispose at the end.</summary>
    internal interface IWriterPeer : IDisposable
    {
        public IBufferWriter<byte> Begin();

        public ReadOnlySequence<byte> Complete();

        public void Release();

        /// <summary>PageFrag: pages still in use after the writer was disposed and its cache drained.</summary>
        public long? LeakedPages { get; }
    }

    /// <summary>PageFrag's <see cref="FragBufferWriter"/>: <c>Detach</c> hands over a <see cref="FragmentChain"/>, disposed to release.</summary>
    private sealed class FragWriterPeer : IWriterPeer
    {
        private readonly PrivatePages _pages = new();
        private readonly PageFragCache _cache;
        private readonly FragBufferWriter _writer;
        private FragmentChain? _chain;

        public FragWriterPeer()
        {
            _cache = new PageFragCache(_pages.Allocator);
            _writer = new FragBufferWriter(_cache);
        }

        public long? LeakedPages { get; private set; }

        public IBufferWriter<byte> Begin() => _writer;

        public ReadOnlySequence<byte> Complete()
        {
            _chain = _writer.Detach();
            return _chain.Sequence;
        }

        public void Release()
        {
            _chain?.Dispose();
            _chain = null;
        }

        public void Dispose()
        {
            Release();
            _writer.Dispose();
            _cache.Drain();
            LeakedPages = _pages.PagesInUse;
            _pages.Dispose();
        }
    }

    private sealed class ArrayWriterPeer : IWriterPeer
    {
        private readonly ArrayBufferWriter<byte> _writer = new();

        public long? LeakedPages => null;

        public IBufferWriter<byte> Begin() => _writer;

        public ReadOnlySequence<byte> Complete() => new(_writer.WrittenMemory);

        public void Release() => _writer.ResetWrittenCount();

        public void Dispose()
        {
        }
    }

    private sealed class RmsPeer(RecyclableMemoryStreamManager manager) : IWriterPeer
    {
        private RecyclableMemoryStream? _stream;

        public long? LeakedPages => null;

        public IBufferWriter<byte> Begin() => _stream = manager.GetStream("pagefrag-bench");

        public ReadOnlySequence<byte> Complete() => _stream!.GetReadOnlySequence();

        public void Release()
        {
            _stream?.Dispose();
            _stream = null;
        }

        public void Dispose() => Release();
    }

    private sealed class PipePeer : IWriterPeer
    {
        private readonly Pipe _pipe = new(new PipeOptions(pauseWriterThreshold: 0, resumeWriterThreshold: 0, useSynchronizationContext: false));
        private ReadOnlySequence<byte> _read;

        public long? LeakedPages => null;

        public IBufferWriter<byte> Begin() => _pipe.Writer;

        public ReadOnlySequence<byte> Complete()
        {
            ValueTask<FlushResult> flush = _pipe.Writer.FlushAsync();
            if (!flush.IsCompletedSuccessfully)
            {
                throw new BenchFailureException("the pipe's flush did not complete at once although the writer never pauses.");
            }

            _ = flush.Result;

            if (!_pipe.Reader.TryRead(out ReadResult result))
            {
                throw new BenchFailureException("the pipe had nothing to read after the flush.");
            }

            _read = result.Buffer;
            return _read;
        }

        public void Release()
        {
            _pipe.Reader.AdvanceTo(_read.End);
            _read = default;
            _pipe.Writer.Complete();
            _pipe.Reader.Complete();
            _pipe.Reset();
        }

        public void Dispose()
        {
        }
    }
}
