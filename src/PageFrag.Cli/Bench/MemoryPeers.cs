using System.Buffers;
using System.Runtime.InteropServices;
using DotNetty.Buffers;
using DotNetty.Common;
using PageFrag.Frag;
using PageFrag.Pages;
using PageFrag.Pool;

namespace PageFrag.Cli.Bench;

/// <summary>
/// A peer in the memory scenario: a window of live receive buffers, one per slot, and what the allocator
/// keeps for them. Each allocation fills its whole buffer, as a receive writes the packet, so that the
/// working set sees every byte.
/// </summary>
internal interface IMemoryPeer : IDisposable
{
    /// <summary>How <see cref="KeptBytes"/> is counted, for the report.</summary>
    public string KeptDefinition { get; }

    /// <summary>Allocates <paramref name="size"/> bytes into the empty <paramref name="slot"/> and fills them.</summary>
    public void Alloc(int slot, int size);

    /// <summary>Frees the buffer in <paramref name="slot"/>.</summary>
    public void Free(int slot);

    /// <summary>Bytes the allocator keeps from reuse for the live buffers now.</summary>
    public long KeptBytes();

    /// <summary>PageFrag rows: the sum of the live buffers' truesize; null elsewhere.</summary>
    public long? TrueSizeBytes { get; }

    /// <summary>PageFrag rows: pages still in use once every slot was freed and the caches drained; null elsewhere.</summary>
    public long? Finish();
}

/// <summary>Creates the memory scenario's peers.</summary>
internal static partial class MemoryPeers
{
    /// <summary>Size of a byte array on the 64-bit GC heap: 8 (header) + 8 (method table) + 8 (length), data rounded up to 8.</summary>
    public static long ArrayBytes(int length) => 24 + (((long)length + 7) & ~7L);

    public static IMemoryPeer Create(BenchPeer peer, int window, PeerResources peers) => peer switch
    {
        BenchPeer.PageFrag => new PageFragPeer(window),
        BenchPeer.PagePool => new PagePoolPeer(window),
        BenchPeer.Slab => new SlabPeer(window),
        BenchPeer.ArrayPool => new ArrayPeer(window, pooled: true),
        BenchPeer.Gc => new ArrayPeer(window, pooled: false),
        BenchPeer.Kestrel => new KestrelPeer(window, peers.KestrelPool),
        BenchPeer.DotNettyHeap => new DotNettyPeer(window, direct: false),
        BenchPeer.DotNettyDirect => new DotNettyPeer(window, direct: true),
        BenchPeer.Native => new NativePeer(window),
        _ => throw new ArgumentOutOfRangeException(nameof(peer), peer, "Not an allocator of scenario 5."),
    };

    /// <summary>
    /// A PageFrag peer whose buffers are fragments of at most <see cref="PieceSize"/> bytes: a packet is one
    /// fragment, a jumbo frame is cut into pieces (4096, 4096, 808). Kept bytes are the private allocator's pages in
    /// use (plus what <see cref="MetadataBytes"/> adds).
    /// </summary>
    private abstract class PiecewisePeer<TFragment>(int window) : IMemoryPeer
        where TFragment : struct
    {
        private const int MaxPieces = 3;
        private readonly TFragment[] _slots = new TFragment[window * MaxPieces];
        private long _trueSize;

        protected PrivatePages Pages { get; } = new();

        public abstract string KeptDefinition { get; }

        public long? TrueSizeBytes => _trueSize;

        protected abstract int PieceSize { get; }

        protected abstract string Name { get; }

        protected virtual long MetadataBytes => 0;

        protected abstract bool TryAlloc(int size, out TFragment fragment);

        protected abstract Span<byte> SpanOf(in TFragment fragment);

        protected abstract int TrueSizeOf(in TFragment fragment);

        protected abstract bool IsEmpty(in TFragment fragment);

        protected abstract void FreeOne(in TFragment fragment);

        /// <summary>Gives the cache's pages back once every slot is free.</summary>
        protected abstract void Retire();

        public void Alloc(int slot, int size)
        {
            int piece = 0;
            for (int left = size; left > 0; left -= PieceSize)
            {
                if (piece == MaxPieces)
                {
                    throw new BenchFailureException($"{size} bytes need more than {MaxPieces} fragments of the {Name}.");
                }

                int length = Math.Min(left, PieceSize);
                if (!TryAlloc(length, out TFragment fragment))
                {
                    throw new BenchFailureException($"the {Name} failed to allocate {length} bytes.");
                }

                SpanOf(fragment).Fill((byte)slot);
                _trueSize += TrueSizeOf(fragment);
                _slots[(slot * MaxPieces) + piece++] = fragment;
            }
        }

        public void Free(int slot)
        {
            for (int i = slot * MaxPieces; i < (slot + 1) * MaxPieces && !IsEmpty(_slots[i]); i++)
            {
                _trueSize -= TrueSizeOf(_slots[i]);
                FreeOne(_slots[i]);
                _slots[i] = default;
            }
        }

        public long KeptBytes() => (Pages.PagesInUse * PageConstants.PageSize) + MetadataBytes;

        public long? Finish()
        {
            for (int slot = 0; slot < _slots.Length / MaxPieces; slot++)
            {
                Free(slot);
            }

            Retire();
            return Pages.PagesInUse;
        }

        public void Dispose() => Pages.Dispose();
    }

