using System.Diagnostics;
using System.Diagnostics.CodeAnalysis;
using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics.X86;

namespace PageFrag.Cli.FragTest;

/// <summary>
/// A bounded single-producer / single-consumer ring (the role the kernel test gives <c>ptr_ring</c>).
/// Exactly one thread uses the <see cref="Producer"/> view and exactly one other thread the
/// <see cref="Consumer"/> view; <see cref="Published"/> and <see cref="Consumed"/> may be read by any thread.
/// </summary>
/// <remarks>
/// <para>Each side keeps its own index in a local (the view struct) and only publishes it, with a release
/// store, every <c>batch</c> items or when it runs out of room / items. The other side reads the
/// published index only when its cached copy says the ring is full (producer) or empty (consumer), so in
/// steady state the two threads share nothing but the slot cache lines themselves:</para>
/// <code>
///   slots:   [ consumed | ready for consumer | written, unpublished | free ... ]
///                       ^ head (published)   ^ tail (published)      ^ producer's local tail
/// </code>
/// <para>Batching costs some effective capacity (up to one batch on each side) and never deadlocks: a side
/// that finds the ring full or empty publishes its own index before it looks at the other's.</para>
/// </remarks>
internal sealed unsafe class SpscRing<T> : IRingCounters
{
    // Slots live in a pinned array at an offset that starts them on a 128-byte boundary, with 128 bytes
    // of padding after them: a batch of 32 slots is then exactly four cache lines, so the consumer never
    // reads a line the producer is still writing, and no other object shares the first or last line.
    private const int Alignment = 128;
    private const int CacheLine = 64;

    private readonly T[] _slots;
    private readonly int _first;
    private readonly int _capacity;
    private readonly int _batch;
    private readonly int _refillRoom;

    // Written only by the consumer / the producer; padded so the two never share a cache line (nor the
    // adjacent line that x86's spatial prefetcher pulls in with it).
    private PaddedIndex _head;
    private PaddedIndex _tail;

    public SpscRing(int capacity)
    {
        if (capacity < 2 || !BitOperations.IsPow2(capacity))
        {
            throw new ArgumentOutOfRangeException(nameof(capacity), capacity, "The ring size must be a power of two of at least 2.");
        }

        int pad = Alignment / Unsafe.SizeOf<T>();
        _slots = GC.AllocateArray<T>(capacity + 2 * pad, pinned: true);
        nint start = (nint)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(_slots));
        _first = (int)((Alignment - (start & (Alignment - 1))) & (Alignment - 1)) / Unsafe.SizeOf<T>();
        _capacity = capacity;

        // A quarter of the ring, at most 32 items (four cache lines of pointers): big enough to keep the
        // index lines quiet, small enough that the other side is never starved for long.
        _batch = Math.Clamp(capacity / 4, 1, 32);

