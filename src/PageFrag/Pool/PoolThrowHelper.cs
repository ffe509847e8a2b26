using System.Diagnostics.CodeAnalysis;

namespace PageFrag.Pool;

/// <summary>Cold throw paths of the pool layer, kept out of the hot methods.</summary>
internal static class PoolThrowHelper
{
    [DoesNotReturn]
    public static void Unreadable() =>
        throw new NetMemUnreadableException("The memory is device memory registered as unreadable: the CPU cannot read or write it. Hand the consumer its (offset, length) token instead.");

    [DoesNotReturn]
    public static void NotOwner(PagePoolCore pool)
    {
        if (pool.IsDisposed)
        {
            // The caller is outside any allocation: if it is the owner a Dispose on another thread left the owner's
            // side to, it gives that side back now.
            pool.FinishOwnerSideIfSafe(finalizer: false);
            throw new ObjectDisposedException(nameof(PagePool), "The page pool was disposed; it can no longer allocate or take pages back directly.");
        }

        throw new InvalidOperationException(
            $"Page pool {pool.Id} allocates only on its owner thread (managed thread {pool.OwnerThreadId}), and this is thread {Environment.CurrentManagedThreadId}. Call SetOwnerThread() on the thread that takes over.");
    }

    [DoesNotReturn]
    public static void DirectProviderCall(string hook) =>
        throw new InvalidOperationException(
            $"Only the page pool calls its memory provider's Init, AllocNetMems and Destroy; this direct call of {hook} is refused and changes nothing " +
            "(it could hand the pool's memory to a second owner, lose a unit for good, or bind or unbind a pool behind its back).");

    [DoesNotReturn]
    public static void NotPoolPage(string paramName) =>
        throw new PageFragDoubleFreeException($"The memory ({paramName}) is not held by a page pool: it was already returned, or never came from one.");

    [DoesNotReturn]
    public static void OtherPool(string paramName) =>
        throw new ArgumentException("The memory belongs to another PagePool.", paramName);

    [DoesNotReturn]
    public static void UseAfterFree() =>
        throw new InvalidOperationException(
            "Use after free: this handle's page was freed or recycled (its generation moved on), so its bytes belong to someone else now. Keep the buffer until you are done with its Span, Memory, ArraySegment or pointer, and free it last.");

    [DoesNotReturn]
    public static void FragmentPage() =>
        ThrowHelper.InvalidOperation("The page is carved into fragments: a page-level put or count change on it would drop references " +
            "that its fragments hold. Free each fragment (PagePool.Free or PutBuffer) instead.");

    [DoesNotReturn]
    public static void StaleHandle() =>
        throw new PageFragDoubleFreeException("The handle is stale: its memory was already put back into the pool (double put).");

    [DoesNotReturn]
    public static void RefUnderflow() =>
        throw new PageFragDoubleFreeException("The page pool reference count (pp_ref_count) would drop below zero: the memory was put more often than it was referenced.");
}

/// <summary>
/// Thrown when CPU code tries to read or write provider memory registered as unreadable (device memory, as with
/// devmem TCP). Consumers of such memory get (offset, length) tokens instead of bytes. Thrown on whichever thread
/// touched the memory; nothing is changed by the failed access.
/// </summary>
public sealed class NetMemUnreadableException : InvalidOperationException
{
    /// <summary>Creates the exception.</summary>
    public NetMemUnreadableException(string message) : base(message)
    {
    }
}
