using System.Buffers;
using System.Diagnostics;
using System.Numerics;
using System.Runtime.CompilerServices;
using PageFrag.Frag;
using PageFrag.Pages;

namespace PageFrag.Buffers;

/// <summary>
/// A <see cref="MemoryPool{T}"/> whose buffers are fragments carved from large pinned pages: a drop-in
/// <c>PipeOptions.Pool</c>, and (through <c>PageFrag.AspNetCore</c>) Kestrel's pool. Small rents share a
/// 32 KiB page instead of taking a 4 KiB block each, and every buffer's memory is a segment of a pinned
/// array (<c>MemoryMarshal.TryGetArray</c> succeeds), as sockets need.
/// </summary>
/// <remarks>
/// <para><b>Sizes.</b> <c>Rent(-1)</c> gives <see cref="DefaultBufferSize"/> bytes. Other sizes are
/// rounded up to a multiple of 64 bytes (a cache line, so that buffers freed on different threads never
/// share one; <c>Rent(0)</c> gives 64). Up to 4096 bytes, and up to 32768 while the CPU's cache holds an
/// order-3 page, the buffer is a fragment; above that, or when memory is too fragmented for an order-3
/// page, it is a dedicated page block of the smallest sufficient order, and its <c>Memory</c> is the whole
/// block. <see cref="MaxBufferSize"/> is <see cref="PageFragMemoryPoolOptions.MaxBufferSize"/>.</para>
/// <para><b>Threading.</b> <see cref="Rent"/> and disposing a buffer are safe from any thread. The pool
/// keeps one <see cref="PageFragCache"/> per CPU, each behind its own lock (the kernel's per-CPU cache with
/// a local lock): a rent takes the lock of the CPU it runs on, or of any free one if that is busy, so the
/// lock is uncontended in practice; a trim can drain every cache safely, which per-thread caches would not
/// allow. A buffer may be disposed on any thread; when its CPU's lock is free, the return is done as that
/// cache's owner (<see cref="PageFragCache.FreeLocal"/>: no atomic when the fragment is on the current
/// page). The lock is a one-word spin gate: one compare-and-swap to enter, a plain release store to leave,
/// so an uncontended rent or return costs one atomic operation.</para>
/// <para><b>Owners are recycled.</b> The <see cref="IMemoryOwner{T}"/> objects are pooled per CPU, so
/// <c>Rent</c> and <c>Dispose</c> allocate nothing in steady state. <c>Dispose</c> is decided by one atomic
/// exchange: of any number of calls, racing on several threads or not, exactly one gives the memory back
/// and the others do nothing, as <see cref="IDisposable"/> asks (the BCL's <see cref="MemoryPool{T}.Shared"/>
/// also ignores a second <c>Dispose</c>; Kestrel's pool throws only in its diagnostic mode).
/// <c>Memory</c> after <c>Dispose</c> throws <see cref="ObjectDisposedException"/>, and so do the
/// <c>Span</c>, <c>Pin</c> and <c>MemoryMarshal.TryGetArray</c> of a <see cref="Memory{T}"/> taken before
/// it, but only until the owner object is rented again: after that a stale reference, a stale
/// <see cref="Memory{T}"/>, and a <c>Dispose</c> through the stale reference, reach the new renter's
/// buffer (the ABA case: Kestrel's pool has the same property, and a stale <see cref="Memory{T}"/> of
/// <see cref="MemoryPool{T}.Shared"/> reaches the next renter of its array). A renter that disposes once
/// and drops its reference is never affected. Pooling is kept because an owner allocated per rent, which
/// would make a stale <c>Dispose</c> harmless, costs a finalizable allocation on every rent (measured in
/// <c>docs/owner-lifetime.md</c>). Wrap the pool in a <c>DiagnosticMemoryPool</c> (an owner per rent) to
/// catch double disposal and use after disposal reliably.</para>
/// <para><b>The garbage collector is the last owner.</b> A rented buffer that becomes unreachable without
/// <c>Dispose</c> is given back by its finalizer and reported as a <c>LeakReclaimed</c> event of the
/// <c>PageFrag</c> event source (kind <c>MemoryOwner</c>; with the rent's stack when the allocator's
/// <see cref="PageAllocatorOptions.DetectMisuse"/> is on); a pool collected without <c>Dispose</c> drains
/// its caches the same way. Relying on it is still a leak until the next collection. The owner is a
/// <see cref="MemoryManager{T}"/>: its <see cref="Memory{T}"/>, every slice of it, a
/// <see cref="ReadOnlySequence{T}"/> over it and a <see cref="MemoryHandle"/> from <c>Pin</c> reference
/// the owner, so a buffer is never reclaimed while any of them is reachable. Three things do not keep it:
/// a <see cref="Span{T}"/> (use it while the owner or its memory is still referenced, for example with
/// <see cref="GC.KeepAlive"/>), the <see cref="ArraySegment{T}"/> of <c>MemoryMarshal.TryGetArray</c>,
/// and a raw pointer; keep the owner or its memory for as long as those are used.</para>
/// <para><b>Memory.</b> Pages come from <see cref="PageFragMemoryPoolOptions.Allocator"/>,
/// <see cref="PageAllocator.Shared"/> by default, so that a pool per pipe costs only the fragments it holds;
/// <see cref="Shared"/> is the ready-made pool over it. When the allocator refuses a page (memory limit,
/// injected fault), <c>Rent</c> throws <see cref="InsufficientMemoryException"/> and nothing changes.
/// <see cref="Trim"/> gives idle pages back; nothing trims on its own (the Kestrel factory runs a timer).</para>
/// <para><b>Neighbours share an array.</b> Every buffer is a segment of its arena's pinned array (4 MiB
/// by default), so <c>MemoryMarshal.TryGetArray(owner.Memory, out seg)</c> gives that shared array: code
/// that writes past <c>seg.Offset + seg.Count</c> corrupts another renter's buffer, where Kestrel's pool
/// (one array per 4 KiB block) keeps such a bug inside the block. The pool does not pay for a separate
/// array per buffer (see <c>docs/shared-arrays.md</c> for the measured options); to catch such overruns,
/// wrap the pool in a <c>DiagnosticMemoryPool</c> with <c>GuardBytes</c>, which checks a guard zone after
/// every buffer when it is disposed.</para>
/// </remarks>
public sealed class PageFragMemoryPool : MemoryPool<byte>
{
    /// <summary>What <c>Rent(-1)</c> gives: 4096 bytes, the block size Kestrel and Pipelines expect by default.</summary>
    public const int DefaultBufferSize = PageConstants.PageSize;