    /// <summary>
    /// PageFrag's fragment cache. Larger requests than a page succeed only while the cache holds an order-3 page,
    /// and once the arenas are full the cache may fall back to 4 KiB pages, where they fail: hence pieces of a
    /// page. The pieces are contiguous whenever they land on one page, so they keep the same memory as one
    /// fragment would.
    /// </summary>
    private sealed class PageFragPeer(int window) : PiecewisePeer<PageFragment>(window)
    {
        private PageFragCache? _cache;

        public override string KeptDefinition => "pages in use x 4096 (a page is kept while any fragment on it lives; the cache's current page included)";

        protected override int PieceSize => PageConstants.PageSize;

        protected override string Name => "fragment cache";

        private PageFragCache Cache => _cache ??= new PageFragCache(Pages.Allocator);

        protected override bool TryAlloc(int size, out PageFragment fragment) => Cache.TryAlloc(size, out fragment);

        protected override Span<byte> SpanOf(in PageFragment fragment) => fragment.Span;

        protected override int TrueSizeOf(in PageFragment fragment) => fragment.TrueSize;

        protected override bool IsEmpty(in PageFragment fragment) => fragment.IsEmpty;

        protected override void FreeOne(in PageFragment fragment) => PageFragCache.Free(in fragment);

        protected override void Retire() => _cache?.Drain();
    }

    /// <summary>
    /// PageFrag's slab cache: a packet is one fragment of its size class. Freed slots are reused while the rest of
    /// their page lives, so random release keeps about what is live (docs/random-release.md).
    /// </summary>
    private sealed class SlabPeer(int window) : PiecewisePeer<SlabFragment>(window)
    {
        private SlabCache? _cache;

        public override string KeptDefinition => "pages in use x 4096 + the slot states and bitmaps on the GC heap (a block is kept while any slot on it lives, or while the cache fills it)";

        protected override int PieceSize => SlabCache.MaxSize;

        protected override string Name => "slab cache";

        protected override long MetadataBytes => _cache?.MetadataBytes ?? 0;

        private SlabCache Cache => _cache ??= new SlabCache(Pages.Allocator);

        protected override bool TryAlloc(int size, out SlabFragment fragment) => Cache.TryAlloc(size, out fragment);

        protected override Span<byte> SpanOf(in SlabFragment fragment) => fragment.Span;

        protected override int TrueSizeOf(in SlabFragment fragment) => fragment.TrueSize;

        protected override bool IsEmpty(in SlabFragment fragment) => fragment.IsEmpty;

        protected override void FreeOne(in SlabFragment fragment) => SlabCache.Free(in fragment);

        protected override void Retire() => _cache?.Dispose();
    }

    /// <summary>
    /// PageFrag's page pool (order 0, as most drivers run it): <c>TryAlloc</c> gives fragments up to half a
    /// page and whole pages above; a jumbo frame takes several page-sized buffers, as a multi-buffer receive does.
    /// </summary>
    private sealed class PagePoolPeer : IMemoryPeer
    {
        private const int MaxPieces = 3;
        private readonly PrivatePages _pages = new();
        private readonly PagePool _pool;
        private readonly PagePoolBuffer[] _slots;
        private long _trueSize;

        public PagePoolPeer(int window)
        {
            _pool = new PagePool(new PagePoolOptions { Allocator = _pages.Allocator });
            _slots = new PagePoolBuffer[window * MaxPieces];
        }

        public string KeptDefinition => "pages in use x 4096, less the pages idle in the pool's cache and ring";

        public long? TrueSizeBytes => _trueSize;

