using System.IO.MemoryMappedFiles;
using System.Numerics;
using System.Runtime.InteropServices;
using PageFrag.Pages;
using PageFrag.Pool;

namespace PageFrag.Providers;

/// <summary>Settings of a <see cref="RegionMemoryProvider"/>.</summary>
/// <remarks>Read once, by the provider's constructor. Defaults: 4096-byte chunks, readable, areas of up to 1 GiB.</remarks>
public sealed class RegionMemoryProviderOptions
{
    /// <summary>Bytes per chunk, a power of two from 4096; must equal the page size of the pool it serves.
    /// Default 4096.</summary>
    public int ChunkSize { get; init; } = PageConstants.PageSize;

    /// <summary>False registers the region as device memory: CPU access to its buffers throws
    /// <see cref="NetMemUnreadableException"/>, and consumers use <see cref="DevMemToken"/>s. Default true.</summary>
    public bool Readable { get; init; } = true;

    /// <summary>The region is split into areas of at most this many bytes (the kernel binds one area per
    /// scatterlist entry). A multiple of <see cref="ChunkSize"/>, at most 1 GiB. Default 1 GiB.</summary>
    public int MaxAreaSize { get; init; } = 1 << 30;
}

/// <summary>
/// A memory provider over a region the caller owns: a memory-mapped file another process reads, shared
/// memory, native memory, a pinned array, or device memory the CPU cannot touch (the devmem TCP model). The
/// region is split into chunks of the pool's page size by a small range allocator; a chunk's device address
/// is its offset in the region.
/// </summary>
/// <remarks>
/// <para>Serves the pools of several receive queues at once, as a dma-buf binding does: each pool binds
/// (<see cref="Init"/>) and holds the region until it is released (<see cref="Destroy"/>); the region is free
/// again when the last one goes. Each slow-path allocation gets one chunk, as devmem hands out one net_iov, so
/// one queue cannot empty the region into its cache and starve the others. <see cref="AllocNetMems"/> runs on the pool's owner thread; everything else is
/// thread-safe (one lock around the range allocator and the token table). <see cref="Init"/>, <see cref="AllocNetMems"/>
/// and <see cref="Destroy"/> serve only the pool's own calls: called directly they throw
/// <see cref="InvalidOperationException"/> and change nothing.</para>
/// <para>Pools using it must not ask for <see cref="PagePoolFlags.DmaSyncForDevice"/>: the region's owner
/// decides when the device sees the bytes, as devmem refuses the sync flag.</para>
/// <para>The region must stay valid until the provider is disposed; <see cref="Dispose"/> releases what the
/// provider itself acquired (a view's pointer, an array's pin). A region never disposed releases them when it is
/// collected (its finalizer), which cannot happen while a pool or a buffer of it is reachable.</para>
/// </remarks>
public sealed unsafe class RegionMemoryProvider : IMemoryProvider, IDisposable
{
    private readonly Lock _lock = new();
    private readonly GenPool _chunks;
    private readonly NetIovArea[] _areas;
    private readonly Dictionary<uint, PagePoolBuffer> _tokens = [];
    private readonly int _chunkSize;
    private readonly Action? _onDispose;
    private readonly List<PagePool> _pools = [];
    private uint _nextToken;
    private bool _disposed;

    /// <summary>Binds the region at <paramref name="address"/> of <paramref name="length"/> bytes.</summary>
    /// <param name="address">Start of the region; may be 0 for unreadable memory.</param>
    /// <param name="length">A positive multiple of the chunk size.</param>
    /// <param name="options">Settings, or null for the defaults.</param>
    /// <exception cref="ArgumentOutOfRangeException">The length or an option is out of range.</exception>
    /// <exception cref="ArgumentException">A readable region at address 0.</exception>
    public RegionMemoryProvider(nint address, long length, RegionMemoryProviderOptions? options = null)
        : this(address, length, options, array: null, onDispose: null)
    {
    }