    // Rents are rounded to a cache line: no false sharing between buffers owned by different threads.
    internal const int Granule = 64;

    // Owner objects a CPU slot keeps at most; the rest are left to the garbage collector.
    private const int OwnerStashCapacity = 256;

    private static readonly Lazy<PageFragMemoryPool> s_shared = new(() => new PageFragMemoryPool(new PageFragMemoryPoolOptions { Name = "shared" }, isShared: true));

    private readonly PageAllocator _allocator;
    private readonly bool _isShared;
    private readonly CpuSlot[] _slots;
    private readonly int _maxBufferSize;
    private volatile bool _disposed;

    /// <summary>Creates a pool.</summary>
    /// <param name="options">Settings, or null for the defaults.</param>
    /// <exception cref="ArgumentOutOfRangeException">An option is out of its documented range.</exception>
    public PageFragMemoryPool(PageFragMemoryPoolOptions? options = null)
        : this(options, isShared: false)
    {
    }

    private PageFragMemoryPool(PageFragMemoryPoolOptions? options, bool isShared)
    {
        options ??= new PageFragMemoryPoolOptions();
        PageAllocator allocator = options.Allocator ?? PageAllocator.Shared;
        options.Validate(allocator);
        _allocator = allocator;
        _isShared = isShared;
        Name = options.Name;
        _maxBufferSize = options.MaxBufferSize;
        _slots = new CpuSlot[Math.Max(1, Environment.ProcessorCount)];
        for (int i = 0; i < _slots.Length; i++)
        {
            _slots[i] = new CpuSlot(_allocator, options.OwnersPerCpu);
        }
    }

    /// <summary>
    /// The process-wide pool over <see cref="PageAllocator.Shared"/>, as <see cref="MemoryPool{T}.Shared"/>
    /// is for arrays: use it (or a pool created without an allocator, which shares the same pages) rather
    /// than a private allocator per pool. Its <c>Dispose</c> does nothing.
    /// </summary>
    public static new PageFragMemoryPool Shared => s_shared.Value;

    /// <summary>The largest buffer <see cref="Rent"/> accepts (<see cref="PageFragMemoryPoolOptions.MaxBufferSize"/>).</summary>
    public override int MaxBufferSize => _maxBufferSize;

    /// <summary>The allocator the pool takes its pages from.</summary>
    public PageAllocator Allocator => _allocator;

    /// <summary>Who uses the pool (<see cref="PageFragMemoryPoolOptions.Name"/>), or null.</summary>
    public string? Name { get; }