        // After the producer found the ring full it waits for half the ring, not for one slot. With one slot
        // it would fill the ring again after each batch the consumer gives back and drop a fragment every
        // 32 items (1.0M drops in 51.2M, each a free that bounces the page's count line between the cores);
        // with half the ring it drops about one in 1,700 and writes lines far from the ones being read.
        _refillRoom = Math.Max(1, capacity / 2);
    }

    public int Capacity => _capacity;

    /// <summary>Items the producer has made visible so far (a progress counter; any thread).</summary>
    public long Published => Volatile.Read(ref _tail.Value);

    /// <summary>Items the consumer has taken and acknowledged so far (a progress counter; any thread).</summary>
    public long Consumed => Volatile.Read(ref _head.Value);

    // The slot of a position (slots start at first, positions wrap with mask).
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ref T SlotAt(T[] slots, int first, int mask, long position) =>
        ref Unsafe.Add(ref MemoryMarshal.GetArrayDataReference(slots), first + ((int)position & mask));

    // The longest run from position: up to limit (the other side's index as last seen), the wrap, and max.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static int RunFrom(long position, long limit, int mask, int max) =>
        (int)Math.Min(Math.Min(limit - position, mask + 1 - ((int)position & mask)), max);

    [DoesNotReturn]
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void ThrowBadCount(int count, int run, string done, string given) =>
        throw new ArgumentOutOfRangeException(nameof(count), count, $"Only the {run} slots of the last run can be {done}, once: a run is {given} again before each.");

    /// <summary>The producer's view. Call once, from the producer thread.</summary>
    public Producer GetProducer() => new(this);

    /// <summary>The consumer's view. Call once, from the consumer thread.</summary>
    public Consumer GetConsumer() => new(this);

    /// <summary>The producer side: owned by one thread, kept in a local for speed.</summary>
    public struct Producer
    {
        private readonly SpscRing<T> _ring;
        private readonly T[] _slots;
        private readonly int _first;
        private readonly int _mask;
        private long _tail;
        private long _limit;
        private long _published;
        private int _run;

        internal Producer(SpscRing<T> ring)
        {
            _ring = ring;
            _slots = ring._slots;
            _first = ring._first;
            _mask = ring._capacity - 1;
            _tail = ring.Published;
            _published = _tail;
            _limit = ring.Consumed + ring._capacity;
        }

        /// <summary>Pushes <paramref name="item"/>; false when the ring is full.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public bool TryPush(T item)
        {
            long tail = _tail;
            if (tail == _limit && !HasRoom())
            {
                return false;
            }

            SlotAt(_slots, _first, _mask, tail) = item;
            _tail = ++tail;
            if (tail - _published >= _ring._batch)
            {
                Publish();
            }

            return true;
        }

        /// <summary>
        /// The free slots the producer may fill now, without looking at the consumer's index unless the ring
        /// looked full: one contiguous run (it stops at the wrap) of at most <paramref name="max"/> slots; empty
        /// when the ring is full. Fill a prefix of it and <see cref="Commit"/> that many.
        /// </summary>
        /// <remarks>
        /// The same ring as <see cref="TryPush"/>, in runs: the push loop keeps its position in a register
        /// instead of storing the ring's tail after every item. Fewer stores per item matter on machines where
        /// a cache line takes long to move between cores: every store waits in the core's store buffer behind
        /// the slot store that waits for its line, and the fewer there are, the more slot lines can be on their
        /// way at once.
        /// </remarks>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public Span<T> Reserve(int max)
        {
            ArgumentOutOfRangeException.ThrowIfNegative(max);
            long tail = _tail;
            if (tail == _limit && !HasRoom())
            {
                _run = 0;
                return default;
            }

            int run = RunFrom(tail, _limit, _mask, max);
            _run = run;
            return MemoryMarshal.CreateSpan(ref SlotAt(_slots, _first, _mask, tail), run);
        }

        /// <summary>Counts the first <paramref name="count"/> slots of the last <see cref="Reserve"/> as pushed.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Commit(int count)
        {
            if ((uint)count > (uint)_run)
            {
                ThrowBadCount(count, _run, "committed", "reserved");
            }

            _run = 0;
            _tail += count;
            if (_tail - _published >= _ring._batch)
            {
                Publish();
            }
        }

        /// <summary>Makes every pushed item visible to the consumer.</summary>
        public void Publish()
        {
            if (_published != _tail)
            {
                Volatile.Write(ref _ring._tail.Value, _tail);
                _published = _tail;
            }
        }

        /// <summary>
        /// Spins (yielding after a while) until half the ring is free or <paramref name="stop"/> says so; the
        /// kernel's push thread calls <c>cond_resched()</c> at this point.
        /// </summary>
        [MethodImpl(MethodImplOptions.NoInlining)]
        public void WaitForRoom(RunControl stop)
        {
            SpinWait spinner = default;
            while (!HasRoom(_ring._refillRoom) && !stop.Aborted)
            {
                spinner.SpinOnce(sleep1Threshold: -1);
            }
        }

        [MethodImpl(MethodImplOptions.NoInlining)]
        private bool HasRoom(long wanted = 1)
        {
            Publish();
            _limit = Volatile.Read(ref _ring._head.Value) + _mask + 1;
            return _limit - _tail >= wanted;
        }
    }

    /// <summary>The consumer side: owned by one thread, kept in a local for speed.</summary>
    public struct Consumer
    {
        private readonly SpscRing<T> _ring;
        private readonly T[] _slots;
        private readonly int _first;
        private readonly int _mask;
        private long _head;
        private long _limit;
        private long _published;
        private int _run;

        internal Consumer(SpscRing<T> ring)
        {
            _ring = ring;
            _slots = ring._slots;
            _first = ring._first;
            _mask = ring._capacity - 1;
            _head = ring.Consumed;
            _published = _head;
            _limit = _head;
        }

        /// <summary>Pops the oldest item; false when the ring is empty.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public bool TryPop(out T item)
        {
            long head = _head;
            if (head == _limit && !HasItems())
            {
                item = default!;
                return false;
            }

            ref T slot = ref SlotAt(_slots, _first, _mask, head);
            item = slot;
            if (RuntimeHelpers.IsReferenceOrContainsReferences<T>())
            {
                // Do not keep a consumed object alive from the ring.
                slot = default!;
            }

            _head = ++head;
            if (head - _published >= _ring._batch)
            {
                Publish();
            }

            return true;
        }

        /// <summary>
        /// The items the consumer may take now, without looking at the producer's index unless the ring looked
        /// empty: one contiguous run (it stops at the wrap) of at most <paramref name="max"/> items; empty when
        /// the ring is empty. Take a prefix of it and <see cref="Release"/> that many.
        /// </summary>
        /// <remarks>
        /// <para>The pop loop's counterpart of <see cref="Producer.Reserve"/>.</para>
        /// <para>On x86 it prefetches every cache line of the run before it returns. The producer wrote those lines
        /// last, so each is a trip to the other core; one at a time, as the items are read, the pop thread waited
        /// for each in turn (on this project's 2-vCPU VM, where a line takes about 200 ns between the cores, that
        /// was most of its time). Asked together, the trips overlap. Only published slots are prefetched: a line
        /// the producer is still writing is never pulled away from it.</para>
        /// </remarks>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public ReadOnlySpan<T> Peek(int max)
        {
            ArgumentOutOfRangeException.ThrowIfNegative(max);
            long head = _head;
            if (head == _limit && !HasItems())
            {
                _run = 0;
                return default;
            }

            int run = RunFrom(head, _limit, _mask, max);
            _run = run;
            ref T first = ref SlotAt(_slots, _first, _mask, head);
            if (Sse.IsSupported)
            {
                // The slot array is pinned (see the constructor), so its address stays valid.
                byte* line = (byte*)Unsafe.AsPointer(ref first);
                byte* end = line + (nint)run * Unsafe.SizeOf<T>();
                for (; line < end; line += CacheLine)
                {
                    Sse.Prefetch0(line);
                }
            }

            return MemoryMarshal.CreateReadOnlySpan(ref first, run);
        }

        /// <summary>Counts the first <paramref name="count"/> items of the last <see cref="Peek"/> as taken.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Release(int count)
        {
            if ((uint)count > (uint)_run)
            {
                ThrowBadCount(count, _run, "released", "peeked");
            }

            _run = 0;
            if (RuntimeHelpers.IsReferenceOrContainsReferences<T>())
            {
                // Do not keep taken objects alive from the ring (the run never crosses the wrap).
                MemoryMarshal.CreateSpan(ref SlotAt(_slots, _first, _mask, _head), count).Clear();
            }

            _head += count;
            if (_head - _published >= _ring._batch)
            {
                Publish();
            }
        }

        /// <summary>Gives every popped slot back to the producer.</summary>
        public void Publish()
        {
            if (_published != _head)
            {
                // Release: the slot reads above complete before the producer may overwrite the slots.
                Volatile.Write(ref _ring._head.Value, _head);
                _published = _head;
            }
        }

        /// <summary>Spins (yielding after a while) until an item is visible or <paramref name="stop"/> says so.</summary>
        [MethodImpl(MethodImplOptions.NoInlining)]
        public void WaitForItems(RunControl stop)
        {
            SpinWait spinner = default;
            while (!HasItems() && !stop.Aborted)
            {
                spinner.SpinOnce(sleep1Threshold: -1);
            }
        }

        [MethodImpl(MethodImplOptions.NoInlining)]
        private bool HasItems()
        {
            Publish();
            _limit = Volatile.Read(ref _ring._tail.Value);
            Debug.Assert(_limit - _head <= _mask + 1, "the producer never runs more than a ring ahead");
            return _head != _limit;
        }
    }
}

/// <summary>
/// An index alone in its 128-byte pair of cache lines, with 128 bytes of nothing on either side. It is
/// not nested in the generic ring because generic types cannot have an explicit layout.
/// </summary>
[StructLayout(LayoutKind.Explicit, Size = 256)]
internal struct PaddedIndex
{
    [FieldOffset(128)]
    public long Value;
}

/// <summary>The progress counters of a ring, readable from any thread.</summary>
internal interface IRingCounters
{
    /// <summary>Items the producer has made visible so far.</summary>
    public long Published { get; }

    /// <summary>Items the consumer has taken and acknowledged so far.</summary>
    public long Consumed { get; }
}
