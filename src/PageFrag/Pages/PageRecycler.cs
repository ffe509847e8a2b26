using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace PageFrag.Pages;

/// <summary>
/// A fragment cache's recycle slots: free order-3 blocks that the cache carved and whose last fragment another
/// thread freed, parked for that cache's next refill (issue 14, aims 2 and 4; a deviation from the kernel's
/// <c>page_frag_cache</c>, argued in docs/kernel-map.md).
/// </summary>
/// <remarks>
/// <para>A block's way without these slots: the thread that drops its last reference puts it on its own CPU's list
/// (a lock, and a batch to the transfer stack every few blocks: another lock), and the cache's refill on the other
/// CPU takes it from there through the same two locks, writes the block's eight descriptors again and bumps the
/// shared counters; on this project's VM each of those lines costs 70-220 ns to move between the two vCPUs. Here
/// the releasing thread writes the block's head descriptor (a line it already holds after its last decrement) and
/// swaps the block's address into one slot; the refill swaps it out. One line of slots and the head descriptor move
/// per block; the tail descriptors are not written at all, so the freeing thread's reads of their head index hit
/// its own cache.</para>
/// <para><b>Who owns a parked block.</b> Nobody who can free it: it has no reference, its head carries
/// <see cref="PageFlags.PerCpu"/> (every free path refuses it as "not allocated") and a generation one above its last
/// use (every stale handle is refused). It is free memory in the accounting: not charged (<c>PagesInUse</c>), counted
/// in <c>CachedPages</c>. Whoever swaps an address out of a slot owns that block: the cache's refill carves it, every
/// other taker (the allocator's <c>DrainPerCpuLists</c>, <c>Trim</c>, a pre-failure drain, the cache's
/// <c>Drain</c>/<c>Dispose</c>/finalizer) gives it to the per-CPU lists or the buddy lists. A slot is changed only by
/// compare-and-swap or exchange, so each parked block is taken exactly once, and a block is parked only by the
/// thread that dropped its last reference, so it is never in two places.</para>
/// <para><b>Closing.</b> A disposed or collected cache closes its slots (a flag, then it empties them). A put
/// re-reads the flag after its swap (both are full fences): if the slots were closed meanwhile it takes its block
/// back when it still can, else the closer took it. So no block stays parked for a cache that will never refill.</para>
/// <para><b>How many.</b> A cache has <see cref="Capacity"/> slots but parks in only the first
/// <see cref="PageAllocator.RecycleLimit"/>: the allocator's budget (<see cref="PageAllocator.RecycleBudget"/>, eight
/// blocks per CPU) shared out among its caches, at least one each. A benchmark's two or four caches get all eight; a
/// Kestrel server's fourteen thread caches get one each, so its slots keep at most 448 KiB instead of 3.5 MiB of
/// free pages resident under load (bench/README.md, session 8). A page that finds no room goes to the per-CPU lists
/// as it would without the slots.</para>
/// <para>Addresses, not references, go in the slots (a slot is one 64-bit word, changed atomically on every
/// platform); the arena is found again through the process's arena registry, which holds every arena with a block
/// that is not free on its buddy lists.</para>
/// </remarks>
internal sealed class PageRecycler
{
    /// <summary>Slots per cache: eight order-3 blocks (256 KiB), one cache line of addresses.</summary>
    public const int Capacity = 8;

    /// <summary>The only order that is parked: the fragment cache's page (order 0 fallback pages are not).</summary>
    public const int Order = PageConstants.FragCacheMaxOrder;

    private Slots _slots;
    private int _closed;

    /// <summary>The allocator's list of registered slots (under its lock).</summary>
    internal PageRecycler? NextRegistered;

    /// <inheritdoc cref="NextRegistered"/>
    internal PageRecycler? PrevRegistered;

    /// <summary>Whether the slots are on the allocator's list (under its lock).</summary>
    internal bool Registered;

    /// <summary>Blocks the cache's refills took from here (written by the cache's owner only; a test hook).</summary>
    internal long Taken;

    /// <summary>True once the cache closed its slots (disposed or collected).</summary>
    public bool IsClosed => Volatile.Read(ref _closed) != 0;

    /// <summary>Blocks parked now (a snapshot).</summary>
    public int Count
    {
        get
        {
            int n = 0;
            for (int i = 0; i < Capacity; i++)
            {
                if (Volatile.Read(ref _slots[i]) != 0)
                {
                    n++;
                }
            }

            return n;
        }
    }

    /// <summary>
    /// A slot among the first <paramref name="limit"/> that looked empty, or -1 when all were taken (a hint:
    /// <see cref="TryPut"/> decides).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public int FindEmpty(int limit = Capacity)
    {
        for (int i = 0; i < limit; i++)
        {
            if (Volatile.Read(ref _slots[i]) == 0)
            {
                return i;
            }
        }

        return -1;
    }

    /// <summary>
    /// Parks <paramref name="address"/> in an empty slot among the first <paramref name="limit"/>, trying
    /// <paramref name="hint"/> first: one compare-and-swap (a full fence, so the caller's writes to the block's
    /// descriptor are visible to whoever takes it). False when every such slot is taken.
    /// </summary>
    public bool TryPut(int hint, nint address, int limit = Capacity)
    {
        if (Interlocked.CompareExchange(ref _slots[hint], address, 0) == 0)
        {
            return true;
        }

        for (int i = 0; i < limit; i++)
        {
            if (Interlocked.CompareExchange(ref _slots[i], address, 0) == 0)
            {
                return true;
            }
        }

        return false;
    }

    /// <summary>
    /// Takes one parked block's address (the taker owns the block), or 0 when none is parked. Looks at every slot,
    /// not only those of the current limit: a limit that shrank leaves blocks above it until they are taken.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public nint TryTake()
    {
        for (int i = 0; i < Capacity; i++)
        {
            if (Volatile.Read(ref _slots[i]) != 0)
            {
                nint address = Interlocked.Exchange(ref _slots[i], 0);
                if (address != 0)
                {
                    return address;
                }
            }
        }

        return 0;
    }

    /// <summary>
    /// After a put found the slots closed: takes <paramref name="address"/> out again if it is still parked (true: the
    /// caller owns the block again), else the closer (or a refill) took it.
    /// </summary>
    public bool TryTakeBack(nint address)
    {
        for (int i = 0; i < Capacity; i++)
        {
            if (Interlocked.CompareExchange(ref _slots[i], 0, address) == address)
            {
                return true;
            }
        }

        return false;
    }

    /// <summary>Closes the slots: from now on a put takes its block back (see the remarks). A full fence.</summary>
    public void Close() => Interlocked.Exchange(ref _closed, 1);

    [InlineArray(Capacity)]
    private struct Slots
    {
        private nint _element;
    }
}