    /// <summary>True once the pool was disposed (never for <see cref="Shared"/>).</summary>
    public bool IsDisposed => _disposed;

    /// <summary>
    /// Rents a buffer of at least <paramref name="minBufferSize"/> bytes (<see cref="DefaultBufferSize"/>
    /// for -1). Dispose the owner to give it back. Any thread.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="minBufferSize"/> is below -1 or above <see cref="MaxBufferSize"/>.</exception>
    /// <exception cref="InsufficientMemoryException">The allocator could not supply a page.</exception>
    /// <exception cref="ObjectDisposedException">The pool was disposed.</exception>
    public override IMemoryOwner<byte> Rent(int minBufferSize = -1)
    {
        int size = minBufferSize == -1 ? DefaultBufferSize : minBufferSize;
        if ((uint)size > (uint)_maxBufferSize)
        {
            BufferThrowHelper.RentSize(minBufferSize, _maxBufferSize);
        }

        int rounded = size <= Granule ? Granule : (size + (Granule - 1)) & ~(Granule - 1);
        CpuSlot slot = EnterSlot();
        FragmentMemoryOwner? owner;
        try
        {
            // Checked under the slot lock: Dispose drains each slot under it, so no rent can refill a
            // cache that Dispose has already drained.
            if (_disposed)
            {
                BufferThrowHelper.Disposed(nameof(PageFragMemoryPool));
            }

            owner = slot.RentLocked(rounded);
        }
        finally
        {
            slot.Exit();
        }

        if (owner is null)
        {
            BufferThrowHelper.OutOfPages(rounded);
        }

        if (slot.CaptureStacks)
        {
            owner.CaptureRentStack();
        }

        return owner;
    }

    /// <summary>
    /// Gives free page space back: drains the per-CPU caches (their current pages return to the allocator
    /// once the fragments still out on them are freed) and, when the pool takes its pages from
    /// <see cref="PageAllocator.Shared"/>, releases that allocator's entirely free arenas (a private
    /// allocator is the caller's to trim). With <paramref name="idleOnly"/>, only caches that served no rent
    /// since the previous trim are drained (the others are marked, so an idle period of one trim interval
    /// is enough): the eviction a periodic timer runs. Any thread.
    /// </summary>
    /// <returns>The bytes of free page space given back by the caches.</returns>
    public long Trim(bool idleOnly = false)
    {
        long evicted = 0;
        foreach (CpuSlot slot in _slots)
        {
            slot.Enter();
            try
            {
                evicted += slot.TrimLocked(idleOnly);
            }
            finally
            {
                slot.Exit();
            }
        }

        if (ReferenceEquals(_allocator, PageAllocator.Shared))
        {
            _allocator.Trim();
        }

        return evicted;
    }

    /// <summary>A snapshot of the pool's counters (takes each CPU slot's lock briefly). Any thread.</summary>
    public PageFragMemoryPoolStats GetStats()
    {
        long rents = 0, rented = 0, returns = 0, returned = 0, blocks = 0, allocated = 0, pooled = 0, evicted = 0, reused = 0, reclaimed = 0;
        foreach (CpuSlot slot in _slots)
        {
            slot.Enter();
            try
            {
                rents += slot.Rents;
                rented += slot.RentedBytes;
                blocks += slot.DedicatedBlocks;
                allocated += slot.AllocatedBytes;
                evicted += slot.EvictedBytes;
                pooled += slot.Cache.CurrentPageSize - slot.Cache.Offset;
                reused += slot.Cache.PagesReused;
                returns += slot.Returns;
                returned += slot.ReturnedBytes;
            }
            finally
            {
                slot.Exit();
            }

            returns += Interlocked.Read(ref slot.ContendedReturns);
            returned += Interlocked.Read(ref slot.ContendedReturnedBytes);
            reclaimed += Interlocked.Read(ref slot.Reclaimed);
        }

        return new PageFragMemoryPoolStats
        {
            Rents = rents,
            RentedBytes = rented,
            Returns = returns,
            OutstandingBytes = rented - returned,
            DedicatedBlocks = blocks,
            AllocatedBytes = allocated,
            PooledBytes = pooled,
            EvictedBytes = evicted,
            PagesReused = reused,
            ReclaimedBuffers = reclaimed,
        };
    }

