using System.Buffers;
using System.Diagnostics;
using System.Diagnostics.CodeAnalysis;
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
/// keeps one <see cref="PageFragCache"/> per thread that uses it (the kernel's <c>current-&gt;task_frag</c>),
/// so a rent takes no lock and no atomic operation: the thread marks its slot busy with a plain store and
/// checks that no trim is under way. A trim (and <see cref="GetStats"/>, and <c>Dispose</c>) flags every
/// slot, issues one process-wide memory barrier (<see cref="Interlocked.MemoryBarrierProcessWide"/>, the
/// asymmetric half of the handshake), waits for the busy slots to finish their current call, and then drains
/// each cache as if it were its owner; a thread that meets the flag waits for the trim to end. A buffer
/// disposed on the thread that rented it goes back as that cache's owner (<see cref="PageFragCache.FreeLocal"/>:
/// no atomic on the page count when the fragment is on the current page); one disposed on another thread is
/// freed as from any thread and its owner object joins the disposing thread's slot. A slot of a thread that
/// ended is taken over by the next new thread, and keeps at most one cache page until then (or until a
/// trim).</para>
/// <para><b>Owners are recycled.</b> The <see cref="IMemoryOwner{T}"/> objects are pooled per thread slot (a small shared stash evens out
/// threads that only rent and threads that only dispose), so
/// <c>Rent</c> and <c>Dispose</c> allocate nothing in steady state. A <c>Dispose</c> after the buffer was given
/// back does nothing, as <see cref="IDisposable"/> asks (the BCL's <see cref="MemoryPool{T}.Shared"/> also
/// ignores a second <c>Dispose</c>; Kestrel's pool throws only in its diagnostic mode). Of calls racing on
/// several threads, exactly one gives the memory back and the others throw <see cref="ObjectDisposedException"/>:
/// one compare-and-swap of a sequence count in the owner decides, so a call that read one rent never frees the
/// next rent's memory.
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
/// <para><b>Parking.</b> A buffer disposed on the thread that rented it, while its fragment is on that thread's
/// current cache page, is parked with its fragment (up to 8 per thread) and handed to the thread's next
/// <c>Rent</c> of the same rounded size, which then neither carves nor writes more than the owner's count: the
/// same owner object and the same bytes come back. A stale <see cref="Memory{T}"/> or owner reference of the
/// previous renter is then the ABA case above, as with any recycled owner. Nothing else can reach a parked buffer:
/// the pool's pages refuse <see cref="PageFragCache.Free(nint)"/> (<see cref="ArgumentException"/>), and a stale
/// <c>Dispose</c> loses the count's swap. Parked buffers count as returned and as <see cref="PageFragMemoryPoolStats.PooledBytes"/>;
/// they leave with their page (a rent that moves the cache to a new page releases them) and with every
/// <see cref="Trim"/> and <c>Dispose</c> of the pool, so they never keep a page the cache would not hold anyway.
/// The detection mode (<see cref="PageAllocatorOptions.DetectMisuse"/>) parks nothing.</para>
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

    // Owner objects a thread slot keeps at most; the rest go to the shared spare stash, then to the collector.
    private const int OwnerStashCapacity = 256;

    // Owner objects shared between slots: what a thread that only disposes hands to a thread that only rents.
    private const int SpareOwners = 32;

    // Owners a thread slot keeps parked with their fragments for the next rent of the same size (see
    // ThreadSlot.TryReturnOnHomeThread).
    private const int ParkedOwners = 8;

    // Rents in a row that find parked owners but none of their size before a slot stops parking (the sizes do not repeat:
    // parking would only take page space and scans), and the returns it then lets pass before it tries again.
    private const int ParkMissesToBackOff = 16;
    private const int ParkBackOffReturns = 256;

    private static readonly Lazy<PageFragMemoryPool> s_shared = new(() => new PageFragMemoryPool(new PageFragMemoryPoolOptions { Name = "shared" }, isShared: true));

    private readonly PageAllocator _allocator;
    private readonly bool _isShared;
    private readonly SlotRegistry _registry;
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
        _registry = new SlotRegistry(allocator, options.OwnersPerCpu);
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

    /// <summary>The thread slots created so far (test hook).</summary>
    internal int SlotCount => _registry.Count;

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
        ThreadSlot? slot = _registry.Current();
        if (slot is null)
        {
            BufferThrowHelper.Disposed(nameof(PageFragMemoryPool));
        }

        bool outermost = slot.Enter();
        FragmentMemoryOwner? owner;
        bool served = false;
        try
        {
            // Read inside the slot's busy mark: Dispose sets the flag before it quiesces and drains every slot,
            // so no rent can refill a cache that Dispose has already drained.
            if (_disposed)
            {
                BufferThrowHelper.Disposed(nameof(PageFragMemoryPool));
            }

            owner = slot.RentLocked(rounded, outermost);
            served = true;
        }
        finally
        {
            if (!served && outermost)
            {
                // A refill that threw (a disposed allocator, an interrupt or an out-of-memory while it took a page) may
                // have let the cache's page go: fragments rented before are no longer known to be on the current page.
                // A flag and not a catch clause: a catch (even with a filter) made every rent 3-4 ns slower.
                slot.RentThrew();
            }

            slot.Exit();
            if (slot.DrainOnExit)
            {
                // A callback inside this rent (an event or metrics listener) disposed the pool, which could not drain
                // the slot this thread was busy in: drained now that the outermost call has left it.
                _registry.DrainLeftSlot(slot);
            }
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
    /// Gives free page space back: drains the per-thread caches (their current pages return to the allocator
    /// once the fragments still out on them are freed) and, when the pool takes its pages from
    /// <see cref="PageAllocator.Shared"/>, releases that allocator's entirely free arenas (a private
    /// allocator is the caller's to trim). With <paramref name="idleOnly"/>, only caches that served no rent
    /// since the previous trim are drained (the others are marked, so an idle period of one trim interval
    /// is enough): the eviction a periodic timer runs. Any thread; it waits for rents and returns under way
    /// to finish, and those that start meanwhile wait for it.
    /// </summary>
    /// <returns>The bytes of free page space given back by the caches.</returns>
    public long Trim(bool idleOnly = false)
    {
        long evicted = _registry.Drain(idleOnly, retire: false, out _);
        if (ReferenceEquals(_allocator, PageAllocator.Shared))
        {
            _allocator.Trim();
        }

        return evicted;
    }

    /// <summary>A snapshot of the pool's counters (pauses each thread slot briefly, as a trim does). Any thread.</summary>
    public PageFragMemoryPoolStats GetStats() => _registry.GetStats();

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
        long drained = _registry.Drain(idleOnly: false, retire: true, out int caches);
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

    /// <summary>
    /// The pool's thread slots. It references neither the pool nor any thread's storage, so a thread that
    /// used a pool never keeps the pool reachable (its finalizer, the safety net, still runs).
    /// </summary>
    /// <remarks>
    /// <para>Each thread finds its slot through two thread statics: the slot it used last (one compare on
    /// the fast path) and a short list of its slots in other pools. Creating a slot, taking over the slot of
    /// a thread that ended, and every operation on all slots (trim, statistics, retirement) run under one
    /// lock, so they never overlap.</para>
    /// <para>The handshake with the owning threads: the operation sets each slot's <c>Quiesce</c> flag, then
    /// issues <see cref="Interlocked.MemoryBarrierProcessWide"/>, then waits until each slot is not busy.
    /// An owner marks its slot busy (a plain store) and then reads the flag. After the process-wide barrier,
    /// every owner either had its busy mark visible (the operation waits for it) or reads the flag as set (it
    /// waits for the operation): the barrier orders the owner's store before its load without a fence on the
    /// owner's side. The owner clears the mark with a release store, and the operation clears the flag with
    /// one, so each side sees the other's writes to the cache.</para>
    /// </remarks>
    internal sealed class SlotRegistry
    {
        [ThreadStatic]
        private static ThreadSlot? t_last;

        [ThreadStatic]
        private static ThreadSlot?[]? t_slots;

        public readonly PageAllocator Allocator;
        public readonly ObjectStash<FragmentMemoryOwner> Spare = new(SpareOwners);
        private readonly int _ownersPerSlot;
        private readonly Lock _lock = new();
        private ThreadSlot[] _slots = [];
        private volatile bool _retired;

        public SlotRegistry(PageAllocator allocator, int ownersPerSlot)
        {
            Allocator = allocator;
            _ownersPerSlot = ownersPerSlot;
        }

        public int Count => Volatile.Read(ref _slots).Length;

        /// <summary>The slot the calling thread used last, in any pool.</summary>
        public static ThreadSlot? LastUsed => t_last;

        public bool Retired => _retired;

        /// <summary>The calling thread's slot, created on first use; null once the pool is retired and the thread has none.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public ThreadSlot? Current()
        {
            ThreadSlot? slot = t_last;
            if (slot is not null && ReferenceEquals(slot.Registry, this))
            {
                return slot;
            }

            return CurrentSlow();
        }

        [MethodImpl(MethodImplOptions.NoInlining)]
        private ThreadSlot? CurrentSlow()
        {
            ThreadSlot?[]? mine = t_slots;
            int free = -1;
            if (mine is not null)
            {
                for (int i = 0; i < mine.Length; i++)
                {
                    ThreadSlot? s = mine[i];
                    if (s is null || s.Registry.Retired)
                    {
                        // A retired pool's slot is forgotten here, so the thread does not keep it.
                        mine[i] = null;
                        free = free < 0 ? i : free;
                    }
                    else if (ReferenceEquals(s.Registry, this))
                    {
                        t_last = s;
                        return s;
                    }
                }
            }

            ThreadSlot? slot = Attach();
            if (slot is null)
            {
                return null;
            }

            if (free < 0)
            {
                int length = mine?.Length ?? 0;
                Array.Resize(ref mine, Math.Max(4, length * 2));
                free = length;
                t_slots = mine;
            }

            mine![free] = slot;
            t_last = slot;
            return slot;
        }

        // A new slot for the calling thread, or the slot of a thread that ended.
        private ThreadSlot? Attach()
        {
            Thread thread = Thread.CurrentThread;

            // Also on a return's way (a buffer disposed on a thread new to the pool, after its fragment was freed):
            // thrown from this wait, an interrupt would end that Dispose with the return uncounted. Kept for later.
            bool interrupted = false;
            LockWait.EnterKeepingInterrupt(_lock, ref interrupted);
            try
            {
                if (_retired)
                {
                    return null;
                }

                foreach (ThreadSlot s in _slots)
                {
                    if (!s.Thread.IsAlive)
                    {
                        // Its thread is gone, so nothing runs on the slot; its cache and owners are reused as they are.
                        s.Thread = thread;
                        Volatile.Write(ref s.ThreadId, thread.ManagedThreadId);
                        return s;
                    }
                }

                var slot = new ThreadSlot(this, thread, _ownersPerSlot);
                ThreadSlot[] grown = new ThreadSlot[_slots.Length + 1];
                _slots.CopyTo(grown, 0);
                grown[^1] = slot;
                Volatile.Write(ref _slots, grown);
                return slot;
            }
            finally
            {
                _lock.Exit();
                Arena.KeepInterrupt(interrupted);
            }
        }

        /// <summary>Drains the caches (all, or the idle ones), optionally retiring the registry; returns the free bytes given back.</summary>
        public long Drain(bool idleOnly, bool retire, out int caches)
        {
            long drained = 0;
            caches = 0;

            // Every wait keeps an interrupt for the thread's next blocking call: thrown, it would leave slots flagged
            // (their threads would wait for ever) and a retired pool's caches undrained (a second Dispose does nothing).
            bool interrupted = false;
            LockWait.EnterKeepingInterrupt(_lock, ref interrupted);
            try
            {
                if (retire)
                {
                    _retired = true;
                }

                ThreadSlot[] slots = _slots;
                Quiesce(slots);
                foreach (ThreadSlot slot in slots)
                {
                    bool idle = WaitIdle(slot, ref interrupted);
                    if (retire)
                    {
                        // Quiesced, or on the slot's own thread (a nested call): either way no return is under way.
                        slot.StopStashing();
                    }

                    if (idle)
                    {
                        long free = slot.TrimQuiesced(idleOnly);
                        drained += free;
                        caches += free > 0 ? 1 : 0;
                        if (retire)
                        {
                            slot.DropOwnersQuiesced();
                        }
                    }
                    else if (retire)
                    {
                        // Busy on this very thread (the pool disposed from a callback inside a rent): the rent drains
                        // it when it leaves the slot (DrainLeftSlot).
                        slot.DrainOnExit = true;
                    }

                    Volatile.Write(ref slot.Quiesce, 0);
                }
            }
            finally
            {
                _lock.Exit();
                Arena.KeepInterrupt(interrupted);
            }

            return drained;
        }

        /// <summary>
        /// Drains a slot that the retirement left because its own thread was busy in it (a callback inside a rent
        /// disposed the pool), once that thread's outermost call has left it: its cache and parked buffers, and its
        /// owner objects. Called on the slot's thread.
        /// </summary>
        [MethodImpl(MethodImplOptions.NoInlining)]
        public void DrainLeftSlot(ThreadSlot slot)
        {
            if (Volatile.Read(ref slot.Busy) != 0)
            {
                // An outer call of this thread still runs in the slot: the outermost one drains it.
                return;
            }

            // Under the lock no trim, snapshot or retirement runs, and the slot's thread (this one) is outside it: the
            // slot is as quiesced.
            bool interrupted = false;
            LockWait.EnterKeepingInterrupt(_lock, ref interrupted);
            try
            {
                if (slot.DrainOnExit)
                {
                    slot.DrainOnExit = false;
                    slot.TrimQuiesced(idleOnly: false);
                    slot.DropOwnersQuiesced();
                }
            }
            finally
            {
                _lock.Exit();
                Arena.KeepInterrupt(interrupted);
            }
        }

        public PageFragMemoryPoolStats GetStats()
        {
            long rents = 0, rented = 0, returns = 0, returned = 0, blocks = 0, allocated = 0, pooled = 0, evicted = 0, reused = 0, reclaimed = 0;

            // As in Drain: once a slot is flagged, no wait may throw before the flag is cleared.
            bool interrupted = false;
            LockWait.EnterKeepingInterrupt(_lock, ref interrupted);
            try
            {
                ThreadSlot[] slots = _slots;
                Quiesce(slots);
                foreach (ThreadSlot slot in slots)
                {
                    // A slot busy on this very thread (a listener called back during a rent) is read as it is.
                    WaitIdle(slot, ref interrupted);
                    rents += slot.Rents;
                    rented += slot.RentedBytes;
                    blocks += slot.DedicatedBlocks;
                    allocated += slot.AllocatedBytes;
                    evicted += slot.EvictedBytes;
                    pooled += slot.Cache.CurrentPageSize - slot.Cache.Offset + slot.ParkedBytes;
                    reused += slot.Cache.PagesReused;
                    returns += slot.Returns;
                    returned += slot.ReturnedBytes;
                    Volatile.Write(ref slot.Quiesce, 0);
                    returns += Interlocked.Read(ref slot.ContendedReturns);
                    returned += Interlocked.Read(ref slot.ContendedReturnedBytes);
                    reclaimed += Interlocked.Read(ref slot.Reclaimed);
                }
            }
            finally
            {
                _lock.Exit();
                Arena.KeepInterrupt(interrupted);
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

        // Under _lock: flag every slot, then one barrier that orders every owner's busy mark before its read of the flag.
        private static void Quiesce(ThreadSlot[] slots)
        {
            if (slots.Length == 0)
            {
                return;
            }

            foreach (ThreadSlot slot in slots)
            {
                Volatile.Write(ref slot.Quiesce, 1);
            }

            Interlocked.MemoryBarrierProcessWide();
        }

        // Waits for the slot's owner to leave its current call; false when that owner is the calling thread itself
        // (re-entered from a callback inside a rent or return), whose cache must then be left alone. An interrupt during
        // the wait's sleeps is noted in interrupted (the caller must clear the flags it set).
        private static bool WaitIdle(ThreadSlot slot, ref bool interrupted)
        {
            if (Volatile.Read(ref slot.Busy) == 0)
            {
                return true;
            }

            if (Volatile.Read(ref slot.ThreadId) == Environment.CurrentManagedThreadId)
            {
                return false;
            }

            SpinWait spinner = default;
            while (Volatile.Read(ref slot.Busy) != 0)
            {
                Arena.SpinOnceKeepingInterrupt(ref spinner, ref interrupted);
            }

            return true;
        }
    }

    /// <summary>
    /// One thread's share of the pool: a fragment cache, a stash of owner objects and the counters, used only
    /// by its thread, between <see cref="Enter"/> and <see cref="Exit"/>, or by the registry while quiesced.
    /// </summary>
    internal sealed class ThreadSlot
    {
        public readonly SlotRegistry Registry;
        public readonly PageFragCache Cache;

        // Owners rented in the detection mode remember where (reported if they leak).
        public readonly bool CaptureStacks;

        // The owning thread (changed under the registry's lock when a new thread takes over a dead one's slot).
        public Thread Thread;
        public int ThreadId;

        // Written by the owning thread only: the depth of its calls into the slot (0 when idle).
        public int Busy;

        // Written by the registry only, under its lock: 1 while a trim, a snapshot or the retirement runs.
        public int Quiesce;

        // Set by the retirement (under the registry's lock) when the slot's own thread was busy in it, so that the
        // outermost rent drains it on its way out (SlotRegistry.DrainLeftSlot).
        public bool DrainOnExit;

        private readonly FragmentMemoryOwner?[] _owners = new FragmentMemoryOwner?[OwnerStashCapacity];
        private int _ownerCount;

        // How many owners the home thread's fast return may stash: the capacity, 0 once the pool is retired (set
        // quiesced, so the owning thread reads it after the flag is cleared), which sends returns to the slow path.
        private int _stashLimit = OwnerStashCapacity;

        // Owners parked with their fragments, newest last (see TryReturnOnHomeThread). How many may be: ParkedOwners, 0 in
        // the detection mode (every rent takes a fresh fragment, whose misuse the cache checks) and once the pool is
        // retired (set quiesced, as _stashLimit).
        private readonly FragmentMemoryOwner?[] _parked = new FragmentMemoryOwner?[ParkedOwners];
        private int _parkedCount;
        private int _parkLimit;

        // The parking limit when not backing off (ParkedOwners, or 0 as above); rents that missed in a row; returns left
        // before parking is tried again after a back-off (owning thread, or quiesced).
        private int _parkMax;
        private int _parkMisses;
        private int _parkBackOff;
        private long _seenPagesAllocated;

        // Advanced whenever the cache may have left its page (a new page, a failed refill, a drain); never 0. A fragment
        // rent records it (FragmentMemoryOwner.Epoch): while the two are equal, the fragment is on the cache's current
        // page, which spares the fast return the page comparison (owning thread, or quiesced).
        private int _pageEpoch = 1;

        // Owning thread, inside Enter/Exit.
        public long Rents;
        public long RentedBytes;
        public long DedicatedBlocks;
        public long AllocatedBytes;
        public long EvictedBytes;
        public long Returns;
        public long ReturnedBytes;
        public bool Active;

        // Returns counted with interlocked adds: by a thread that has no slot (the pool was retired), and by finalizers.
        public long ContendedReturns;
        public long ContendedReturnedBytes;

        // Owners their finalizer reclaimed (interlocked; also counted as contended returns).
        public long Reclaimed;

        public ThreadSlot(SlotRegistry registry, Thread thread, int owners)
        {
            Registry = registry;
            Thread = thread;
            ThreadId = thread.ManagedThreadId;
            CaptureStacks = registry.Allocator.DetectMisuse;
            _parkLimit = _parkMax = CaptureStacks ? 0 : ParkedOwners;
            Cache = new PageFragCache(registry.Allocator);

            // The owner objects are the only way back for the cache's fragments: no free by address can release a
            // parked fragment or decide a return (see FragmentMemoryOwner's remarks).
            Cache.RefuseFreeByAddress();

            // The pool's finalizer drains this cache and reports the pool's leak; without this the cache's own
            // safety net could run first (finalization order is not defined) and report it as a cache's.
            GC.SuppressFinalize(Cache);
            for (int i = 0; i < owners; i++)
            {
                _owners[_ownerCount++] = new FragmentMemoryOwner(this);
            }
        }

        /// <summary>
        /// Marks the slot busy (owning thread only): a plain store and a read of the quiesce flag, no atomic.
        /// Returns false for a nested call (a callback during a rent or return of this thread), which must
        /// not touch the cache.
        /// </summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public bool Enter()
        {
            int depth = Busy;
            Volatile.Write(ref Busy, depth + 1);
            if (depth != 0)
            {
                return false;
            }

            if (Volatile.Read(ref Quiesce) != 0)
            {
                EnterQuiesced();
            }

            return true;
        }

        /// <summary>Leaves the slot: a release store, every write made inside visible before it.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void Exit() => Volatile.Write(ref Busy, Busy - 1);

        /// <summary>Serves one rent of <paramref name="size"/> (already rounded); null when no page could be had.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public FragmentMemoryOwner? RentLocked(int size, bool useCache)
        {
            FragmentMemoryOwner? owner;
            int parked = _parkedCount;
            if (parked > 0 && useCache)
            {
                // The newest parked owner when it has this size (else an older one that has): rented again with its
                // fragment as it is, no alloc and no field to write but the count.
                owner = _parked[parked - 1]!;
                if (owner.Length == size)
                {
                    _parked[parked - 1] = null;
                    _parkedCount = parked - 1;
                    _parkMisses = 0;
                }
                else
                {
                    owner = TakeParked(size);
                }

                if (owner is not null)
                {
                    owner.Unpark();
                    Rents++;
                    RentedBytes += owner.LastTrueSize;
                    Active = true;
                    return owner;
                }
            }

            int count = _ownerCount;
            if (count > 0)
            {
                _ownerCount = --count;
                owner = _owners[count]!;
                _owners[count] = null;
            }
            else
            {
                owner = TakeSpareOwner();
            }

            if (useCache && size <= PageFragCache.MaxFragmentSize)
            {
                if (_parkedCount > 0 && Cache.Offset + size > Cache.CurrentPageSize)
                {
                    // The page is full: parked fragments go back to it first, so that it can be reused in place when
                    // nothing else is out (parking must not turn an in-place reuse into a new page).
                    ReleaseParked();
                }

                if (Cache.TryAlloc(size, out PageFragment fragment))
                {
                    long pages = Cache.PagesAllocated;
                    if (pages != _seenPagesAllocated)
                    {
                        _seenPagesAllocated = pages;
                        AllocatedBytes += Cache.CurrentPageSize;
                        PageChanged();
                    }

                    owner.SetFragment(this, fragment, _pageEpoch);
                    Rents++;
                    RentedBytes += fragment.TrueSize;
                    Active = true;
                    return owner;
                }

                // The refill failed after the cache let its page go.
                PageChanged();
            }

            return RentBlock(owner, size);
        }

        /// <summary>
        /// A fragment rented from this slot came back (any thread), after its owner's count decided that this call
        /// gives it back (<see cref="FragmentMemoryOwner.TryDecide"/>). On the slot's own thread the return is the
        /// cache owner's (<see cref="PageFragCache.FreeLocal"/>); elsewhere it is freed as from any thread.
        /// </summary>
        /// <exception cref="PageFragDoubleFreeException">The fragment was already released (a broken invariant: only its owner releases it).</exception>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public void ReturnFragment(FragmentMemoryOwner owner, PageFragment fragment)
        {
            // The thread's last used slot is its own (a slot changes thread only when its thread has ended); a
            // thread that alternates between pools is recognised by its id.
            if (ReferenceEquals(SlotRegistry.LastUsed, this) || ThreadId == Environment.CurrentManagedThreadId)
            {
                bool outermost = Enter();
                try
                {
                    if (outermost)
                    {
                        Cache.FreeLocal(in fragment);
                    }
                    else
                    {
                        PageFragCache.Free(in fragment);
                    }

                    Returns++;
                    ReturnedBytes += fragment.TrueSize;
                    StashLocked(owner);
                }
                finally
                {
                    Exit();
                }
            }
            else
            {
                ReturnFragmentElsewhere(owner, fragment, this);
            }
        }

        /// <summary>
        /// <c>Dispose</c>'s common case, inlined into it: on the slot's own thread, outside any other call into the slot
        /// and any trim, a fragment of the cache's current page. The owner's count decides (one compare-and-swap) and the
        /// owner is parked with its fragment for the next rent of the same size (the fragment stays live: no release now
        /// and no carve then); or, when the parked list is full, the fragment's release compare-and-swap decides under
        /// the count (as before parking), its fragment goes back to the cache and the owner onto the stash. No exception
        /// handling (nothing in between can throw). False when it is not that case,
        /// with nothing changed: the caller then takes the slow path, which decides the same way. A lost decision (a
        /// racing <c>Dispose</c> won) leaves the slot as it was and throws <see cref="ObjectDisposedException"/>.
        /// </summary>
        /// <remarks>
        /// Parking is safe because nothing but the owner can reach a pool fragment: the cache's pages refuse a free by
        /// address, the pool hands out no fragment handle, and a <c>Dispose</c> that read an earlier rent's count loses
        /// the count's swap even when the owner came back with the same fragment. A parked fragment is always on the
        /// cache's current page (a rent that moves the cache to a new page releases the parked ones, and so does every
        /// trim), so parking keeps no page that the cache would not hold anyway.
        /// </remarks>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public bool TryReturnOnHomeThread(FragmentMemoryOwner owner, int state)
        {
            // The thread's last used slot is its own (a slot changes thread only when its thread has ended). Busy is
            // then only ever written by this thread; a nested call (non-zero) is left to the slow path.
            if (!ReferenceEquals(SlotRegistry.LastUsed, this) || Busy != 0)
            {
                return false;
            }

            // The busy mark before the flag's read, as Enter does (the trim's process-wide barrier orders the two).
            Volatile.Write(ref Busy, 1);
            int done = 0;

            // The owner's fields are read after the count (they may be a later rent's: then the swap below fails). A block
            // rent's epoch is 0, which no page has.
            if (Volatile.Read(ref Quiesce) == 0 && owner.Epoch == _pageEpoch)
            {
                int parked = _parkedCount;
                int count = _ownerCount;
                if (parked < _parkLimit)
                {
                    int trueSize = owner.LastTrueSize;
                    done = owner.TryDecide(state) ? 1 : -1;
                    if (done > 0)
                    {
                        _parked[parked] = owner;
                        _parkedCount = parked + 1;
                        Returns++;
                        ReturnedBytes += trueSize;
                    }
                }
                else if (count < _stashLimit && !CaptureStacks)
                {
                    // The parked list is full: the fragment's release decides instead, under the count (one atomic, not
                    // two; see FragmentMemoryOwner.TryFreeOnCurrentPage).
                    done = owner.TryFreeOnCurrentPage(Cache, state);
                    if (done > 0)
                    {
                        Returns++;
                        ReturnedBytes += owner.LastTrueSize;
                        StashAt(owner, count);
                        if (_parkBackOff != 0)
                        {
                            CountBackOff();
                        }
                    }
                }
            }

            Volatile.Write(ref Busy, 0);
            if (done < 0)
            {
                FragmentMemoryOwner.ThrowLostRace(null);
            }

            return done > 0;
        }

        // The cache has (or may have) left its page: a fragment rented before is no longer known to be on the current
        // page, and parked fragments there would keep the old page from the allocator.
        [MethodImpl(MethodImplOptions.NoInlining)]
        private void PageChanged()
        {
            AdvanceEpoch();
            ReleaseParked();
        }

        /// <summary>A rent threw inside the slot (owning thread, outermost): the cache may have left its page.</summary>
        [MethodImpl(MethodImplOptions.NoInlining)]
        public void RentThrew() => AdvanceEpoch();

        private void AdvanceEpoch() => _pageEpoch = _pageEpoch == int.MaxValue ? 1 : _pageEpoch + 1;

        // A parked owner of this size below the newest (rents of mixed sizes); it leaves the parked list.
        [MethodImpl(MethodImplOptions.NoInlining)]
        private FragmentMemoryOwner? TakeParked(int size)
        {
            int last = _parkedCount - 1;
            FragmentMemoryOwner newest = _parked[last]!;
            for (int i = last - 1; i >= 0; i--)
            {
                FragmentMemoryOwner candidate = _parked[i]!;
                if (candidate.Length == size)
                {
                    _parked[i] = newest;
                    _parked[last] = null;
                    _parkedCount = last;
                    _parkMisses = 0;
                    return candidate;
                }
            }

            if (++_parkMisses >= ParkMissesToBackOff)
            {
                // The sizes do not repeat: give the parked fragments back and return buffers to the cache for a while.
                _parkMisses = 0;
                _parkLimit = 0;
                _parkBackOff = ParkBackOffReturns;
                ReleaseParked();
            }

            return null;
        }

        // A return on the fast path that could not park: counts a back-off down, then lets parking be tried again.
        [MethodImpl(MethodImplOptions.NoInlining)]
        private void CountBackOff()
        {
            if (--_parkBackOff <= 0)
            {
                _parkBackOff = 0;
                _parkLimit = _parkMax;
            }
        }

        /// <summary>The owners parked with their fragments (test hook; owning thread, or quiesced).</summary>
        internal int ParkedCount => _parkedCount;

        /// <summary>The memory the parked owners keep for the next rents (owning thread, or quiesced).</summary>
        public long ParkedBytes
        {
            get
            {
                long bytes = 0;
                for (int i = 0; i < _parkedCount; i++)
                {
                    bytes += _parked[i]!.LastTrueSize;
                }

                return bytes;
            }
        }

        // Owning thread inside Enter/Exit, or quiesced: every parked fragment goes back to its page (the cache's
        // current one, or the one it just left) and its owner to the stash (or to the collector when the stash is
        // full or the pool retired). Returns the bytes the parked owners kept.
        [MethodImpl(MethodImplOptions.NoInlining)]
        private long ReleaseParked()
        {
            if (_parkedCount == 0)
            {
                return 0;
            }

            long bytes = 0;
            while (_parkedCount > 0)
            {
                FragmentMemoryOwner owner = _parked[--_parkedCount]!;
                _parked[_parkedCount] = null;
                bytes += owner.LastTrueSize;
                Cache.FreeLocal(owner.ParkedFragment);
                StashLocked(owner);
            }

            return bytes;
        }

        /// <summary>A dedicated block rented from this slot was freed (any thread): count it and keep the owner object.</summary>
        public void ReturnedBlock(FragmentMemoryOwner owner, int trueSize) => CountReturn(owner, trueSize, this);

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
                PageAllocator.PutBlockRef(block.Arena!, block.Index);
            }

            CountContendedReturn(trueSize);
            Interlocked.Increment(ref Reclaimed);
            PageFragEventSource.Log.LeakReclaimed("MemoryOwner", 1, trueSize, rentedAt?.ToString() ?? string.Empty);
        }

        /// <summary>Drains the cache (quiesced, or on the owning thread); returns the free bytes it gave back.</summary>
        public long TrimQuiesced(bool idleOnly)
        {
            if (idleOnly && Active)
            {
                Active = false;
                return 0;
            }

            Active = false;
            long free = ReleaseParked() + Cache.CurrentPageSize - Cache.Offset;
            Cache.Drain();
            AdvanceEpoch();
            EvictedBytes += free;
            return free;
        }

        /// <summary>The owner objects the slot keeps for its next rents (test hook; owning thread, or quiesced).</summary>
        internal int IdleOwnerCount => _ownerCount;

        /// <summary>The pool is retired: the home thread's fast return parks and stashes no more owners (they leave for good).</summary>
        public void StopStashing()
        {
            _stashLimit = 0;
            _parkLimit = 0;
            _parkMax = 0;
        }

        /// <summary>The pool is retired: its idle owner objects leave for good.</summary>
        public void DropOwnersQuiesced()
        {
            while (_ownerCount > 0)
            {
                FragmentMemoryOwner owner = _owners[--_ownerCount]!;
                _owners[_ownerCount] = null;
                owner.Drop();
            }
        }

        // A fragment disposed on another thread than its slot's: freed as from any thread (one more atomic, on the
        // page count), counted and stashed by the disposing thread's own slot. Static with values: see Free.
        [MethodImpl(MethodImplOptions.NoInlining)]
        private static void ReturnFragmentElsewhere(FragmentMemoryOwner owner, PageFragment fragment, ThreadSlot home)
        {
            // Throws PageFragDoubleFreeException when the renting thread's stash path released the fragment first.
            PageFragCache.Free(in fragment);
            CountReturn(owner, fragment.TrueSize, home);
        }

        private static void CountReturn(FragmentMemoryOwner owner, int trueSize, ThreadSlot home)
        {
            ThreadSlot? mine = home.Registry.Current();
            if (mine is null)
            {
                // The pool was retired and this thread never had a slot: count atomically, leave the object to the GC.
                home.CountContendedReturn(trueSize);
                owner.Drop();
                return;
            }

            mine.Enter();
            try
            {
                mine.Returns++;
                mine.ReturnedBytes += trueSize;

                // Offered to the renting threads first (a thread that disposes what others rent has little use
                // for owner objects of its own); kept here when the spare stash is full.
                if (mine.Registry.Retired || !mine.Registry.Spare.TryReturn(owner))
                {
                    mine.StashLocked(owner);
                }
            }
            finally
            {
                mine.Exit();
            }
        }

        [MethodImpl(MethodImplOptions.NoInlining)]
        private FragmentMemoryOwner TakeSpareOwner() => Registry.Spare.TryTake() ?? new FragmentMemoryOwner(this);

        // Above 4 KiB on an order-0 page, the cache could not refill, or a nested call: a block of its own.
        [MethodImpl(MethodImplOptions.NoInlining)]
        private FragmentMemoryOwner? RentBlock(FragmentMemoryOwner owner, int size)
        {
            int order = size <= PageConstants.PageSize ? 0 : BitOperations.Log2((uint)(size - 1)) + 1 - PageConstants.PageShift;
            // A block without PageFlags.Caller, as a fragment cache's: FreePages of a handle found by address refuses it
            // (a caller's TryAllocPages block it would free behind the owner's back); the owner gives it back with its
            // own reference (FragmentMemoryOwner.ReleaseBlock).
            if (!Registry.Allocator.TryAllocBlock(order, AllocFlags.None, out Arena? arena, out int index))
            {
                StashLocked(owner);
                return null;
            }

            Page block = new(arena, index);
            owner.SetBlock(this, block);
            Rents++;
            RentedBytes += block.Length;
            DedicatedBlocks++;
            AllocatedBytes += block.Length;
            Active = true;
            return owner;
        }

        [MethodImpl(MethodImplOptions.NoInlining)]
        private void EnterQuiesced()
        {
            // A trim, a snapshot or the retirement runs: step aside until it is over, then mark the slot again. Also on
            // a return's way (a buffer disposed on another thread than its renter's, counted after its fragment was
            // freed): an interrupt during the wait is kept for the thread's next blocking call, not thrown.
            bool interrupted = false;
            do
            {
                Volatile.Write(ref Busy, 0);
                SpinWait spinner = default;
                while (Volatile.Read(ref Quiesce) != 0)
                {
                    Arena.SpinOnceKeepingInterrupt(ref spinner, ref interrupted);
                }

                Volatile.Write(ref Busy, 1);
            }
            while (Volatile.Read(ref Quiesce) != 0);
            Arena.KeepInterrupt(interrupted);
        }

        // Never wait on anyone: count atomically.
        private void CountContendedReturn(int trueSize)
        {
            Interlocked.Increment(ref ContendedReturns);
            Interlocked.Add(ref ContendedReturnedBytes, trueSize);
        }

        // Below the stash limit, checked by the caller.
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private void StashAt(FragmentMemoryOwner owner, int count)
        {
            _owners[count] = owner;
            _ownerCount = count + 1;
        }

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        private void StashLocked(FragmentMemoryOwner owner)
        {
            int count = _ownerCount;
            FragmentMemoryOwner?[] owners = _owners;
            if ((uint)count < (uint)owners.Length && !Registry.Retired)
            {
                owners[count] = owner;
                _ownerCount = count + 1;
            }
            else
            {
                StashElsewhere(owner);
            }
        }

        [MethodImpl(MethodImplOptions.NoInlining)]
        private void StashElsewhere(FragmentMemoryOwner owner)
        {
            if (Registry.Retired || !Registry.Spare.TryReturn(owner))
            {
                owner.Drop();
            }
        }
    }
}
