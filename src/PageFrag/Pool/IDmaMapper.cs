namespace PageFrag.Pool;

/// <summary>
/// The device side of a <see cref="PagePool"/>: gives host pages a device address when they enter the pool and
/// makes their bytes visible to the device when they are recycled (dma_map_page_attrs,
/// dma_unmap_page_attrs, dma_sync_single_range_for_device).
/// </summary>
/// <remarks>
/// <para>The pool calls <see cref="TryMap"/> once per page when it takes the page from the allocator (with
/// <see cref="PagePoolFlags.DmaMap"/>), keeps the address while the page is recycled, and calls
/// <see cref="Unmap"/> when the page leaves the pool. With <see cref="PagePoolFlags.DmaSyncForDevice"/> it calls
/// <see cref="SyncForDevice"/> on each recycle for <c>[Offset, Offset + min(dmaSyncSize, MaxLen))</c>, and for
/// <c>MaxLen</c> bytes right after mapping. Provider memory is never mapped by the pool: its provider sets the
/// device address.</para>
/// <para>Threading: <see cref="TryMap"/> runs on the pool's owner thread; <see cref="Unmap"/> and
/// <see cref="SyncForDevice"/> on any thread that returns or recycles a page.</para>
/// </remarks>
public interface IDmaMapper
{
    /// <summary>Maps a page; false when the mapping fails (the pool then returns the page to the allocator).</summary>
    public bool TryMap(NetMem netmem, out ulong deviceAddress);

    /// <summary>Unmaps a page that leaves the pool.</summary>
    public void Unmap(NetMem netmem, ulong deviceAddress);

    /// <summary>Hands <paramref name="length"/> bytes at <paramref name="offset"/> of the page back to the device.</summary>
    public void SyncForDevice(NetMem netmem, ulong deviceAddress, int offset, int length);
}

/// <summary>
/// The mapper of a host without an IOMMU or a device: the device address is the page's own address, and
/// syncing does nothing but count. The pools' default.
/// </summary>
/// <remarks>Thread-safe: counters are updated with interlocked operations.</remarks>
public sealed class HostDmaMapper : IDmaMapper
{
    private long _maps;
    private long _unmaps;
    private long _syncs;
    private long _syncedBytes;

    /// <summary>Pages mapped so far.</summary>
    public long Maps => Interlocked.Read(ref _maps);

    /// <summary>Pages unmapped so far.</summary>
    public long Unmaps => Interlocked.Read(ref _unmaps);

    /// <summary>Syncs for the device so far.</summary>
    public long Syncs => Interlocked.Read(ref _syncs);

    /// <summary>Bytes covered by those syncs.</summary>
    public long SyncedBytes => Interlocked.Read(ref _syncedBytes);

    /// <inheritdoc/>
    public bool TryMap(NetMem netmem, out ulong deviceAddress)
    {
        deviceAddress = (ulong)netmem.Address;
        Interlocked.Increment(ref _maps);
        return true;
    }

    /// <inheritdoc/>
    public void Unmap(NetMem netmem, ulong deviceAddress) => Interlocked.Increment(ref _unmaps);

    /// <inheritdoc/>
    public void SyncForDevice(NetMem netmem, ulong deviceAddress, int offset, int length)
    {
        Interlocked.Increment(ref _syncs);
        Interlocked.Add(ref _syncedBytes, length);
    }
}