    /// <summary>
    /// Drains every cache and retires the pool: <see cref="Rent"/> then throws
    /// <see cref="ObjectDisposedException"/>. Buffers still out stay valid and may be disposed later. The
    /// allocator is never disposed (a given one stays the caller's). On <see cref="Shared"/> it does nothing.
    /// A pool collected without <c>Dispose</c> is drained by its finalizer, which reports the pages' free
    /// space it gave back through the <c>PageFrag</c> event source (kind <c>PageFragMemoryPool</c>).
    /// </summary>
    protected override void Dispose(bool disposing)
    {
        if (_isShared || _disposed)
        {
            return;
        }

        _disposed = true;
        long drained = 0;
        int caches = 0;
        foreach (CpuSlot slot in _slots)
        {
            slot.Enter();
            try
            {
                long free = slot.TrimLocked(idleOnly: false);
                drained += free;
                caches += free > 0 ? 1 : 0;
            }
            finally
            {
                slot.Exit();
            }
        }

        if (!disposing && caches > 0)
        {
            PageFragEventSource.Log.LeakReclaimed(nameof(PageFragMemoryPool), caches, drained, string.Empty);
        }
    }

    /// <summary>The safety net: a pool nobody disposed gives its caches' pages back when collected.</summary>
    ~PageFragMemoryPool()
    {
        try
        {
            Dispose(disposing: false);
        }
        catch (Exception e)
        {
            // Never let an exception end the process on the finalizer thread.
            System.Diagnostics.Debug.WriteLine("Finalizing a PageFragMemoryPool failed: " + e);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private CpuSlot EnterSlot()
    {
        CpuSlot[] slots = _slots;
        int start = (int)((uint)Thread.GetCurrentProcessorId() % (uint)slots.Length);
        CpuSlot home = slots[start];
        if (home.TryEnter())
        {
            return home;
        }

        return EnterSlotContended(start);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private CpuSlot EnterSlotContended(int start)
    {
        // The thread was preempted on this CPU by another renter, or migrated: any free slot will do.
        CpuSlot[] slots = _slots;
        for (int i = 1; i < slots.Length; i++)
        {
            CpuSlot slot = slots[(start + i) % slots.Length];
            if (slot.TryEnter())
            {
                return slot;
            }
        }

        slots[start].Enter();
        return slots[start];
    }

    /// <summary>
    /// One CPU's share of the pool: a fragment cache and a stash of owner objects behind one lock, plus
    /// the counters, written under the lock except the contended-return pair (interlocked).
    /// </summary>
    internal sealed class CpuSlot
    {
        public readonly PageFragCache Cache;

        // The lock: 1 while held. Held for tens of nanoseconds, never across a call that can block.
        private int _busy;
        private readonly PageAllocator _allocator;
        private readonly FragmentMemoryOwner?[] _owners = new FragmentMemoryOwner?[OwnerStashCapacity];
        private int _ownerCount;
        private long _seenPagesAllocated;

        // Owners rented in the detection mode remember where (reported if they leak).
        public readonly bool CaptureStacks;

        // Under Lock.
        public long Rents;
        public long RentedBytes;
        public long DedicatedBlocks;
        public long AllocatedBytes;
        public long EvictedBytes;
        public bool Active;

        // Returns counted under Lock when the returning thread gets it (the usual case), and with interlocked
        // adds when it does not: two pairs, so that the plain and the atomic updates never race.
        public long Returns;
        public long ReturnedBytes;
        public long ContendedReturns;
        public long ContendedReturnedBytes;

        // Owners their finalizer reclaimed (interlocked; also counted as contended returns).
        public long Reclaimed;

        public CpuSlot(PageAllocator allocator, int owners)
        {
            _allocator = allocator;
            CaptureStacks = allocator.DetectMisuse;
            Cache = new PageFragCache(allocator);

            // The pool's finalizer drains this cache and reports the pool's leak; without this the cache's own
            // safety net could run first (finalization order is not defined) and report it as a cache's.
            GC.SuppressFinalize(Cache);
            for (int i = 0; i < owners; i++)
            {
                _owners[_ownerCount++] = new FragmentMemoryOwner(this);
            }
        }

        /// <summary>Serves one rent of <paramref name="size"/> (already rounded); null when no page could be had.</summary>
        public FragmentMemoryOwner? RentLocked(int size)
        {
            FragmentMemoryOwner owner;
            if (_ownerCount > 0)
            {
                owner = _owners[--_ownerCount]!;
                _owners[_ownerCount] = null;
            }
            else
            {
                owner = new FragmentMemoryOwner(this);
            }

            int trueSize;
            if (size <= PageFragCache.MaxFragmentSize && Cache.TryAlloc(size, out PageFragment fragment))
            {
                trueSize = fragment.TrueSize;
                owner.SetFragment(fragment);
                long pages = Cache.PagesAllocated;
                if (pages != _seenPagesAllocated)
                {
                    _seenPagesAllocated = pages;
                    AllocatedBytes += Cache.CurrentPageSize;
                }
            }
            else
            {
                // Above 4 KiB on an order-0 page, or the cache could not refill: a block of its own.
                int order = size <= PageConstants.PageSize ? 0 : BitOperations.Log2((uint)(size - 1)) + 1 - PageConstants.PageShift;
                if (!_allocator.TryAllocPages(order, AllocFlags.None, out Page block))
                {
                    StashLocked(owner);
                    return null;
                }

                trueSize = block.Length;
                owner.SetBlock(block);
                DedicatedBlocks++;
                AllocatedBytes += trueSize;
            }

            Rents++;
            RentedBytes += trueSize;
            Active = true;
            return owner;
        }

        /// <summary>Takes the lock if it is free: one compare-and-swap.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public bool TryEnter() => Interlocked.CompareExchange(ref _busy, 1, 0) == 0;

        /// <summary>Takes the lock, spinning (and yielding, then sleeping, if the holder was preempted).</summary>
        public void Enter()
        {
            if (!TryEnter())
            {
                EnterContended();
            }
        }

        /// <summary>Releases the lock: a release store, every write made under the lock visible before it.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Exit() => Volatile.Write(ref _busy, 0);

        /// <summary>
        /// A fragment of this slot came back (any thread). With the lock free, the return is the cache
        /// owner's (<see cref="PageFragCache.FreeLocal"/>) and the owner object is kept; otherwise the
        /// fragment is freed as from any thread and only counted.
        /// </summary>
        /// <exception cref="PageFragDoubleFreeException">The fragment was already freed.</exception>
        public void ReturnFragment(FragmentMemoryOwner owner, in PageFragment fragment)
        {
            if (TryEnter())
            {
                try
                {
                    Cache.FreeLocal(in fragment);
                    CountReturnLocked(owner, fragment.TrueSize);
                }
                finally
                {
                    Exit();
                }
            }
            else
            {
                PageFragCache.Free(in fragment);
                CountContendedReturn(fragment.TrueSize);
                owner.Drop();
            }
        }

        /// <summary>
        /// The finalizer of a rented owner gives its memory back (finalizer thread): freed as from any
        /// thread, counted as a contended return and as reclaimed, and reported. The owner is not stashed.
        /// </summary>
        public void Reclaim(in PageFragment fragment, Page block, int trueSize, StackTrace? rentedAt)
        {
            if (!fragment.IsEmpty)
            {
                PageFragCache.Free(in fragment);
            }
            else if (!block.IsEmpty)
            {
                block.Allocator.FreePages(block);
            }

            CountContendedReturn(trueSize);
            Interlocked.Increment(ref Reclaimed);
            PageFragEventSource.Log.LeakReclaimed("MemoryOwner", 1, trueSize, rentedAt?.ToString() ?? string.Empty);
        }

        /// <summary>A dedicated block of this slot came back (any thread); its owner object is kept if the lock is free.</summary>
        public void Returned(FragmentMemoryOwner owner, int trueSize)
        {
            if (TryEnter())
            {
                CountReturnLocked(owner, trueSize);
                Exit();
            }
            else
            {
                CountContendedReturn(trueSize);
                owner.Drop();
            }
        }

        public long TrimLocked(bool idleOnly)
        {
            if (idleOnly && Active)
            {
                Active = false;
                return 0;
            }

            Active = false;
            long free = Cache.CurrentPageSize - Cache.Offset;
            Cache.Drain();
            EvictedBytes += free;
            return free;
        }

        [MethodImpl(MethodImplOptions.NoInlining)]
        private void EnterContended()
        {
            SpinWait spinner = default;
            do
            {
                spinner.SpinOnce();
            }
            while (Volatile.Read(ref _busy) != 0 || !TryEnter());
        }

        private void CountReturnLocked(FragmentMemoryOwner owner, int trueSize)
        {
            Returns++;
            ReturnedBytes += trueSize;
            StashLocked(owner);
        }

        // Never wait on a renter: count atomically and leave the owner object to the collector.
        private void CountContendedReturn(int trueSize)
        {
            Interlocked.Increment(ref ContendedReturns);
            Interlocked.Add(ref ContendedReturnedBytes, trueSize);
        }

        private void StashLocked(FragmentMemoryOwner owner)
        {
            if (_ownerCount < _owners.Length)
            {
                _owners[_ownerCount++] = owner;
            }
            else
            {
                owner.Drop();
            }
        }
    }
}