    private RegionMemoryProvider(nint address, long length, RegionMemoryProviderOptions? options, byte[]? array, Action? onDispose)
    {
        options ??= new RegionMemoryProviderOptions();
        int chunk = options.ChunkSize;
        if (chunk < PageConstants.PageSize || chunk > (1 << 30) || !BitOperations.IsPow2(chunk))
        {
            throw new ArgumentOutOfRangeException(nameof(options), chunk, "ChunkSize must be a power of two from 4096 to 1073741824 bytes.");
        }

        if (options.MaxAreaSize < chunk || options.MaxAreaSize % chunk != 0 || options.MaxAreaSize > (1 << 30))
        {
            throw new ArgumentOutOfRangeException(nameof(options), options.MaxAreaSize, "MaxAreaSize must be a multiple of ChunkSize, at most 1 GiB.");
        }

        if (length <= 0 || length % chunk != 0)
        {
            throw new ArgumentOutOfRangeException(nameof(length), length, $"The region length must be a positive multiple of the chunk size ({chunk}).");
        }

        if (options.Readable && address == 0)
        {
            throw new ArgumentException("A readable region needs an address.", nameof(address));
        }

        _chunkSize = chunk;
        IsReadable = options.Readable;
        Length = length;
        _chunks = new GenPool(BitOperations.Log2((uint)chunk));
        int areaCount = (int)((length + options.MaxAreaSize - 1) / options.MaxAreaSize);
        _areas = new NetIovArea[areaCount];
        for (int i = 0; i < areaCount; i++)
        {
            long start = (long)i * options.MaxAreaSize;
            int size = (int)Math.Min(options.MaxAreaSize, length - start);
            Memory<byte> memory = !options.Readable ? default
                : array is not null ? new Memory<byte>(array, (int)start, size)
                : new UnmanagedMemoryManager((byte*)(address + (nint)start), size).Memory;
            var area = new NetIovArea(this, options.Readable ? address + (nint)start : 0, memory, chunk, size / chunk, (ulong)start, options.Readable);
            _areas[i] = area;
            _chunks.AddOwner(start, size, area);
        }

        // Last, so that a constructor that threw never releases what its caller then releases itself.
        _onDispose = onDispose;
        if (onDispose is null)
        {
            GC.SuppressFinalize(this);
        }
    }

    /// <summary>
    /// The safety net of a region never disposed: an array's pin (a GC root that would keep the array for ever) or
    /// a view's pointer reference is released once the provider is unreachable. Then no pool uses it either: every
    /// pool bound to it, and every buffer of its memory, holds it.
    /// </summary>
    ~RegionMemoryProvider()
    {
        if (_onDispose is { } release && !_disposed)
        {
            release();
            PageFragEventSource.Log.LeakReclaimed(nameof(RegionMemoryProvider), 0, Length, "(a region is released by Dispose; its pin or view pointer was released by the finalizer)");
        }
    }

    /// <summary>
    /// Binds a mapped view: the view's pointer is acquired now and released by <see cref="Dispose"/>. The region
    /// is the view's whole capacity, rounded down to the chunk size.
    /// </summary>
    /// <exception cref="ArgumentNullException"><paramref name="view"/> is null.</exception>
    public static RegionMemoryProvider FromView(MemoryMappedViewAccessor view, RegionMemoryProviderOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(view);
        int chunk = (options ?? new RegionMemoryProviderOptions()).ChunkSize;
        byte* pointer = null;
        view.SafeMemoryMappedViewHandle.AcquirePointer(ref pointer);
        try
        {
            nint start = (nint)(pointer + view.PointerOffset);
            long length = chunk > 0 ? view.Capacity / chunk * chunk : view.Capacity;
            return new RegionMemoryProvider(start, length, options, array: null, onDispose: view.SafeMemoryMappedViewHandle.ReleasePointer);
        }
        catch
        {
            view.SafeMemoryMappedViewHandle.ReleasePointer();
            throw;
        }
    }

    /// <summary>
    /// Binds a byte array: it is pinned now and unpinned by <see cref="Dispose"/>; its buffers are array-backed, so
    /// <see cref="PagePoolBuffer.ArraySegment"/> works. The region is the array rounded down to the chunk size.
    /// </summary>
    /// <exception cref="ArgumentNullException"><paramref name="array"/> is null.</exception>
    public static RegionMemoryProvider FromArray(byte[] array, RegionMemoryProviderOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(array);
        int chunk = (options ?? new RegionMemoryProviderOptions()).ChunkSize;
        GCHandle pin = GCHandle.Alloc(array, GCHandleType.Pinned);
        try
        {
            long length = chunk > 0 ? array.Length / chunk * (long)chunk : array.Length;
            return new RegionMemoryProvider(pin.AddrOfPinnedObject(), length, options, array, onDispose: pin.Free);
        }
        catch
        {
            pin.Free();
            throw;
        }
    }

