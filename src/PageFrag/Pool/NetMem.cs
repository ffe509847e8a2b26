using System.Runtime.CompilerServices;
using PageFrag.Pages;

namespace PageFrag.Pool;

/// <summary>
/// A handle to one unit of network memory (the kernel's <c>netmem_ref</c>): either a host page block from a
/// <see cref="PageAllocator"/> or a chunk of provider memory (a <c>net_iov</c>). Both kinds carry the same
/// page pool fields (pool, <see cref="PpRefCount"/>, <see cref="DmaAddress"/>), read through this handle, so a
/// <see cref="PagePool"/> treats them alike.
/// </summary>
/// <remarks>
/// <para>A value handle: copying it takes no reference. It remembers the generation of the memory when it was
/// handed out, so a handle used after its memory was recycled or returned is detected
/// (<see cref="PageFragDoubleFreeException"/>).</para>
/// <para>Reading the accessors is safe from any thread while the caller holds the memory. Unreadable provider
/// memory (device memory) throws <see cref="NetMemUnreadableException"/> from every CPU accessor
/// (<see cref="Span"/>, <see cref="Memory"/>, <see cref="Address"/>, <see cref="Pointer"/>).</para>
/// <para>In the detection mode (<see cref="PageAllocatorOptions.DetectMisuse"/> of the arena's allocator for
/// host pages; Debug builds of PageFrag for provider memory) those accessors also throw
/// <see cref="InvalidOperationException"/> once the memory was freed or recycled (its generation moved on). In
/// the default mode they do not check: a stale handle reads and writes whoever holds the memory now.</para>
/// </remarks>
public readonly struct NetMem : IEquatable<NetMem>
{
    internal readonly NetMemArea? Area;
    internal readonly int Index;
    internal readonly int Generation;

    internal NetMem(NetMemArea area, int index, int generation)
    {
        Area = area;
        Index = index;
        Generation = generation;
    }

    /// <summary>True for the default value and the result of a failed allocation.</summary>
    public bool IsEmpty => Area is null;

    /// <summary>True for provider memory (a <c>net_iov</c>), false for a host page (netmem_is_net_iov).</summary>
    public bool IsNetIov => NonEmpty is NetIovArea;

    /// <summary>True when the CPU may touch the bytes (false for device memory).</summary>
    public bool IsReadable => NonEmpty.Readable;

    /// <summary>The area (arena or provider area) the memory lies in (net_iov_owner).</summary>
    public NetMemArea Owner => NonEmpty;

    /// <summary>Size in bytes: 4096 &lt;&lt; order for host pages, the chunk size for provider memory.</summary>
    public int Length => PageConstants.PageSize << Descriptor.Order;

    /// <summary>The device address given when the memory entered the pool (netmem_get_dma_addr); 0 when unmapped.</summary>
    public ulong DmaAddress => Descriptor.DmaAddress;

    /// <summary>The page pool's reference count on the memory (pp_ref_count).</summary>
    public long PpRefCount => Volatile.Read(ref Descriptor.PpRefCount);

    /// <summary>The pool that currently holds the memory (netmem-&gt;pp), or null.</summary>
    public PagePool? Pool => (Descriptor.Pool as PagePoolCore)?.Shell;

    /// <summary>The memory node (netmem_nid); -1 for provider memory.</summary>
    public int Node => NonEmpty.NodeId;

    /// <summary>Address of the first byte; the memory is pinned.</summary>
    /// <exception cref="NetMemUnreadableException">The memory is device memory.</exception>
    public nint Address
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get
        {
            NetMemArea area = Readable;
            return area.BaseAddress + ((nint)Index << area.ChunkShift);
        }
    }

    /// <summary>The bytes.</summary>
    /// <exception cref="NetMemUnreadableException">The memory is device memory.</exception>
    public unsafe Span<byte> Span => new((void*)Address, Length);

    /// <summary>The bytes as <see cref="Memory{T}"/> (array-backed for host pages).</summary>
    /// <exception cref="NetMemUnreadableException">The memory is device memory.</exception>
    public Memory<byte> Memory
    {
        get
        {
            NetMemArea area = Readable;
            return area.WholeMemory.Slice(Index << area.ChunkShift, Length);
        }
    }

    /// <summary>A pointer to the first byte.</summary>
    /// <exception cref="NetMemUnreadableException">The memory is device memory.</exception>
    public unsafe byte* Pointer => (byte*)Address;

    /// <summary>The host page behind the handle (netmem_to_page); false for provider memory, which has none.</summary>
    public bool TryGetPage(out Page page)
    {
        if (NonEmpty is HostPageArea host)
        {
            page = new Page(host.Arena, Index);
            return true;
        }

        page = default;
        return false;
    }

    internal ref PageDescriptor Descriptor
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => ref NonEmpty.Descriptors[Index];
    }

    /// <summary>Byte offset of the memory inside its area (the key of the double-free marks).</summary>
    internal int AreaOffset => Index << NonEmpty.ChunkShift;

    private NetMemArea NonEmpty
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get
        {
            NetMemArea? area = Area;
            if (area is null)
            {
                ThrowHelper.EmptyHandle("netmem");
            }

            return area;
        }
    }

    private NetMemArea Readable
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get
        {
            NetMemArea area = NonEmpty;
            if (area.CheckAccess)
            {
                CheckAccessSlow(area);
            }

            return area;
        }
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private void CheckAccessSlow(NetMemArea area)
    {
        if (!area.Readable)
        {
            PoolThrowHelper.Unreadable();
        }

        if (area.DetectMisuse && Volatile.Read(ref area.Descriptors[Index].Generation) != Generation)
        {
            PoolThrowHelper.UseAfterFree();
        }
    }

    /// <inheritdoc/>
    public bool Equals(NetMem other) => ReferenceEquals(Area, other.Area) && Index == other.Index && Generation == other.Generation;

    /// <inheritdoc/>
    public override bool Equals(object? obj) => obj is NetMem n && Equals(n);

    /// <inheritdoc/>
    public override int GetHashCode() => HashCode.Combine(Area, Index, Generation);

    /// <summary>Same memory, same generation.</summary>
    public static bool operator ==(NetMem left, NetMem right) => left.Equals(right);

    /// <summary>Different memory or generation.</summary>
    public static bool operator !=(NetMem left, NetMem right) => !left.Equals(right);

    /// <inheritdoc/>
    public override string ToString() =>
        Area is null ? "NetMem(empty)" : $"NetMem({(Area is NetIovArea ? "net_iov" : "page")} {Index}, {Length} B, pp_ref_count {PpRefCount})";
}
