namespace PageFrag.Pages;

public sealed partial class PageAllocator
{
    /// <summary>
    /// The smallest free block <see cref="DiscardFreeMemory"/> gives back: order 3 (32 KiB, eight 4 KiB
    /// system pages and one page of fragment states), so that a pass makes few system calls.
    /// </summary>
    internal const int DiscardMinOrder = PageConstants.FragCacheMaxOrder;

    /// <summary>Blocks given back per hold of the buddy lock.</summary>
    private const int DiscardBatch = 8;

    private readonly object _discardLock = new();
    private long _bytesDiscarded;

    /// <summary>
    /// Bytes of pages given back to the operating system since creation: by <see cref="DiscardFreeMemory"/>, and
    /// by <see cref="Trim(bool)"/> for the arenas it released (0 on platforms other than Linux).
    /// </summary>
    public long BytesDiscarded => Interlocked.Read(ref _bytesDiscarded);

    /// <summary>
    /// Gives the physical memory of the free blocks of 32 KiB and more in the arenas back to the operating
    /// system, with their fragment states, while the arenas stay: the resident memory a burst left behind goes,
    /// the address space and the arenas' bookkeeping stay for the next one (the kernel's free page reporting).
    /// The next user of such a block reads zeros. Pages on the per-CPU lists are moved to the buddy lists
    /// first. On Linux (<c>madvise(MADV_DONTNEED)</c>); elsewhere it does nothing and returns 0.
    /// </summary>
    /// <remarks>
    /// Only blocks on the buddy free lists are given back, under the allocator's lock, in batches of a few
    /// blocks per hold of the lock (an allocation that needs the lock waits for one batch, never fails for it),
    /// and they are marked, so that a later pass skips them until they are split or merged. A block held by
    /// anyone (a caller, a fragment cache, a page pool, a per-CPU list) is never touched. Never call it on a hot
    /// path: it makes system calls; the Kestrel factory runs it from its trim timer.
    /// </remarks>
    /// <returns>The bytes given back by this call (pages that were not resident count too).</returns>
    /// <exception cref="ObjectDisposedException">The allocator was disposed.</exception>
    public long DiscardFreeMemory()
    {
        if (_disposed)
        {
            ThrowHelper.ObjectDisposed(nameof(PageAllocator));
        }

        if (!PhysicalMemory.IsSupported)
        {
            return 0;
        }

        DrainPerCpuLists();
        Span<int> indexes = stackalloc int[DiscardBatch];
        Span<byte> orders = stackalloc byte[DiscardBatch];
        long total = 0;
        lock (_discardLock)
        {
            // Frees during the pass form new blocks to discard; the budget (every page twice) ends the pass anyway.
            long budget = 2 * TotalPagesNow() * PageConstants.PageSize;
            bool more = true;
            while (more && total < budget)
            {
                more = false;
                lock (_buddyLock)
                {
                    foreach (Arena arena in _arenas)
                    {
                        if (_disposed)
                        {
                            break;
                        }

                        int n = arena.FindUndiscarded(DiscardMinOrder, indexes, orders);
                        if (n > 0)
                        {
                            // Under the lock: the blocks stay free (no one can take one) until they are given back
                            // and marked. One batch per hold of the lock, so allocations wait at most one batch.
                            total += DiscardBlocks(arena, indexes[..n], orders[..n]);
                            more = true;
                            break;
                        }
                    }
                }
            }
        }

        Interlocked.Add(ref _bytesDiscarded, total);
        return total;
    }

    /// <summary>Gives back the memory of an arena that <see cref="Trim(bool)"/> released: all its pages and states.</summary>
    private void DiscardArena(Arena arena)
    {
        long given = PhysicalMemory.Discard(arena.BaseAddress, arena.ByteLength);
        PhysicalMemory.Discard(arena.FragStatesAddress, arena.FragStates.Length);
        GC.KeepAlive(arena);
        Interlocked.Add(ref _bytesDiscarded, given);
    }

    /// <summary>Pages in the arenas now.</summary>
    private long TotalPagesNow()
    {
        long pages = 0;
        foreach (Arena a in Volatile.Read(ref _arenas))
        {
            pages += a.PageCount;
        }

        return pages;
    }

    /// <summary>
    /// Gives back the memory of free blocks (caller holds the buddy lock) and the pinned state bytes that describe them, after sorting the
    /// blocks by index so that neighbours go in one call (which also lets the states of small neighbouring
    /// blocks fill whole system pages). Returns the data bytes given back.
    /// </summary>
    private static long DiscardBlocks(Arena arena, Span<int> indexes, Span<byte> orders)
    {
        // Insertion sort: at most DiscardBatch entries.
        for (int i = 1; i < indexes.Length; i++)
        {
            int index = indexes[i];
            byte order = orders[i];
            int j = i - 1;
            for (; j >= 0 && indexes[j] > index; j--)
            {
                indexes[j + 1] = indexes[j];
                orders[j + 1] = orders[j];
            }

            indexes[j + 1] = index;
            orders[j + 1] = order;
        }

        long total = 0;
        nint states = arena.FragStatesAddress;
        for (int i = 0; i < indexes.Length;)
        {
            int first = indexes[i];
            int end = first + (1 << orders[i]);
            for (i++; i < indexes.Length && indexes[i] == end; i++)
            {
                end += 1 << orders[i];
            }

            long offset = (long)first << PageConstants.PageShift;
            long length = (long)(end - first) << PageConstants.PageShift;
            total += PhysicalMemory.Discard(arena.BaseAddress + (nint)offset, length);
            // The main table's bytes of the run, and its 32 KiB blocks' bytes in the dense table (Arena.StateIndex): blocks
            // first/8..end/8-1 (the run is whole blocks: order 3 or more) at Length - 128 * end/8 .. Length - 128 * first/8.
            // Only whole system pages go.
            PhysicalMemory.Discard(states + (nint)(offset >> Arena.MarkShift), length >> Arena.MarkShift);
            int blocks = PageConstants.FragCacheMaxOrder;
            PhysicalMemory.Discard(
                states + arena.FragStates.Length - ((end >> blocks) << Arena.DenseStrideShift),
                ((end - first) >> blocks) << Arena.DenseStrideShift);
        }

        foreach (int index in indexes)
        {
            arena.MarkDiscarded(index);
        }

        return total;
    }
}
