using PageFrag.Pages;
using PageFrag.Pool;

namespace PageFrag.Providers;

/// <summary>
/// The default kind of memory as an explicit provider: host pages from a <see cref="PageAllocator"/>, in bulk
/// for order 0. A pool without a provider does the same inline; use this one to give a pool pages from another
/// allocator than its own, or as the model for a provider of your own.
/// </summary>
/// <remarks>
/// Bound to one pool at a time. <see cref="AllocNetMems"/> runs on the pool's owner thread;
/// <see cref="ReleaseNetMem"/> is safe from any thread (it drops a page reference, as put_page does).
/// <see cref="Init"/>, <see cref="AllocNetMems"/> and <see cref="Destroy"/> serve only the pool's own calls:
/// called directly they throw <see cref="InvalidOperationException"/> and change nothing.
/// </remarks>
public sealed class HostPageProvider : IMemoryProvider
{
    private readonly PageAllocator? _allocator;
    private readonly AllocFlags _flags;
    private readonly Arena?[] _arenas = new Arena?[PagePool.AllocCacheRefill];
    private readonly int[] _indexes = new int[PagePool.AllocCacheRefill];
    private PageAllocator? _bound;
    private PagePool? _pool;
    private int _order;
    private long _allocated;
    private long _released;

    /// <summary>Creates the provider.</summary>
    /// <param name="allocator">Where pages come from; the pool's own allocator when null.</param>
    /// <param name="flags">Flags of the page allocations; the pool's are not used.</param>
    public HostPageProvider(PageAllocator? allocator = null, AllocFlags flags = AllocFlags.None)
    {
        _allocator = allocator;
        _flags = flags;
    }

    /// <summary>Pages handed to pools so far.</summary>
    public long Allocated => Interlocked.Read(ref _allocated);

    /// <summary>Pages taken back so far.</summary>
    public long Released => Interlocked.Read(ref _released);

    /// <inheritdoc/>
    /// <exception cref="InvalidOperationException">The provider is already bound to a pool, or the call does not come
    /// from the pool's constructor.</exception>
    /// <exception cref="ArgumentException">The pool's order is above the allocator's highest order.</exception>
    public void Init(PagePool pool)
    {
        ArgumentNullException.ThrowIfNull(pool);
        PageAllocator allocator = _allocator ?? pool.Allocator;
        if (pool.Order > allocator.MaxOrder)
        {
            throw new ArgumentException($"The pool's order {pool.Order} is above the allocator's highest order {allocator.MaxOrder}.", nameof(pool));
        }

        if (!PagePoolCore.IsCallingProvider(pool))
        {
            PoolThrowHelper.DirectProviderCall(nameof(Init));
        }

        if (Interlocked.CompareExchange(ref _pool, pool, null) is not null)
        {
            throw new InvalidOperationException("The host page provider is already bound to a page pool.");
        }

        _bound = allocator;
        _order = pool.Order;
    }

    /// <inheritdoc/>
    public int AllocNetMems(PagePool pool, Span<NetMem> netmems)
    {
        PageAllocator allocator = CheckBound(pool);

        // The scratch arrays are the pool's refill's alone: a caller's call from another thread at the same time would
        // read the pool's pages out of them (two owners of one page), so only the pool's own call is served.
        if (!PagePoolCore.IsCallingProvider(pool))
        {
            PoolThrowHelper.DirectProviderCall(nameof(AllocNetMems));
        }

        int got;
        if (_order == 0)
        {
            int want = Math.Min(netmems.Length, _arenas.Length);
            got = allocator.TryAllocBulk(_flags, _arenas.AsSpan(0, want), _indexes.AsSpan(0, want));
            for (int i = 0; i < got; i++)
            {
                netmems[i] = new NetMem(HostPageArea.For(_arenas[i]!), _indexes[i], 0);
                _arenas[i] = null;
            }
        }
        else
        {
            got = 0;
            if (netmems.Length > 0 && allocator.TryAllocBlock(_order, _flags, out Arena? arena, out int index))
            {
                netmems[0] = new NetMem(HostPageArea.For(arena), index, 0);
                got = 1;
            }
        }

        Interlocked.Add(ref _allocated, got);
        return got;
    }

    /// <inheritdoc/>
    /// <exception cref="InvalidOperationException">
    /// The memory is not being given back by its page pool right now: a buffer or a pool still holds it, or it was
    /// already given back (a direct call of this public member cannot release memory someone holds).
    /// </exception>
    public void ReleaseNetMem(PagePool pool, NetMem netmem)
    {
        if (netmem.Area is not HostPageArea area)
        {
            throw new ArgumentException("The host page provider takes back host pages only.", nameof(netmem));
        }

        if (!PagePoolCore.TryClaimProviderRelease(netmem))
        {
            throw new InvalidOperationException("The memory is not memory that a page pool is giving back: a provider takes back only what its pool returns, " +
                "so a unit that a buffer or a pool still holds, or one already given back, is refused and nothing changes.");
        }

        // The pool's reference, dropped as the pool itself drops it: waiting while a late put's release claim is pending
        // on a page that callers still hold (see PageDescriptor.ClaimMark).
        PageAllocator.PutPoolBlockRef(area.Arena, netmem.Index);
        Interlocked.Increment(ref _released);
    }

    /// <inheritdoc/>
    /// <exception cref="InvalidOperationException">Called by anyone but the pool being released.</exception>
    public void Destroy(PagePool pool)
    {
        if (!PagePoolCore.IsCallingProvider(pool))
        {
            PoolThrowHelper.DirectProviderCall(nameof(Destroy));
        }

        Interlocked.CompareExchange(ref _pool, null, pool);
    }

    private PageAllocator CheckBound(PagePool pool)
    {
        if (!ReferenceEquals(_pool, pool))
        {
            throw new InvalidOperationException("The host page provider is not bound to this page pool.");
        }

        return _bound!;
    }
}
