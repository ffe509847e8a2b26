using System.Buffers;
using BenchmarkDotNet.Attributes;
using BenchmarkDotNet.Configs;
using PageFrag.Pages;
using PageFrag.Pool;

namespace PageFrag.Benchmarks;

/// <summary>
/// The page pool's hot paths beside <see cref="ArrayPool{T}.Shared"/> doing the same job, after the kernel's
/// bench_page_pool_simple: alloc + direct recycle (4.5–5.2 ns there), alloc + put through the ring (13–15 ns),
/// and a 256-byte fragment. Each figure is per operation (OperationsPerInvoke).
/// </summary>
/// <remarks>
/// Run: <c>dotnet run -c Release --project bench/PageFrag.Benchmarks -- --filter *PagePoolBenchmarks*</c>.
/// The cross-thread pair hands batches of 256 buffers to a second thread that frees them, so it also pays for
/// the hand-off (two events per batch, amortized).
/// </remarks>
[MemoryDiagnoser]
[GroupBenchmarksBy(BenchmarkLogicalGroupRule.ByCategory)]
[CategoriesColumn]
public class PagePoolBenchmarks
{
    private const int Ops = 1024;
    private const int Batch = 256;

    private PageAllocator _allocator = null!;
    private PagePool _pool = null!;
    private CrossThread _pageHandoff = null!;
    private CrossThread _arrayHandoff = null!;

    [GlobalSetup]
    public void Setup()
    {
        _allocator = new PageAllocator(new PageAllocatorOptions { ArenaSize = 4 << 20 });
        _pool = new PagePool(new PagePoolOptions { Allocator = _allocator, PoolSize = 4096 });

        // Warm the pool so that the measured loops run in steady state.
        for (int i = 0; i < 1000; i++)
        {
            AllocRecycleDirect();
            FragAlloc256();
        }

        _pageHandoff = new CrossThread(Batch, free: (in PagePoolBuffer b, byte[]? _) => b.Free());
        _arrayHandoff = new CrossThread(Batch, free: (in PagePoolBuffer _, byte[]? a) => ArrayPool<byte>.Shared.Return(a!));
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _pageHandoff.Dispose();
        _arrayHandoff.Dispose();
        _pool.Dispose();
        _allocator.Dispose();
    }

    [BenchmarkCategory("Alloc+recycle 4 KiB, same thread"), Benchmark(Baseline = true, OperationsPerInvoke = Ops)]
    public void ArrayPoolRentReturn4K()
    {
        ArrayPool<byte> pool = ArrayPool<byte>.Shared;
        for (int i = 0; i < Ops; i++)
        {
            pool.Return(pool.Rent(4096));
        }
    }

    [BenchmarkCategory("Alloc+recycle 4 KiB, same thread"), Benchmark(OperationsPerInvoke = Ops)]
    public void AllocRecycleDirect()
    {
        EnsureOwner();
        PagePool pool = _pool;
        for (int i = 0; i < Ops; i++)
        {
            pool.TryAllocNetMem(out NetMem m);
            pool.RecycleDirect(m);
        }
    }

    [BenchmarkCategory("Alloc+recycle 4 KiB, same thread"), Benchmark(OperationsPerInvoke = Ops)]
    public void AllocPutThroughRing()
    {
        EnsureOwner();
        PagePool pool = _pool;
        for (int i = 0; i < Ops; i++)
        {
            pool.TryAllocNetMem(out NetMem m);
            pool.PutFullPage(m, allowDirect: false);
        }
    }

    [BenchmarkCategory("Alloc 4 KiB, free on another thread"), Benchmark(Baseline = true, OperationsPerInvoke = Ops)]
    public void ArrayPoolRentHereReturnThere()
    {
        CrossThread h = _arrayHandoff;
        for (int done = 0; done < Ops; done += Batch)
        {
            for (int i = 0; i < Batch; i++)
            {
                h.Arrays[i] = ArrayPool<byte>.Shared.Rent(4096);
            }

            h.HandOffAndWait();
        }
    }

    [BenchmarkCategory("Alloc 4 KiB, free on another thread"), Benchmark(OperationsPerInvoke = Ops)]
    public void PoolAllocHereFreeThere()
    {
        EnsureOwner();
        CrossThread h = _pageHandoff;
        PagePool pool = _pool;
        for (int done = 0; done < Ops; done += Batch)
        {
            for (int i = 0; i < Batch; i++)
            {
                pool.TryAllocPage(out h.Buffers[i]);
            }

            h.HandOffAndWait();
        }
    }

    [BenchmarkCategory("256 B, same thread"), Benchmark(Baseline = true, OperationsPerInvoke = Ops)]
    public void ArrayPoolRentReturn256()
    {
        ArrayPool<byte> pool = ArrayPool<byte>.Shared;
        for (int i = 0; i < Ops; i++)
        {
            pool.Return(pool.Rent(256));
        }
    }

    [BenchmarkCategory("256 B, same thread"), Benchmark(OperationsPerInvoke = Ops)]
    public void FragAlloc256()
    {
        EnsureOwner();
        PagePool pool = _pool;
        for (int i = 0; i < Ops; i++)
        {
            pool.TryAllocFrag(256, out PagePoolBuffer b);
            b.Free();
        }
    }

    // BenchmarkDotNet runs setup and benchmarks on one thread, but do not rely on it: the pool allocates only
    // on its owner thread.
    private void EnsureOwner()
    {
        if (!_pool.IsOwnerThread)
        {
            _pool.SetOwnerThread();
        }
    }

    private delegate void FreeOne(in PagePoolBuffer buffer, byte[]? array);

    /// <summary>A second thread that frees a batch each time it is handed one.</summary>
    private sealed class CrossThread : IDisposable
    {
        public readonly PagePoolBuffer[] Buffers;
        public readonly byte[]?[] Arrays;
        private readonly FreeOne _free;
        private readonly SemaphoreSlim _go = new(0);
        private readonly SemaphoreSlim _done = new(0);
        private readonly Thread _thread;
        private volatile bool _stop;

        public CrossThread(int batch, FreeOne free)
        {
            Buffers = new PagePoolBuffer[batch];
            Arrays = new byte[]?[batch];
            _free = free;
            _thread = new Thread(Run) { IsBackground = true, Name = "bench consumer" };
            _thread.Start();
        }

        public void HandOffAndWait()
        {
            _go.Release();
            _done.Wait();
        }

        public void Dispose()
        {
            _stop = true;
            _go.Release();
            _thread.Join();
            _go.Dispose();
            _done.Dispose();
        }

        private void Run()
        {
            while (true)
            {
                _go.Wait();
                if (_stop)
                {
                    return;
                }

                for (int i = 0; i < Buffers.Length; i++)
                {
                    _free(Buffers[i], Arrays[i]);
                    Buffers[i] = default;
                    Arrays[i] = null;
                }

                _done.Release();
            }
        }
    }
}
