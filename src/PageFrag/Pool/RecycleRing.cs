using System.Runtime.InteropServices;

namespace PageFrag.Pool;

/// <summary>
/// The pool's recycle ring (the kernel's <c>ptr_ring</c>): a bounded lock-free queue that any thread may push
/// into and that one consumer at a time pops from: the owner (refill) while the pool is alive, the release path
/// (scrub, under the pool's release lock) once it is disposed.
/// </summary>
/// <remarks>
/// D. Vyukov's bounded queue: each slot carries a sequence number that says whose turn it is. A producer claims
/// a position with one compare-exchange and publishes the item by advancing the slot's sequence; the single
/// consumer reads the slot once its sequence says it is published and hands it to the next lap. The slot array
/// is the capacity rounded up to a power of two, and a producer also refuses while the capacity's count of
/// entries sits between the positions, so the ring holds exactly the capacity asked for. Full and empty are seen without locks and never block. Capacity is a power of two so that
/// a position maps to a slot with a mask.
/// </remarks>
internal sealed class RecycleRing
{
    private readonly Slot[] _slots;
    private readonly int _mask;
    private readonly long _limit;
    private Positions _positions;

    public RecycleRing(int capacity)
    {
        // ptr_ring holds exactly pool_size entries: the slot array is a power of two for the mask, but a
        // producer only claims a position while fewer than _limit entries are between the two positions.
        _limit = Math.Max(1, capacity);
        int size = (int)Math.Max(1, System.Numerics.BitOperations.RoundUpToPowerOf2((uint)capacity));
        _slots = new Slot[size];
        _mask = size - 1;
        for (int i = 0; i < size; i++)
        {
            _slots[i].Sequence = i;
        }
    }

    /// <summary>The most entries the ring holds (the pool size, exactly).</summary>
    public int Capacity => (int)_limit;

    /// <summary>Entries in the ring; exact only when nobody pushes or pops.</summary>
    public int Count => (int)Math.Max(0, Volatile.Read(ref _positions.Enqueue) - Volatile.Read(ref _positions.Dequeue));

    public bool TryEnqueue(in NetMem item)
    {
        long pos = Volatile.Read(ref _positions.Enqueue);
        while (true)
        {
            ref Slot slot = ref _slots[(int)pos & _mask];
            long diff = Volatile.Read(ref slot.Sequence) - pos;
            if (diff == 0)
            {
                // The consumer publishes its position after it frees a slot, so the count seen here is never
                // below the real one: the bound can refuse a little early, never overshoot.
                if (pos - Volatile.Read(ref _positions.Dequeue) >= _limit)
                {
                    return false;
                }

                long seen = Interlocked.CompareExchange(ref _positions.Enqueue, pos + 1, pos);
                if (seen == pos)
                {
                    slot.Item = item;
                    Volatile.Write(ref slot.Sequence, pos + 1);
                    return true;
                }

                pos = seen;
            }
            else if (diff < 0)
            {
                // The slot still holds an item from one lap ago: full.
                return false;
            }
            else
            {
                pos = Volatile.Read(ref _positions.Enqueue);
            }
        }
    }

    /// <summary>
    /// Pops one entry. Single consumer: the caller must be the only thread popping (the pool's owner while it
    /// is alive, the release path under its lock afterwards), so no compare-exchange is needed on this side.
    /// </summary>
    public bool TryDequeue(out NetMem item)
    {
        long pos = _positions.Dequeue;
        ref Slot slot = ref _slots[(int)pos & _mask];
        if (Volatile.Read(ref slot.Sequence) != pos + 1)
        {
            item = default;
            return false;
        }

        item = slot.Item;
        slot.Item = default;

        // Hand the slot to the producer of the next lap, then publish the new position for Count.
        Volatile.Write(ref slot.Sequence, pos + _mask + 1);
        Volatile.Write(ref _positions.Dequeue, pos + 1);
        return true;
    }

    /// <summary>Entries ever pushed (the pool's "ring" recycle count, free of an extra counter).</summary>
    public long TotalEnqueued => Volatile.Read(ref _positions.Enqueue);

    /// <summary>True when the next slot to pop holds nothing (__ptr_ring_empty); a hint under concurrency.</summary>
    public bool IsEmpty
    {
        get
        {
            long pos = Volatile.Read(ref _positions.Dequeue);
            return Volatile.Read(ref _slots[(int)pos & _mask].Sequence) != pos + 1;
        }
    }

    private struct Slot
    {
        public long Sequence;
        public NetMem Item;
    }

    // Producers and consumers hammer different counters: keep them on different cache lines.
    [StructLayout(LayoutKind.Explicit, Size = 192)]
    private struct Positions
    {
        [FieldOffset(64)]
        public long Enqueue;

        [FieldOffset(128)]
        public long Dequeue;
    }
}