        public void Alloc(int slot, int size)
        {
            int piece = 0;
            for (int left = size; left > 0; left -= _pool.PageSize)
            {
                if (piece == MaxPieces)
                {
                    throw new BenchFailureException($"{size} bytes need more than {MaxPieces} pool pages.");
                }

                if (!_pool.TryAlloc(Math.Min(left, _pool.PageSize), out PagePoolBuffer buffer))
                {
                    throw new BenchFailureException($"the page pool failed to allocate {size} bytes.");
                }

                buffer.Span.Fill((byte)slot);
                _trueSize += buffer.TrueSize;
                _slots[(slot * MaxPieces) + piece++] = buffer;
            }
        }

        public void Free(int slot)
        {
            for (int i = slot * MaxPieces; i < (slot + 1) * MaxPieces && !_slots[i].IsEmpty; i++)
            {
                _trueSize -= _slots[i].TrueSize;
                PagePool.Free(in _slots[i]);
                _slots[i] = default;
            }
        }

        public long KeptBytes() =>
            (_pages.PagesInUse - ((long)(_pool.CachedPages + _pool.RingPages) * (_pool.PageSize / PageConstants.PageSize))) * PageConstants.PageSize;

        public long? Finish()
        {
            for (int slot = 0; slot < _slots.Length / MaxPieces; slot++)
            {
                Free(slot);
            }

            _pool.Dispose();
            return _pages.PagesInUse;
        }

        public void Dispose() => _pages.Dispose();
    }

    /// <summary><c>ArrayPool&lt;byte&gt;.Shared</c> (rented arrays) or <c>new byte[]</c>: arrays at their size on the GC heap.</summary>
    private sealed class ArrayPeer(int window, bool pooled) : IMemoryPeer
    {
        private readonly byte[]?[] _slots = new byte[window][];
        private long _kept;

        public string KeptDefinition => pooled
            ? "rented arrays at their GC heap size (power-of-two length + 24 B header)"
            : "arrays at their GC heap size (length rounded up to 8 + 24 B header)";

        public long? TrueSizeBytes => null;

        public void Alloc(int slot, int size)
        {
            byte[] array = pooled ? ArrayPool<byte>.Shared.Rent(size) : new byte[size];
            array.AsSpan(0, size).Fill((byte)slot);
            _kept += ArrayBytes(array.Length);
            _slots[slot] = array;
        }

        public void Free(int slot)
        {
            byte[] array = _slots[slot]!;
            _kept -= ArrayBytes(array.Length);
            if (pooled)
            {
                ArrayPool<byte>.Shared.Return(array);
            }

            _slots[slot] = null;
        }

        public long KeptBytes() => _kept;

        public long? Finish()
        {
            for (int i = 0; i < _slots.Length; i++)
            {
                if (_slots[i] is not null)
                {
                    Free(i);
                }
            }

            return null;
        }

        public void Dispose()
        {
        }
    }

    /// <summary>Kestrel's pool: one 4096-byte block per buffer; a jumbo frame takes three, as a pipe's segments would.</summary>
    private sealed class KestrelPeer(int window, MemoryPool<byte> pool) : IMemoryPeer
    {
        private const int MaxPieces = 3;
        private readonly IMemoryOwner<byte>?[] _slots = new IMemoryOwner<byte>[window * MaxPieces];
        private long _kept;

        public string KeptDefinition => "blocks at their GC heap size (each block is its own pinned 4096-byte array + 24 B header)";

        public long? TrueSizeBytes => null;

        public void Alloc(int slot, int size)
        {
            int piece = 0;
            for (int left = size; left > 0; left -= pool.MaxBufferSize)
            {
                if (piece == MaxPieces)
                {
                    throw new BenchFailureException($"{size} bytes need more than {MaxPieces} Kestrel blocks.");
                }

                int length = Math.Min(left, pool.MaxBufferSize);
                IMemoryOwner<byte> block = pool.Rent(length);
                block.Memory.Span[..length].Fill((byte)slot);
                _kept += BlockBytes(block);
                _slots[(slot * MaxPieces) + piece++] = block;
            }
        }

        public void Free(int slot)
        {
            for (int i = slot * MaxPieces; i < (slot + 1) * MaxPieces && _slots[i] is IMemoryOwner<byte> block; i++)
            {
                _kept -= BlockBytes(block);
                block.Dispose();
                _slots[i] = null;
            }
        }

        public long KeptBytes() => _kept;

        public long? Finish()
        {
            for (int slot = 0; slot < _slots.Length / MaxPieces; slot++)
            {
                Free(slot);
            }

            return null;
        }

        public void Dispose()
        {
        }

