using System.Numerics;
using System.Runtime.CompilerServices;
using PageFrag.Pages;

namespace PageFrag.Pool;

// Why NetMem, NetMemArea and IMemoryProvider live in Pool/ and not in Providers/: the page pool must speak
// in netmem handles and call provider hooks (the kernel's page_pool.c includes netmem.h and the mp_ops),
// while concrete providers need the pool to stamp their chunks. Putting the handle and the interface here
// keeps the dependency one-way, Pages <- Pool <- Providers, with Providers holding only implementations.

/// <summary>
/// A block of memory that <see cref="NetMem"/> handles point into: either an arena of host pages or a memory
/// provider's area of chunks (the kernel's <c>net_iov_area</c>). It carries, per chunk, the descriptor with the
/// page pool's fields (pool back-pointer, <c>pp_ref_count</c>, device address), so the pool reads and writes
/// them the same way for both kinds.
/// </summary>
/// <remarks>
/// Immutable after construction, safe to read from any thread. The descriptors are written by whoever owns the
/// chunk at the time (the provider while it is free, the pool while it is in the pool).
/// </remarks>
public abstract class NetMemArea
{
    /// <summary>Per-chunk descriptors; for host pages this is the arena's own descriptor array.</summary>
    internal readonly PageDescriptor[] Descriptors;

    /// <summary>Address of chunk 0 (for an unreadable area, a placeholder that is never dereferenced).</summary>
    internal readonly nint BaseAddress;

    /// <summary>log2 of the distance between chunk indexes: 12 for host pages (an index is a page index).</summary>
    internal readonly int ChunkShift;

    /// <summary>The whole area as memory (array-backed for host pages), sliced without allocating.</summary>
    internal readonly Memory<byte> WholeMemory;

    /// <summary>
    /// Fragment states, one byte per 2^<see cref="FragStateShift"/> bytes of the area: 0, or the live tag of the
    /// fragment that starts there (<see cref="Arena.LiveTag"/>). For host pages it is the arena's own array.
    /// </summary>
    internal readonly byte[] FragStates;

    /// <summary>log2 of the bytes per state byte: 3 for host pages (shared with fragment caches), 6 for provider
    /// areas (pool fragments start on 64-byte boundaries).</summary>
    internal readonly int FragStateShift;

    /// <summary>Whether a pool with <see cref="PagePoolFlags.DmaMap"/> maps the chunks itself (host pages) or
    /// the provider already gave them device addresses (provider memory).</summary>
    internal readonly bool NeedsDmaMapping;

    /// <summary>The memory node (NUMA node analogue); -1 matches any preference (provider memory).</summary>
    internal readonly int NodeId;

    /// <summary>False for device memory the CPU must not touch.</summary>
    internal readonly bool Readable;

    /// <summary>
    /// True when a CPU accessor of a handle must take the slow check: the memory is unreadable, or the
    /// detection mode (<see cref="DetectMisuse"/>) is on. One field, so the default mode pays one predictable
    /// branch, the one the readability test already took.
    /// </summary>
    internal readonly bool CheckAccess;

    private readonly bool _detectMisuse;

    // True for an arena's area: its states are laid out by Arena.StateIndex; otherwise one byte per 2^FragStateShift bytes in order.
    private readonly bool _arenaStates;

    /// <summary>The index in <see cref="FragStates"/> of the state of a fragment that starts at <paramref name="start"/> (an area offset).</summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)]
    internal int StateIndex(int start) => _arenaStates ? Arena.StateIndex(FragStates, start) : start >> FragStateShift;

    /// <summary>
    /// The index of the chunk whose block holds the area offset <paramref name="start"/> now: for host pages the
    /// head of the start's page (the allocator splits and merges blocks, so a page that was part of one pool page
    /// can be part of another block later), for provider areas the start's own chunk. Meaningful only while a
    /// live fragment starting there keeps that block allocated.
    /// </summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)]
    internal int HeadOf(int start) => _arenaStates ? Volatile.Read(ref Descriptors[start >> ChunkShift].HeadIndex) : start >> ChunkShift;

