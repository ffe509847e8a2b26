using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;
using BenchmarkDotNet.Attributes;
using PageFrag.Frag;
using PageFrag.Pages;

namespace PageFrag.Benchmarks;

/// <summary>
/// Common set-up of the fragment cache suites: a private <see cref="PageAllocator"/> (never
/// <see cref="PageAllocator.Shared"/>, so that nothing else in the process moves its pages) and one cache
/// over it, used by the benchmark thread only.
/// </summary>
public abstract class FragCacheBenchmark
{
    private PageAllocator? _allocator;
    private PageFragCache? _cache;
    private bool _ownsAllocator;

    /// <summary>
    /// Test hook: when set before <see cref="GlobalSetup"/>, the suite runs on this allocator and leaves it
    /// undisposed, so the test can check it for leaks afterwards.
    /// </summary>
    internal PageAllocator? Allocator { get; set; }

    /// <summary>What every benchmark method of the suite must return for the current parameters.</summary>
    internal abstract long ExpectedChecksum { get; }

    /// <summary>The cache the PageFrag variants allocate from (valid between set-up and clean-up).</summary>
    internal PageFragCache Cache => _cache!;

    [GlobalSetup]
    public void GlobalSetup()
    {
        _ownsAllocator = Allocator is null;
        _allocator = Allocator ?? new PageAllocator();

        // A fresh allocator has no arena, and the cache's order-3 attempt is opportunistic (it never grows
        // the arenas), so the first refill would get a 4 KiB page, which reuse in place then keeps forever.
        // Take and free one order-3 block first (it waits on the per-CPU list), as a process that has been
        // running would have, so that the suites measure the cache on its 32 KiB pages.
        if (!_allocator.TryAllocPages(PageConstants.FragCacheMaxOrder, AllocFlags.None, out Page page))
        {
            throw new InvalidOperationException("The allocator could not provide a first order-3 block.");
        }

        _allocator.FreePages(page);
        _cache = new PageFragCache(_allocator);
    }

    [GlobalCleanup]
    public void GlobalCleanup()
    {
        if (_allocator is null || _cache is null)
        {
            return;
        }

        _cache.Drain();
        long leaked = _allocator.PagesInUse;
        if (_ownsAllocator)
        {
            _allocator.Dispose();
        }

        _cache = null;
        _allocator = null;

        // A benchmark that leaks measures something else than it claims: fail the run rather than print it.
        if (leaked != 0)
        {
            throw new InvalidOperationException($"{GetType().Name} leaked {leaked} pages.");
        }
    }

    [DoesNotReturn]
    [MethodImpl(MethodImplOptions.NoInlining)]
    protected static void ThrowAllocFailed(int size) =>
        throw new InvalidOperationException($"The fragment cache could not allocate {size} bytes.");
}
