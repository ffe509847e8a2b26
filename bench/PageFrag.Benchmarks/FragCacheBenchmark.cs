using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;
using BenchmarkDotNet.Attributes;
using PageFrag.Frag;
using PageFrag.Pages;

namespace PageFrag.Benchmarks;

/// <summary>
/// Common set-up of the fragment cache suites: private <see cref="PageAllocator"/>s (never
/// <see cref="PageAllocator.Shared"/>, so that nothing else in the process moves their pages) with the
/// default options, and one cache over it, used by the benchmark thread only.
/// </summary>
public abstract class FragCacheBenchmark
{
    private Setup? _checked;

    /// <summary>
    /// Test hook: when set before <see cref="GlobalSetup"/>, <see cref="Cache"/> runs on this allocator, which
    /// is left undisposed so that the test can check it for leaks afterwards.
    /// </summary>
    internal PageAllocator? Allocator { get; set; }

    /// <summary>What every benchmark method of the suite must return for the current parameters.</summary>
    internal abstract long ExpectedChecksum { get; }

    /// <summary>The cache over an allocator with the default options (valid between set-up and clean-up).</summary>
    internal PageFragCache Cache => _checked!.Cache;

    [GlobalSetup]
    public void GlobalSetup()
    {
        _checked = new Setup(Allocator);
        AfterSetup();
    }

    [GlobalCleanup]
    public void GlobalCleanup()
    {
        BeforeCleanup();
        long leaked = _checked?.Cleanup() ?? 0;
        _checked = null;

        // A benchmark that leaks measures something else than it claims: fail the run rather than print it.
        if (leaked != 0)
        {
            throw new InvalidOperationException($"{GetType().Name} leaked {leaked} pages.");
        }
    }

    /// <summary>A suite's own set-up, once the caches exist.</summary>
    protected virtual void AfterSetup()
    {
    }

    /// <summary>A suite's own clean-up, before the caches are drained and checked for leaks.</summary>
    protected virtual void BeforeCleanup()
    {
    }

    [DoesNotReturn]
    [MethodImpl(MethodImplOptions.NoInlining)]
    protected static void ThrowAllocFailed(int size) =>
        throw new InvalidOperationException($"The fragment cache could not allocate {size} bytes.");

    private sealed class Setup
    {
        private readonly PageAllocator _allocator;
        private readonly bool _ownsAllocator;

        public Setup(PageAllocator? given)
        {
            _ownsAllocator = given is null;
            _allocator = given ?? new PageAllocator();

            // A fresh allocator has no arena, and the cache's order-3 attempt is opportunistic (it never grows
            // the arenas), so the first refill would get a 4 KiB page, which reuse in place then keeps forever.
            // Take and free one order-3 block first (it waits on the per-CPU list), as a process that has been
            // running would have, so that the suites measure the cache on its 32 KiB pages.
            if (!_allocator.TryAllocPages(PageConstants.FragCacheMaxOrder, AllocFlags.None, out Page page))
            {
                throw new InvalidOperationException("The allocator could not provide a first order-3 block.");
            }

            _allocator.FreePages(page);
            Cache = new PageFragCache(_allocator);
        }

        public PageFragCache Cache { get; }

        /// <summary>Drains the cache, disposes an owned allocator, and returns the pages still in use.</summary>
        public long Cleanup()
        {
            Cache.Drain();
            long leaked = _allocator.PagesInUse;
            if (_ownsAllocator)
            {
                _allocator.Dispose();
            }

            return leaked;
        }
    }
}
