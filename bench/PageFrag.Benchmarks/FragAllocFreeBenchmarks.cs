using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using BenchmarkDotNet.Attributes;
using DotNetty.Buffers;
using PageFrag.Frag;

namespace PageFrag.Benchmarks;

/// <summary>
/// One thread allocates a buffer of <see cref="Size"/> bytes, touches it and frees it, over and over: the
/// cost of the alloc + free pair when everything stays on one thread. <c>ArrayPool&lt;byte&gt;.Shared</c>
/// is the baseline (for 12 bytes it rents a 16-byte array). Since each fragment is freed before the next
/// one is taken, the cache's page is always entirely free when it fills up and is reused in place: this is
/// the fragment cache's best case, and its pure hot path.
/// </summary>
[MemoryDiagnoser]
public class FragAllocFreeBenchmarks : FragCacheBenchmark
{
    /// <summary>Alloc + free pairs per benchmark call; enough to cross several page refills for 12 bytes.</summary>
    public const int Operations = 1024;

    /// <summary>A small header, a medium message, an Ethernet MTU payload, a page.</summary>
    [Params(12, 256, 1500, 4096)]
    public int Size { get; set; }

    internal override long ExpectedChecksum => Stamp.Expected(Operations, Size);

    [Benchmark(Baseline = true, OperationsPerInvoke = Operations)]
    public long ArrayPoolRentReturn()
    {
        ArrayPool<byte> pool = ArrayPool<byte>.Shared;
        int size = Size;
        long sum = 0;
        for (int i = 0; i < Operations; i++)
        {
            byte[] array = pool.Rent(size);
            Span<byte> buffer = array.AsSpan(0, size);
            Stamp.Write(buffer, i);
            sum += Stamp.Read(buffer);
            pool.Return(array);
        }

        return sum;
    }

    [Benchmark(OperationsPerInvoke = Operations)]
    public long PageFragAllocFree() =>
        AllocFreeLoop<ByHandle>(Cache, alignment: 0);

    /// <summary>
    /// The owner frees with <see cref="PageFragCache.FreeLocal"/>: the reference goes back to the cache's bias,
    /// so the pair does no atomic operation at all (the double-free mark is a plain write).
    /// </summary>
    [Benchmark(OperationsPerInvoke = Operations)]
    public long PageFragFreeLocal() =>
        AllocFreeLoop<Locally>(Cache, alignment: 0);

    /// <summary>Free by address (page_frag_free(va)): the arena is found through the address registry.</summary>
    [Benchmark(OperationsPerInvoke = Operations)]
    public long PageFragFreeByAddress() =>
        AllocFreeLoop<ByAddress>(Cache, alignment: 0);

    /// <summary>Cache-line aligned fragments (page_frag_alloc_align with 64 bytes).</summary>
    [Benchmark(OperationsPerInvoke = Operations)]
    public long PageFragAligned64() =>
        AllocFreeLoop<ByHandle>(Cache, alignment: 64);

    /// <summary>The send-path pattern: prepare, write into the prepared space, commit what was written.</summary>
    [Benchmark(OperationsPerInvoke = Operations)]
    public long PageFragPrepareCommit()
    {
        PageFragCache cache = Cache;
        int size = Size;
        long sum = 0;
        for (int i = 0; i < Operations; i++)
        {
            if (!cache.TryPrepare(size, out PreparedFragment prepared))
            {
                ThrowAllocFailed(size);
            }

            Stamp.Write(prepared.Span[..size], i);
            PageFragment fragment = cache.Commit(in prepared, size);
            sum += Stamp.Read(fragment.Span);
            PageFragCache.Free(in fragment);
        }

        return sum;
    }

    [Benchmark(OperationsPerInvoke = Operations)]
    public unsafe long NativeMemoryAllocFree()
    {
        int size = Size;
        long sum = 0;
        for (int i = 0; i < Operations; i++)
        {
            void* p = NativeMemory.Alloc((nuint)size);
            var buffer = new Span<byte>(p, size);
            Stamp.Write(buffer, i);
            sum += Stamp.Read(buffer);
            NativeMemory.Free(p);
        }

        return sum;
    }

    /// <summary>Kestrel's pinned block pool (ASP.NET Core 10): <c>Rent</c> one 4096-byte block, <c>Dispose</c> it.</summary>
    [Benchmark(OperationsPerInvoke = Operations)]
    public long KestrelRentDispose()
    {
        MemoryPool<byte> pool = Peers.KestrelPool;
        int size = Size;
        long sum = 0;
        for (int i = 0; i < Operations; i++)
        {
            IMemoryOwner<byte> block = pool.Rent(size);
            Span<byte> buffer = block.Memory.Span[..size];
            Stamp.Write(buffer, i);
            sum += Stamp.Read(buffer);
            block.Dispose();
        }

        return sum;
    }

    /// <summary>DotNetty's pooled allocator, heap buffers: <c>HeapBuffer</c>, then <c>Release</c>.</summary>
    [Benchmark(OperationsPerInvoke = Operations)]
    public long DotNettyHeapBuffer()
    {
        PooledByteBufferAllocator allocator = Peers.DotNetty;
        int size = Size;
        long sum = 0;
        for (int i = 0; i < Operations; i++)
        {
            IByteBuffer byteBuffer = allocator.HeapBuffer(size);
            Span<byte> buffer = byteBuffer.Array.AsSpan(byteBuffer.ArrayOffset, size);
            Stamp.Write(buffer, i);
            sum += Stamp.Read(buffer);
            byteBuffer.Release();
        }

        return sum;
    }

    /// <summary>No pooling at all: the garbage collector frees.</summary>
    [Benchmark(OperationsPerInvoke = Operations)]
    public long NewByteArray()
    {
        int size = Size;
        long sum = 0;
        for (int i = 0; i < Operations; i++)
        {
            Span<byte> buffer = new byte[size];
            Stamp.Write(buffer, i);
            sum += Stamp.Read(buffer);
        }

        return sum;
    }

    /// <summary>
    /// The loop every fragment cache variant but prepare/commit shares: alloc (aligned when
    /// <paramref name="alignment"/> is not 0), stamp, read back, free the <typeparamref name="TFree"/> way.
    /// The strategy is a struct, so the JIT compiles one specialised loop per variant with the free inlined.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private long AllocFreeLoop<TFree>(PageFragCache cache, int alignment)
        where TFree : struct, IFree
    {
        int size = Size;
        long sum = 0;
        for (int i = 0; i < Operations; i++)
        {
            bool ok = alignment == 0 ? cache.TryAlloc(size, out PageFragment fragment) : cache.TryAlloc(size, alignment, out fragment);
            if (!ok)
            {
                ThrowAllocFailed(size);
            }

            Span<byte> buffer = fragment.Span;
            Stamp.Write(buffer, i);
            sum += Stamp.Read(buffer);
            default(TFree).Free(cache, in fragment);
        }

        return sum;
    }

    /// <summary>How a variant frees its fragment.</summary>
    private interface IFree
    {
        public void Free(PageFragCache cache, in PageFragment fragment);
    }

    private readonly struct ByHandle : IFree
    {
        public void Free(PageFragCache cache, in PageFragment fragment) => PageFragCache.Free(in fragment);
    }

    private readonly struct Locally : IFree
    {
        public void Free(PageFragCache cache, in PageFragment fragment) => cache.FreeLocal(in fragment);
    }

    private readonly struct ByAddress : IFree
    {
        public void Free(PageFragCache cache, in PageFragment fragment) => PageFragCache.Free(fragment.Address);
    }
}
