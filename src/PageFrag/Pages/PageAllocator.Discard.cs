namespace PageFrag.Pages;

public sealed partial class PageAllocator
{
    /// <summary>
    /// The smallest free block <see cref="DiscardFreeMemory"/> gives back: order 3 (32 KiB, eight 4 KiB
    /// system pages and one page of fragment states), so that a pass makes few system calls.
    /// </summary>
    internal const int DiscardMinOrder = PageConstants.FragCacheMaxOrder;

    /// <summary>Blocks taken off the free lists at a time: the buddy lock is held only to take and to return them.</summary>
    private const int DiscardBatch = 32;

    private readonly object _discardLock = new();
    private long _bytesDiscarded;

    /// <summary>Bytes given back to the operating system by <see cref="DiscardFreeMemory"/> since creation.</summary>
    public long BytesDiscarded => Interlocked.Read(ref _bytesDiscarded);

    /// <summary>
    /// Gives the physical memory of the free blocks of 32 KiB and more in the arenas back to the operating
    /// system, with their fragment states, while the arenas stay: the resident memory a burst left behind goes,
    /// the address space and the arenas' bookkeeping stay for the next one (the kernel's free page reporting).
    /// The next user of such a block reads zeros. Pages on the per-CPU lists are moved to the buddy lists
    /// first. On Linux (<c>madvise(MADV_DONTNEED)</c>); elsewhere it does nothing and returns 0.
    /// </summary>
    /// <remarks>
    /// Blocks are taken off the free lists under the lock in small batches, given back to the operating system
    /// without the lock, and returned to the free lists marked, so that a later pass skips them until they are
    /// split or merged. A block held by anyone (a caller, a fragment cache, a page pool, a per-CPU list) is
    /// never touched. While a batch is out, its pages count as neither free nor in use in
    /// <see cref="GetStats"/>. Never call it on a hot path: it makes system calls; the Kestrel factory runs it
    /// from its trim timer.
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
            while (total < budget)
            {
                Arena? arena = null;
                int n = 0;
                lock (_buddyLock)
                {
                    foreach (Arena a in _arenas)
                    {
                        if (_disposed)
                        {
                            break;
                        }

                        n = a.IsolateForDiscard(DiscardMinOrder, indexes, orders);
                        if (n > 0)
                        {
                            arena = a;
                            break;
                        }
                    }
                }

                if (n == 0)
                {
                    break;
                }

                try
                {
                    total += DiscardBlocks(arena!, indexes[..n], orders[..n]);
                }
                finally
                {
                    lock (_buddyLock)
                    {
                        for (int i = 0; i < n; i++)
                        {
                            // An arena dropped by Dispose meanwhile is left to the garbage collector.
                            if (!_disposed)
                            {
                                arena!.ReturnDiscarded(indexes[i], orders[i]);
                            }
                        }
                    }
                }
            }
        }

        Interlocked.Add(ref _bytesDiscarded, total);
        return total;
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
    /// Gives back the memory of isolated blocks and the pinned state bytes that describe them, after sorting the
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
            PhysicalMemory.Discard(states + (nint)(offset >> Arena.MarkShift), length >> Arena.MarkShift);
        }

        return total;
    }
}