    /// <summary>Bytes in the region.</summary>
    public long Length { get; }

    /// <summary>Bytes per chunk.</summary>
    public int ChunkSize => _chunkSize;

    /// <summary>Chunks in the region.</summary>
    public long ChunkCount => Length / _chunkSize;

    /// <summary>Chunks not handed to a pool.</summary>
    public long FreeChunks
    {
        get
        {
            lock (_lock)
            {
                return _chunks.Available / _chunkSize;
            }
        }
    }

    /// <summary>False for device memory.</summary>
    public bool IsReadable { get; }

    /// <summary>The areas the region is split into.</summary>
    public IReadOnlyList<NetIovArea> Areas => _areas;

    /// <summary>Tokens handed out by <see cref="Export"/> and not yet returned.</summary>
    public int OutstandingTokens
    {
        get
        {
            lock (_lock)
            {
                return _tokens.Count;
            }
        }
    }

    /// <summary>The first pool still bound to the region, or null when none is.</summary>
    public PagePool? BoundPool
    {
        get
        {
            lock (_lock)
            {
                return _pools.Count == 0 ? null : _pools[0];
            }
        }
    }

    /// <summary>How many pools are bound to the region (one per receive queue it serves).</summary>
    public int BoundPoolCount
    {
        get
        {
            lock (_lock)
            {
                return _pools.Count;
            }
        }
    }

