namespace PageFrag.Providers;

/// <summary>
/// What a consumer of unreadable (device) memory gets instead of bytes, as devmem TCP hands out
/// <c>dmabuf_cmsg</c> entries: where the data lies in the region and how long it is, plus an id to give back
/// with <see cref="RegionMemoryProvider.ReturnToken"/> (SO_DEVMEM_DONTNEED) when the device is done with it.
/// A plain value: any thread may hold it and give it back, once.
/// </summary>
/// <param name="Id">The token to give back.</param>
/// <param name="Offset">Offset of the data in the region (the device address).</param>
/// <param name="Length">Bytes of data.</param>
public readonly record struct DevMemToken(uint Id, ulong Offset, int Length);
