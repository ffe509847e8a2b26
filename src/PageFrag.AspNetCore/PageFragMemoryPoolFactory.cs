using System.Buffers;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.Options;
using PageFrag.Buffers;
using PageFrag.Diagnostics;
using PageFrag.Pages;

namespace PageFrag.AspNetCore;

/// <summary>
/// Kestrel's <see cref="IMemoryPoolFactory{T}"/> on PageFrag: every pool it creates (one per socket I/O
/// queue, and the ones Kestrel itself asks for) is a <see cref="PageFragMemoryPool"/> over one page
/// allocator that the factory owns, so that sockets receive into and send from fragments of large pinned
/// pages. Register it with <c>services.AddPageFragMemoryPool()</c>.
/// </summary>
/// <remarks>
/// <para><b>Trimming.</b> Kestrel's own pool is evicted from the server heartbeat; a replacement factory
/// gets none, so this one runs a timer (<see cref="PageFragMemoryPoolFactoryOptions.TrimInterval"/>):
/// each tick drains the caches that stayed idle for a whole interval and gives back to the garbage
/// collector the entirely free arenas that served no page for a whole interval
/// (<see cref="PageAllocator.Trim(bool)"/> with <c>idleOnly</c>). An arena that is free only during a lull
/// between bursts is kept: a released arena's pinned array stays in the process until the next full
/// collection, so releasing it under load and allocating the next beside it grew the process by the
/// arenas released (16 MiB with 1 MiB bodies under wrk, <c>bench/README.md</c>).
/// <see cref="Trim"/> still gives back everything free at once. With
/// <see cref="PageFragMemoryPoolFactoryOptions.DiscardFreeMemory"/> (the default), every trim then gives the
/// physical memory of the free blocks of the arenas it kept back to the operating system
/// (<see cref="PageAllocator.DiscardFreeMemory"/>): the arenas stay for the next burst, their free pages stop
/// being resident.</para>
/// <para><b>Lifetime.</b> The pools live on the factory's allocator: disposing the factory (the DI
/// container does it at shutdown, after Kestrel has disposed its pools) disposes any pool still alive and
/// the allocator. Buffers still out stay valid memory and may be returned later.</para>
/// <para><b>Threading.</b> Every member is safe from any thread.</para>
/// </remarks>
public sealed class PageFragMemoryPoolFactory : IMemoryPoolFactory<byte>, IDisposable
{
    private readonly PageFragMemoryPoolFactoryOptions _options;
    private readonly PageAllocator _allocator;
    private readonly Lock _lock = new();
    private readonly List<PageFragMemoryPool> _pools = [];
    private readonly List<MemoryPool<byte>> _handedOut = [];

    // Every pool ever created, disposed ones included, so that the cumulative Kestrel instruments never
    // go back when a pool retires. Kestrel creates a handful per endpoint, not one per connection.
    private readonly List<PageFragMemoryPool> _allPools = [];
    private readonly ITimer? _timer;
    private readonly PageFragMetrics? _metrics;
    private long _poolsCreated;
    private long _trims;
    private bool _disposed;

    /// <summary>Creates the factory from DI options.</summary>
    /// <param name="options">The factory's settings.</param>
    /// <param name="metrics">When given, every pool and the allocator report to its <c>PageFrag</c> meter.</param>
    /// <exception cref="ArgumentOutOfRangeException">An option is out of its documented range.</exception>
    public PageFragMemoryPoolFactory(IOptions<PageFragMemoryPoolFactoryOptions> options, PageFragMetrics? metrics = null)
        : this(options?.Value ?? throw new ArgumentNullException(nameof(options)), TimeProvider.System, metrics)
    {
    }

