namespace PageFrag.Buffers;

/// <summary>
/// A snapshot of a <see cref="PageFragMemoryPool"/>'s counters. Counts are exact at a quiescent point;
/// while buffers are rented and returned concurrently each field is exact but they may be a moment apart.
/// </summary>
public sealed record PageFragMemoryPoolStats
{
    /// <summary>Buffers rented since creation.</summary>
    public long Rents { get; init; }

    /// <summary>Bytes of memory rented since creation (true sizes: what the buffers took from their pages).</summary>
    public long RentedBytes { get; init; }

    /// <summary>Buffers given back (disposed) since creation.</summary>
    public long Returns { get; init; }

    /// <summary>Buffers rented and not yet given back (fragments outstanding).</summary>
    public long OutstandingBuffers => Rents - Returns;

    /// <summary>Bytes that rented, not yet returned buffers keep from reuse (truesize held).</summary>
    public long OutstandingBytes { get; init; }

    /// <summary>Rents served by a dedicated page block rather than a fragment.</summary>
    public long DedicatedBlocks { get; init; }

    /// <summary>Bytes of pages and blocks the pool took from the allocator.</summary>
    public long AllocatedBytes { get; init; }

    /// <summary>
    /// Bytes still free in the pages the per-thread caches hold, and the buffers parked for their thread's next rent of
    /// the same size (both ready for the next rents).
    /// </summary>
    public long PooledBytes { get; init; }

    /// <summary>Bytes of free page space given back by trimming.</summary>
    public long EvictedBytes { get; init; }

    /// <summary>Pages the per-CPU caches found entirely free when full and reused in place.</summary>
    public long PagesReused { get; init; }

    /// <summary>
    /// Buffers never disposed that the garbage collector found unreachable and whose finalizer gave the
    /// memory back (each also counts in <see cref="Returns"/>, and is reported as a <c>LeakReclaimed</c>
    /// event of the <c>PageFrag</c> event source).
    /// </summary>
    public long ReclaimedBuffers { get; init; }
}