    /// <summary>True when no fragment starts in [<paramref name="byteOffset"/>, +<paramref name="length"/>) of the area.</summary>
    internal bool NoLiveFragments(int byteOffset, int length) => _arenaStates
        ? Arena.NoLiveFragments(FragStates, byteOffset, length)
        : !FragStates.AsSpan(byteOffset >> FragStateShift, Math.Max(1, length >> FragStateShift)).ContainsAnyExcept((byte)0);

    private protected NetMemArea(PageDescriptor[] descriptors, nint baseAddress, int chunkShift, Memory<byte> memory,
        byte[] fragStates, int fragStateShift, bool needsDmaMapping, int node, bool readable)
    {
        Descriptors = descriptors;
        BaseAddress = baseAddress;
        ChunkShift = chunkShift;
        WholeMemory = memory;
        FragStates = fragStates;
        FragStateShift = fragStateShift;
        _arenaStates = this is HostPageArea;
        NeedsDmaMapping = needsDmaMapping;
        NodeId = node;
        Readable = readable;
        CheckAccess = !readable;
    }

    /// <summary>
    /// The detection mode (<see cref="PageAllocatorOptions.DetectMisuse"/>): CPU accessors of a handle whose
    /// memory moved on to a new generation (freed, recycled, handed out again) throw
    /// <see cref="InvalidOperationException"/>. Host areas take it from their arena's allocator; provider areas
    /// have it in Debug builds of PageFrag.
    /// </summary>
    internal bool DetectMisuse
    {
        get => _detectMisuse;
        private protected init
        {
            _detectMisuse = value;
            CheckAccess = value || !Readable;
        }
    }

    /// <summary>True when the CPU may read and write the area's bytes.</summary>
    public bool IsReadable => Readable;

    /// <summary>The memory node of the area; -1 for provider memory, which suits any pool.</summary>
    public int Node => NodeId;

    /// <summary>Number of chunks (pages for a host arena).</summary>
    public int ChunkCount => Descriptors.Length;
}

/// <summary>The host-page view of one allocator arena, created once per arena on first use by a pool.</summary>
internal sealed class HostPageArea : NetMemArea
{
    private static readonly ConditionalWeakTable<Arena, HostPageArea> s_areas = new();

    public readonly Arena Arena;

    private HostPageArea(Arena arena)
        : base(arena.Pages, arena.BaseAddress, PageConstants.PageShift,
            new Memory<byte>(arena.Array, arena.ArrayOffset, arena.ByteLength), arena.FragStates,
            Arena.MarkShift, needsDmaMapping: true, node: 0, readable: true)
    {
        Arena = arena;
        DetectMisuse = arena.DetectMisuse;
    }

    /// <summary>The area of <paramref name="arena"/>; lock-free once created (slow paths only).</summary>
    public static HostPageArea For(Arena arena) =>
        s_areas.TryGetValue(arena, out HostPageArea? area) ? area : s_areas.GetValue(arena, static a => new HostPageArea(a));
}