    /// <summary>Creates the factory; <paramref name="timeProvider"/> drives the trim timer (tests pass a manual one).</summary>
    internal PageFragMemoryPoolFactory(PageFragMemoryPoolFactoryOptions options, TimeProvider timeProvider, PageFragMetrics? metrics = null)
    {
        options.Validate();
        _options = options;
        _metrics = metrics;
        _allocator = new PageAllocator(options.AllocatorOptions);
        try
        {
            // Checks MaxBufferSize against this allocator now rather than at Kestrel's first bind.
            new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = _allocator, MaxBufferSize = options.MaxBufferSize, OwnersPerCpu = 0 }).Dispose();
        }
        catch
        {
            _allocator.Dispose();
            throw;
        }

        _metrics?.Track(_allocator);
        if (options.TrimInterval != Timeout.InfiniteTimeSpan)
        {
            _timer = timeProvider.CreateTimer(static state => ((PageFragMemoryPoolFactory)state!).TrimIdle(), this, options.TrimInterval, options.TrimInterval);
        }
    }

    /// <summary>The allocator every pool of this factory takes its pages from.</summary>
    public PageAllocator Allocator => _allocator;

    /// <summary>The settings the factory was created with.</summary>
    internal PageFragMemoryPoolFactoryOptions Settings => _options;

    /// <summary>Pools created so far.</summary>
    public long PoolsCreated => Interlocked.Read(ref _poolsCreated);

    /// <summary>Trim passes run so far (by the timer or <see cref="Trim"/>).</summary>
    public long Trims => Interlocked.Read(ref _trims);

    /// <summary>The pools created and not yet disposed (a snapshot).</summary>
    public IReadOnlyList<PageFragMemoryPool> Pools
    {
        get
        {
            lock (_lock)
            {
                return _pools.Where(p => !p.IsDisposed).ToArray();
            }
        }
    }

    /// <summary>
    /// Creates a pool for <paramref name="options"/>' owner (its name tags the pool's metrics), wrapped in
    /// a <see cref="DiagnosticMemoryPool"/> when so configured.
    /// </summary>
    /// <exception cref="ObjectDisposedException">The factory was disposed.</exception>
    public MemoryPool<byte> Create(MemoryPoolOptions? options = null)
    {
        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions
            {
                Allocator = _allocator,
                MaxBufferSize = _options.MaxBufferSize,
                Name = options?.Owner,
            });
            _metrics?.Track(pool);
            MemoryPool<byte> result = _options.UseDiagnosticPool ? new DiagnosticMemoryPool(pool, _options.DiagnosticOptions) : pool;
            _pools.Add(pool);
            _allPools.Add(pool);
            _handedOut.Add(result);
            _poolsCreated++;
            return result;
        }
    }

    /// <summary>
    /// The figures behind Kestrel's <c>Microsoft.AspNetCore.MemoryPool</c> instruments, for this factory
    /// seen as one pool in Kestrel's sense: memory comes from the garbage collector as arenas (allocated),
    /// goes back to it when trimming releases a free arena (evicted), and whatever the arenas hold that is
    /// not rented out is pooled. Rented bytes are per owner. Null once the factory is disposed.
    /// </summary>
    internal KestrelPoolFigures? GetKestrelFigures()
    {
        PageFragMemoryPool[] pools;
        lock (_lock)
        {
            if (_disposed)
            {
                return null;
            }

            pools = [.. _allPools];
        }

        var rented = new Dictionary<string, long>(StringComparer.Ordinal);
        long outstanding = 0;
        foreach (PageFragMemoryPool pool in pools)
        {
            PageFragMemoryPoolStats stats = pool.GetStats();
            outstanding += stats.OutstandingBytes;
            string owner = pool.Name ?? string.Empty;
            rented[owner] = rented.GetValueOrDefault(owner) + stats.RentedBytes;
        }

        PageAllocatorStats allocator = _allocator.GetStats();
        long inArenas = allocator.TotalPages * PageConstants.PageSize;
        long evicted = allocator.ArenasTrimmed * (long)_allocator.Options.ArenaSize;
        return new KestrelPoolFigures(
            Pooled: Math.Max(0, inArenas - outstanding),
            Allocated: inArenas + evicted,
            Evicted: evicted,
            RentedByOwner: rented);
    }

    /// <summary>Gives back all free memory now: drains every cache of every pool and releases free arenas.</summary>
    public void Trim() => TrimCore(idleOnly: false);

    /// <summary>One timer tick: what the timer runs every interval (a test hook as well).</summary>
    internal void TrimIdle() => TrimCore(idleOnly: true);

    /// <summary>Stops trimming, disposes the pools still alive and then the allocator.</summary>
    public void Dispose()
    {
        _timer?.Dispose();
        lock (_lock)
        {
            if (_disposed)
            {
                return;
            }

            _disposed = true;
            foreach (MemoryPool<byte> pool in _handedOut)
            {
                try
                {
                    pool.Dispose();
                }
                catch (UseAfterFreeException)
                {
                    // Already reported by the diagnostic pool's own Verify/Dispose; shutdown goes on.
                }
            }

            _pools.Clear();
            _handedOut.Clear();
            _allocator.Dispose();
        }
    }

    private void TrimCore(bool idleOnly)
    {
        lock (_lock)
        {
            if (_disposed)
            {
                return;
            }

            for (int i = _pools.Count - 1; i >= 0; i--)
            {
                if (_pools[i].IsDisposed)
                {
                    _pools.RemoveAt(i);
                    _handedOut.RemoveAt(i);
                }
                else
                {
                    _pools[i].Trim(idleOnly);
                }
            }

            _allocator.Trim(idleOnly);
            if (_options.DiscardFreeMemory)
            {
                _allocator.DiscardFreeMemory();
            }

            _trims++;
        }
    }
}