        // Each block of ASP.NET Core 10's pool owns a whole pinned array; were it a slice of a shared slab,
        // the slice alone would be counted.
        private static long BlockBytes(IMemoryOwner<byte> block) =>
            MemoryMarshal.TryGetArray<byte>(block.Memory, out ArraySegment<byte> segment) && segment.Offset == 0 && segment.Count == segment.Array!.Length
                ? ArrayBytes(segment.Array.Length)
                : block.Memory.Length;
    }

    /// <summary>
    /// DotNetty's pooled allocator, a fresh one per measurement (default arenas, 8 KiB pages, 16 MiB chunks).
    /// Kept bytes come from its arena metrics: over every chunk of the heap (or direct) arenas, chunk size
    /// less free bytes. Buffers parked in DotNetty's thread cache count as used, as they are.
    /// </summary>
    private sealed class DotNettyPeer : IMemoryPeer
    {
        private readonly PooledByteBufferAllocator _allocator;
        private readonly bool _direct;
        private readonly IByteBuffer?[] _slots;

        public DotNettyPeer(int window, bool direct)
        {
            ResourceLeakDetector.Level = ResourceLeakDetector.DetectionLevel.Disabled;
            _allocator = new PooledByteBufferAllocator(preferDirect: direct);
            _direct = direct;
            _slots = new IByteBuffer[window];
        }

        public string KeptDefinition => "arena metrics: sum over chunks of (chunk size - free bytes)";

        public long? TrueSizeBytes => null;

        public void Alloc(int slot, int size)
        {
            IByteBuffer buffer = _direct ? _allocator.DirectBuffer(size) : _allocator.HeapBuffer(size);
            buffer.Array.AsSpan(buffer.ArrayOffset, size).Fill((byte)slot);
            _slots[slot] = buffer;
        }

        public void Free(int slot)
        {
            _slots[slot]!.Release();
            _slots[slot] = null;
        }

        public long KeptBytes()
        {
            long used = 0;
            IReadOnlyList<IPoolArenaMetric> arenas = _direct ? _allocator.Metric.DirectArenas() : _allocator.Metric.HeapArenas();
            foreach (IPoolArenaMetric arena in arenas)
            {
                foreach (IPoolChunkListMetric list in arena.ChunkLists)
                {
                    foreach (IPoolChunkMetric chunk in list)
                    {
                        used += chunk.ChunkSize - chunk.FreeBytes;
                    }
                }
            }

            return used;
        }

        public long? Finish()
        {
            for (int i = 0; i < _slots.Length; i++)
            {
                if (_slots[i] is not null)
                {
                    Free(i);
                }
            }

            return null;
        }

        public void Dispose()
        {
        }
    }

    /// <summary>NativeMemory (malloc): on Linux, <c>malloc_usable_size</c> + the 8-byte chunk header of glibc.</summary>
    private sealed unsafe partial class NativePeer(int window) : IMemoryPeer
    {
        private readonly nint[] _slots = new nint[window];
        private readonly long[] _footprints = new long[window];
        private readonly bool _usable = OperatingSystem.IsLinux() && ProbeUsableSize();
        private long _kept;

        public string KeptDefinition => _usable
            ? "malloc_usable_size + 8 B chunk header per block"
            : "requested bytes (malloc_usable_size is not available here)";

        public long? TrueSizeBytes => null;

        public void Alloc(int slot, int size)
        {
            void* p = NativeMemory.Alloc((nuint)size);
            if (p is null)
            {
                throw new BenchFailureException($"malloc failed for {size} bytes.");
            }

            new Span<byte>(p, size).Fill((byte)slot);
            long footprint = _usable ? (long)MallocUsableSize(p) + 8 : size;
            _kept += footprint;
            _footprints[slot] = footprint;
            _slots[slot] = (nint)p;
        }

        public void Free(int slot)
        {
            void* p = (void*)_slots[slot];
            _kept -= _footprints[slot];
            NativeMemory.Free(p);
            _slots[slot] = 0;
        }

        public long KeptBytes() => _kept;

        public long? Finish()
        {
            for (int i = 0; i < _slots.Length; i++)
            {
                if (_slots[i] != 0)
                {
                    Free(i);
                }
            }

            return null;
        }

        public void Dispose()
        {
        }

        private static bool ProbeUsableSize()
        {
            try
            {
                void* p = NativeMemory.Alloc(1);
                nuint usable = MallocUsableSize(p);
                NativeMemory.Free(p);
                return usable >= 1;
            }
            catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
            {
                return false;
            }
        }

        [LibraryImport("libc", EntryPoint = "malloc_usable_size")]
        private static partial nuint MallocUsableSize(void* pointer);
    }
}