    /// <inheritdoc/>
    /// <exception cref="InvalidOperationException">This pool is already bound to the region.</exception>
    /// <exception cref="ObjectDisposedException">The region was disposed.</exception>
    /// <exception cref="ArgumentException">The pool's page size is not the chunk size, or it asks for device syncs.</exception>
    public void Init(PagePool pool)
    {
        ArgumentNullException.ThrowIfNull(pool);
        if (pool.PageSize != _chunkSize)
        {
            throw new ArgumentException($"The pool's page size ({pool.PageSize}) must equal the region's chunk size ({_chunkSize}).", nameof(pool));
        }

        if ((pool.Options.Flags & PagePoolFlags.DmaSyncForDevice) != 0)
        {
            throw new ArgumentException("A region provider does not support DmaSyncForDevice: the region's owner syncs its memory.", nameof(pool));
        }

        lock (_lock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_pools.Contains(pool))
            {
                throw new InvalidOperationException("The pool is already bound to this region.");
            }

            if (!PagePoolCore.IsCallingProvider(pool))
            {
                PoolThrowHelper.DirectProviderCall(nameof(Init));
            }

            _pools.Add(pool);
        }
    }

    /// <inheritdoc/>
    public int AllocNetMems(PagePool pool, Span<NetMem> netmems)
    {
        lock (_lock)
        {
            if (!_pools.Contains(pool))
            {
                throw new InvalidOperationException("The region is not bound to this page pool.");
            }

            // A chunk handed to anyone but the pool could never come back (ReleaseNetMem takes only what a pool gives back).
            if (!PagePoolCore.IsCallingProvider(pool))
            {
                PoolThrowHelper.DirectProviderCall(nameof(AllocNetMems));
            }

            // One chunk per slow-path allocation (devmem's net_iov at a time): several queues share the region.
            int got = 0;
            while (got < Math.Min(1, netmems.Length) && _chunks.TryAlloc(_chunkSize, out long offset, out object? owner))
            {
                var area = (NetIovArea)owner!;
                netmems[got++] = area.GetChunk(area.IndexOf((ulong)offset));
            }

            return got;
        }
    }

    /// <inheritdoc/>
    /// <exception cref="InvalidOperationException">
    /// The memory is not being given back by its page pool right now: a buffer or a pool still holds it, or it was
    /// already given back (a direct call of this public member cannot release memory someone holds).
    /// </exception>
    public void ReleaseNetMem(PagePool pool, NetMem netmem)
    {
        if (netmem.Area is not NetIovArea area || !ReferenceEquals(area.Provider, this))
        {
            throw new ArgumentException("The memory does not belong to this region.", nameof(netmem));
        }

        if (!PagePoolCore.TryClaimProviderRelease(netmem))
        {
            throw new InvalidOperationException("The memory is not memory that a page pool is giving back: a provider takes back only what its pool returns, " +
                "so a unit that a buffer or a pool still holds, or one already given back, is refused and nothing changes.");
        }

        // A new generation, so that a handle from the chunk's previous use is stale in its next pool.
        area.Descriptors[netmem.Index].Generation++;

        // Claimed above: thrown from this wait, an interrupt would leave the chunk with nobody. Kept for later instead.
        bool interrupted = false;
        LockWait.EnterKeepingInterrupt(_lock, ref interrupted);
        try
        {
            _chunks.Free((long)area.DeviceAddressBase + ((long)netmem.Index << area.ChunkShift), _chunkSize);
        }
        finally
        {
            _lock.Exit();
            Arena.KeepInterrupt(interrupted);
        }
    }

    /// <inheritdoc/>
    /// <exception cref="InvalidOperationException">Called by anyone but the pool being released.</exception>
    public void Destroy(PagePool pool)
    {
        if (!PagePoolCore.IsCallingProvider(pool))
        {
            PoolThrowHelper.DirectProviderCall(nameof(Destroy));
        }

        // The pool is freed: thrown from this wait, an interrupt would leave it bound (the region's Dispose would refuse
        // for ever). Kept for later instead.
        bool interrupted = false;
        LockWait.EnterKeepingInterrupt(_lock, ref interrupted);
        try
        {
            _pools.Remove(pool);
        }
        finally
        {
            _lock.Exit();
            Arena.KeepInterrupt(interrupted);
        }
    }

    /// <summary>The region's lock (for the tests that hold it).</summary>
    internal Lock LockForTests => _lock;

    /// <summary>
    /// Turns a buffer of this region into a token (what devmem TCP's recvmsg hands the user): the buffer's
    /// reference now belongs to the token, so do not free the buffer; give the token back instead.
    /// </summary>
    /// <exception cref="ArgumentException">The buffer is empty or not from this region.</exception>
    public DevMemToken Export(in PagePoolBuffer buffer)
    {
        if (buffer.IsEmpty || buffer.NetMem.Area is not NetIovArea area || !ReferenceEquals(area.Provider, this))
        {
            throw new ArgumentException("The buffer does not come from this region.", nameof(buffer));
        }

        lock (_lock)
        {
            uint id;
            do
            {
                id = ++_nextToken;
            }
            while (id == 0 || _tokens.ContainsKey(id));

            _tokens.Add(id, buffer);
            return new DevMemToken(id, buffer.DmaAddress, buffer.Length);
        }
    }

    /// <summary>Gives a token back (SO_DEVMEM_DONTNEED): its buffer is freed. Any thread.</summary>
    /// <exception cref="ArgumentException">The token is unknown or was already returned.</exception>
    public void ReturnToken(DevMemToken token)
    {
        PagePoolBuffer buffer;
        lock (_lock)
        {
            if (!_tokens.TryGetValue(token.Id, out buffer) || buffer.DmaAddress != token.Offset || buffer.Length != token.Length)
            {
                throw new ArgumentException($"The token {token.Id} is unknown or was already returned.", nameof(token));
            }

            _tokens.Remove(token.Id);
        }

        buffer.Free();
    }

    /// <summary>Gives several tokens back; stops at the first bad one (which throws).</summary>
    /// <returns>The number of tokens returned.</returns>
    public int ReturnTokens(ReadOnlySpan<DevMemToken> tokens)
    {
        foreach (DevMemToken t in tokens)
        {
            ReturnToken(t);
        }

        return tokens.Length;
    }

    /// <summary>
    /// Releases what the provider acquired (a view pointer, an array pin). Throws while a pool still holds chunks
    /// of the region: unbinding memory a device may still write into would be a use after free.
    /// </summary>
    /// <exception cref="InvalidOperationException">Chunks are still out, or a pool is still bound.</exception>
    public void Dispose()
    {
        lock (_lock)
        {
            if (_disposed)
            {
                return;
            }

            if (_pools.Count != 0 || _chunks.Available != _chunks.Size)
            {
                throw new InvalidOperationException("The region is still in use by a page pool: dispose the pool and return its buffers first.");
            }

            _disposed = true;
        }

        _onDispose?.Invoke();
        GC.SuppressFinalize(this);
    }
}