/// <summary>
/// An area of provider memory split into equal chunks (the kernel's <c>net_iov_area</c> with its
/// <c>net_iov</c>s): each chunk has a descriptor with the pool fields and a device address, but no host page.
/// Memory providers create one per contiguous piece of memory they bind.
/// </summary>
/// <remarks>Immutable and any-thread; each chunk's descriptor belongs to the provider while the chunk is free and
/// to the page pool while the chunk is allocated.</remarks>
public sealed class NetIovArea : NetMemArea
{
    /// <summary>Creates an area of <paramref name="chunkCount"/> chunks of <paramref name="chunkSize"/> bytes.</summary>
    /// <param name="provider">The provider that owns the memory and takes chunks back.</param>
    /// <param name="baseAddress">Address of the first chunk; must stay valid until the provider is destroyed.
    /// Ignored (may be 0) for unreadable memory.</param>
    /// <param name="memory">The area as <see cref="Memory{T}"/>, or default when the memory is unreadable.</param>
    /// <param name="chunkSize">A power of two from 4096 (one page) to 1 GiB.</param>
    /// <param name="chunkCount">At least 1; chunkSize × chunkCount at most 1 GiB.</param>
    /// <param name="deviceAddressBase">Device address of chunk 0; chunk i has base + i × chunkSize.</param>
    /// <param name="readable">False for device memory: CPU access to its buffers throws <see cref="NetMemUnreadableException"/>.</param>
    /// <exception cref="ArgumentNullException"><paramref name="provider"/> is null.</exception>
    /// <exception cref="ArgumentOutOfRangeException">A size is out of range, or <paramref name="memory"/> is shorter than the area.</exception>
    public NetIovArea(IMemoryProvider provider, nint baseAddress, Memory<byte> memory, int chunkSize, int chunkCount,
        ulong deviceAddressBase, bool readable)
        : base(CreateDescriptors(chunkSize, chunkCount, deviceAddressBase), baseAddress, Log2Checked(chunkSize), memory,
            new byte[Math.Max(1, (int)(((long)chunkSize * chunkCount) >> 6))], fragStateShift: 6,
            needsDmaMapping: false, node: -1, readable: readable)
    {
        ArgumentNullException.ThrowIfNull(provider);
        if (readable && memory.Length < (long)chunkSize * chunkCount)
        {
            ThrowHelper.ArgumentOutOfRange(nameof(memory), memory.Length, "A readable area needs memory that covers every chunk.");
        }

        Provider = provider;
        ChunkSize = chunkSize;

        // Provider memory is not tied to one allocator (several pools and allocators may share an area), so
        // it follows the option's own default: checked in Debug builds of PageFrag, not in Release.
#if DEBUG
        DetectMisuse = true;
#endif
        DeviceAddressBase = deviceAddressBase;
    }

    /// <summary>The provider that owns the area.</summary>
    public IMemoryProvider Provider { get; }

    /// <summary>Bytes per chunk.</summary>
    public int ChunkSize { get; }

    /// <summary>Device address of chunk 0.</summary>
    public ulong DeviceAddressBase { get; }

    /// <summary>A handle to chunk <paramref name="index"/> with its current generation, for a provider to hand
    /// to the pool from <see cref="IMemoryProvider.AllocNetMems"/>.</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="index"/> is outside the area.</exception>
    public NetMem GetChunk(int index)
    {
        if ((uint)index >= (uint)Descriptors.Length)
        {
            ThrowHelper.ArgumentOutOfRange(nameof(index), index, $"The chunk index must be between 0 and {Descriptors.Length - 1}.");
        }

        return new NetMem(this, index, Descriptors[index].Generation);
    }

    /// <summary>The chunk index that holds device address <paramref name="deviceAddress"/>, or -1.</summary>
    public int IndexOf(ulong deviceAddress)
    {
        ulong rel = deviceAddress - DeviceAddressBase;
        ulong index = rel >> ChunkShift;
        return deviceAddress >= DeviceAddressBase && index < (ulong)Descriptors.Length ? (int)index : -1;
    }

    private static int Log2Checked(int chunkSize)
    {
        if (chunkSize < PageConstants.PageSize || chunkSize > (1 << 30) || !BitOperations.IsPow2(chunkSize))
        {
            ThrowHelper.ArgumentOutOfRange(nameof(chunkSize), chunkSize, "The chunk size must be a power of two from 4096 to 1073741824 bytes.");
        }

        return BitOperations.Log2((uint)chunkSize);
    }

    private static PageDescriptor[] CreateDescriptors(int chunkSize, int chunkCount, ulong deviceAddressBase)
    {
        int shift = Log2Checked(chunkSize);
        if (chunkCount < 1 || (long)chunkSize * chunkCount > (1L << 30))
        {
            ThrowHelper.ArgumentOutOfRange(nameof(chunkCount), chunkCount, "An area holds at least one chunk and at most 1 GiB.");
        }

        var descriptors = new PageDescriptor[chunkCount];
        for (int i = 0; i < chunkCount; i++)
        {
            ref PageDescriptor d = ref descriptors[i];

            // A chunk looks like a head page with one reference that nobody else can take, so the pool's
            // "can this be recycled?" test (refcount 1, not pfmemalloc) holds without a per-kind branch.
            d.RefCount = 1;
            d.HeadIndex = i;
            d.Flags = PageFlags.Head;
            d.Order = (byte)(shift - PageConstants.PageShift);
            d.Next = -1;
            d.Prev = -1;
            d.DmaAddress = deviceAddressBase + ((ulong)i << shift);
        }

        return descriptors;
    }
}
