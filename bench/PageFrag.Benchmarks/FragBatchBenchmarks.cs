using System.Buffers;
using BenchmarkDotNet.Attributes;
using PageFrag.Frag;

namespace PageFrag.Benchmarks;

/// <summary>
/// One thread allocates <see cref="Batch"/> buffers of <see cref="Size"/> bytes, stamps each, then reads
/// and frees them all in allocation order: a receive or send burst. Unlike
/// <see cref="FragAllocFreeBenchmarks"/>, fragments are alive together, so the fragment cache fills pages
/// while fragments are still out: small sizes fit in one page that is reused in place when the next burst
/// finds it free; large sizes fill several pages, which the cache forgets and the last free gives back to
/// the page allocator. <c>ArrayPool&lt;byte&gt;.Shared</c> is the baseline.
/// </summary>
[MemoryDiagnoser]
public class FragBatchBenchmarks : FragCacheBenchmark
{
    /// <summary>Buffers alive at once; a NAPI poll budget is 64 packets.</summary>
    public const int Batch = 64;

    private readonly byte[][] _arrays = new byte[Batch][];
    private readonly PageFragment[] _fragments = new PageFragment[Batch];

    [Params(12, 256, 1500, 4096)]
    public int Size { get; set; }

    internal override long ExpectedChecksum => Stamp.Expected(Batch, Size);

    [Benchmark(Baseline = true, OperationsPerInvoke = Batch)]
    public long ArrayPoolBatch()
    {
        ArrayPool<byte> pool = ArrayPool<byte>.Shared;
        byte[][] arrays = _arrays;
        int size = Size;
        for (int i = 0; i < arrays.Length; i++)
        {
            arrays[i] = pool.Rent(size);
            Stamp.Write(arrays[i].AsSpan(0, size), i);
        }

        long sum = 0;
        for (int i = 0; i < arrays.Length; i++)
        {
            sum += Stamp.Read(arrays[i].AsSpan(0, size));
            pool.Return(arrays[i]);
            arrays[i] = null!;
        }

        return sum;
    }

    [Benchmark(OperationsPerInvoke = Batch)]
    public long PageFragBatch()
    {
        PageFragCache cache = Cache;
        PageFragment[] fragments = _fragments;
        int size = Size;
        for (int i = 0; i < fragments.Length; i++)
        {
            if (!cache.TryAlloc(size, out fragments[i]))
            {
                ThrowAllocFailed(size);
            }

            Stamp.Write(fragments[i].Span, i);
        }

        long sum = 0;
        for (int i = 0; i < fragments.Length; i++)
        {
            sum += Stamp.Read(fragments[i].Span);
            PageFragCache.Free(in fragments[i]);
            fragments[i] = default;
        }

        return sum;
    }

    /// <summary>The same burst, freed by address (page_frag_free(va)), as a caller that kept only pointers would.</summary>
    [Benchmark(OperationsPerInvoke = Batch)]
    public long PageFragBatchFreeByAddress()
    {
        PageFragCache cache = Cache;
        PageFragment[] fragments = _fragments;
        int size = Size;
        for (int i = 0; i < fragments.Length; i++)
        {
            if (!cache.TryAlloc(size, out fragments[i]))
            {
                ThrowAllocFailed(size);
            }

            Stamp.Write(fragments[i].Span, i);
        }

        long sum = 0;
        for (int i = 0; i < fragments.Length; i++)
        {
            sum += Stamp.Read(fragments[i].Span);
            PageFragCache.Free(fragments[i].Address);
            fragments[i] = default;
        }

        return sum;
    }
}
