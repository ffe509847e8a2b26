namespace PageFrag.Pool;

/// <summary>What a <see cref="PagePool"/> does for the device (PP_FLAG_*). A plain value, any thread.</summary>
[Flags]
public enum PagePoolFlags
{
    /// <summary>Neither mapping nor syncing.</summary>
    None = 0,

    /// <summary>Give each host page a device address when it enters the pool and keep it while the page is
    /// recycled (PP_FLAG_DMA_MAP).</summary>
    DmaMap = 1,

    /// <summary>Sync <c>[Offset, Offset + min(dmaSyncSize, MaxLen))</c> for the device when a page is recycled
    /// (PP_FLAG_DMA_SYNC_DEV). Requires <see cref="DmaMap"/> and a non-zero <see cref="PagePoolOptions.MaxLen"/>.</summary>
    DmaSyncForDevice = 2,
}
