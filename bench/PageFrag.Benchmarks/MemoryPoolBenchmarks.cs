using System.Buffers;
using BenchmarkDotNet.Attributes;
using PageFrag.Buffers;
using PageFrag.Frag;
using PageFrag.Pages;

namespace PageFrag.Benchmarks;

/// <summary>
/// The <see cref="MemoryPool{T}"/> face alone: <c>Rent</c> a buffer, stamp it through
/// <c>owner.Memory.Span</c>, <c>Dispose</c> it; and the cost of <c>Memory.Span</c> on a buffer held for the
/// whole run (what a pipe pays on every <c>GetSpan</c>). <c>MemoryPool&lt;byte&gt;.Shared</c> is the baseline.
/// <c>CacheAllocFreeLocal</c> does the same with the fragment cache alone (<c>TryAlloc</c>, stamp through the
/// fragment's span, <c>FreeLocal</c>), over the same allocator: the floor under <c>PageFragRentDispose</c>, so the
/// pool's own overhead (owner object, thread slot, <c>Memory.Span</c> through the <c>MemoryManager</c>) is the
/// difference between the two in one run.
/// </summary>
[MemoryDiagnoser]
public class MemoryPoolBenchmarks
{
    /// <summary>Rents (or span reads) per benchmark call.</summary>
    public const int Operations = 1024;

    private PageFragMemoryPool? _pool;
    private PageFragCache? _cache;
    private IMemoryOwner<byte>? _sharedHeld;
    private IMemoryOwner<byte>? _pageFragHeld;

    /// <summary>A small buffer and the pipe's default segment.</summary>
    [Params(256, 4096)]
    public int Size { get; set; }

    /// <summary>Test hook: when set before <see cref="GlobalSetup"/>, PageFrag's pool takes its pages from here.</summary>
    internal PageAllocator? Allocator { get; set; }

    [GlobalSetup]
    public void GlobalSetup()
    {
        _pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = Allocator });
        _cache = new PageFragCache(Allocator ?? PageAllocator.Shared);
        _sharedHeld = MemoryPool<byte>.Shared.Rent(Size);
        _pageFragHeld = _pool.Rent(Size);
    }

    [GlobalCleanup]
    public void GlobalCleanup()
    {
        _sharedHeld?.Dispose();
        _pageFragHeld?.Dispose();
        _pool?.Dispose();
        _cache?.Dispose();
        _sharedHeld = _pageFragHeld = null;
        _pool = null;
        _cache = null;
    }

    [Benchmark(Baseline = true, OperationsPerInvoke = Operations)]
    public long SharedRentDispose() => RentDispose(MemoryPool<byte>.Shared, Size);

    [Benchmark(OperationsPerInvoke = Operations)]
    public long PageFragRentDispose() => RentDispose(_pool!, Size);

    [Benchmark(OperationsPerInvoke = Operations)]
    public long CacheAllocFreeLocal() => AllocFreeLocal(_cache!, Size);

    [Benchmark(OperationsPerInvoke = Operations)]
    public long SharedMemorySpan() => SpanReads(_sharedHeld!.Memory, Size);

    [Benchmark(OperationsPerInvoke = Operations)]
    public long PageFragMemorySpan() => SpanReads(_pageFragHeld!.Memory, Size);

    internal static long RentDispose(MemoryPool<byte> pool, int size)
    {
        long sum = 0;
        for (int i = 0; i < Operations; i++)
        {
            IMemoryOwner<byte> owner = pool.Rent(size);
            Span<byte> buffer = owner.Memory.Span[..size];
            Stamp.Write(buffer, i);
            sum += Stamp.Read(buffer);
            owner.Dispose();
        }

        return sum;
    }

    internal static long AllocFreeLocal(PageFragCache cache, int size)
    {
        long sum = 0;
        for (int i = 0; i < Operations; i++)
        {
            if (!cache.TryAlloc(size, out PageFragment fragment))
            {
                throw new InvalidOperationException("The allocator refused a page.");
            }

            Span<byte> buffer = fragment.Span;
            Stamp.Write(buffer, i);
            sum += Stamp.Read(buffer);
            cache.FreeLocal(in fragment);
        }

        return sum;
    }

    internal static long SpanReads(Memory<byte> memory, int size)
    {
        // Each read goes through Memory.Span, as a pipe's GetSpan does; the slice keeps lengths equal across pools.
        long sum = 0;
        for (int i = 0; i < Operations; i++)
        {
            Span<byte> buffer = memory.Span[..size];
            Stamp.Write(buffer, i);
            sum += Stamp.Read(buffer);
        }

        return sum;
    }
}
