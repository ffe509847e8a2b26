using System.Diagnostics.CodeAnalysis;
using System.Diagnostics.Tracing;

namespace PageFrag;

/// <summary>
/// The <c>PageFrag</c> event source: memory that the garbage collector had to give back because its owner
/// forgot to, page pools whose shutdown stalls on pages in flight, and allocations refused by the memory
/// limit. Visible with <c>dotnet-trace collect --providers PageFrag</c> or an <see cref="EventListener"/>.
/// </summary>
/// <remarks>
/// It sits beside <see cref="ThrowHelper"/>, outside the layers, because every layer writes to it. Each
/// method checks <see cref="EventSource.IsEnabled()"/> first, and every caller is on a cold path (a
/// finalizer, a timer, an allocation failure), never on alloc/free.
/// </remarks>
[EventSource(Name = EventSourceName)]
internal sealed class PageFragEventSource : EventSource
{
    /// <summary>The name listeners and <c>dotnet-trace</c> use.</summary>
    public const string EventSourceName = "PageFrag";

    /// <summary>The single instance.</summary>
    public static readonly PageFragEventSource Log = new();

    /// <summary>Event ids, stable: tools key on them.</summary>
    public static class Ids
    {
        public const int LeakReclaimed = 1;
        public const int PoolStalled = 2;
        public const int LimitReached = 3;
    }

    private PageFragEventSource()
    {
    }

    /// <summary>
    /// An owner (a rented buffer, a chain, a cache, a pool) became unreachable without being disposed; the
    /// garbage collector's finalizer gave back <paramref name="bytes"/> in <paramref name="count"/> buffers.
    /// </summary>
    /// <param name="kind">What leaked: <c>MemoryOwner</c>, <c>FragmentChain</c>, <c>PageFragCache</c>, <c>PagePool</c>, ….</param>
    /// <param name="count">Buffers or pages given back.</param>
    /// <param name="bytes">Bytes given back.</param>
    /// <param name="allocationStack">Where it was allocated, in the detection modes; empty otherwise.</param>
    [UnconditionalSuppressMessage("Trimming", "IL2026", Justification = "The arguments are strings and primitives, which the trimmer keeps.")]
    [Event(Ids.LeakReclaimed, Level = EventLevel.Warning, Message = "{0} collected without Dispose: {1} buffer(s), {2} bytes given back by the finalizer. Allocated at: {3}")]
    public void LeakReclaimed(string kind, long count, long bytes, string allocationStack)
    {
        if (IsEnabled())
        {
            WriteEvent(Ids.LeakReclaimed, kind, count, bytes, allocationStack);
        }
    }

    /// <summary>A disposed page pool still waits for pages in flight (the kernel's "stalled pool shutdown").</summary>
    /// <param name="poolId">The pool's id.</param>
    /// <param name="inFlight">Pages not yet returned.</param>
    /// <param name="seconds">Seconds since the pool was disposed.</param>
    /// <param name="missing">Which pages are missing (addresses, and their allocation stacks in the detection modes).</param>
    [UnconditionalSuppressMessage("Trimming", "IL2026", Justification = "The arguments are strings and primitives, which the trimmer keeps.")]
    [Event(Ids.PoolStalled, Level = EventLevel.Warning, Message = "Stalled page pool shutdown: pool {0}, {1} page(s) in flight after {2} s. Missing: {3}")]
    public void PoolStalled(long poolId, long inFlight, double seconds, string missing)
    {
        if (IsEnabled())
        {
            WriteEvent(Ids.PoolStalled, poolId, inFlight, seconds, missing);
        }
    }

    /// <summary>An allocation was refused because the allocator's memory limit was reached.</summary>
    /// <param name="limitBytes">The limit.</param>
    /// <param name="inUseBytes">Bytes in arenas when it was refused.</param>
    /// <param name="requestedBytes">The size of the refused block.</param>
    [UnconditionalSuppressMessage("Trimming", "IL2026", Justification = "The arguments are strings and primitives, which the trimmer keeps.")]
    [Event(Ids.LimitReached, Level = EventLevel.Informational, Message = "Allocation of {2} bytes refused: the memory limit of {0} bytes is reached ({1} bytes in arenas).")]
    public void LimitReached(long limitBytes, long inUseBytes, long requestedBytes)
    {
        if (IsEnabled())
        {
            WriteEvent(Ids.LimitReached, limitBytes, inUseBytes, requestedBytes);
        }
    }
}
