using System.Buffers;
using System.Collections.Concurrent;
using System.Diagnostics;
using System.Runtime.InteropServices;
using PageFrag.Buffers;
using PageFrag.Pages;

namespace PageFrag.Diagnostics;

/// <summary>
/// A debugging decorator for any <see cref="MemoryPool{T}"/> of bytes (typically a
/// <see cref="PageFragMemoryPool"/>): catches double disposal, use after disposal and writes after free,
/// at the cost of one allocation per rent. Keep it out of production paths.
/// </summary>
/// <remarks>
/// <para>Every rent gets a fresh owner object that is never recycled, so misuse can be told apart from
/// a later renter's legitimate use:</para>
/// <list type="bullet">
/// <item>a second <c>Dispose</c> throws <see cref="ObjectDisposedException"/> (an
/// <see cref="InvalidOperationException"/>, as Kestrel's diagnostic pool throws) and changes nothing;</item>
/// <item><c>Memory</c> after <c>Dispose</c> throws <see cref="ObjectDisposedException"/>, as
/// <see cref="MemoryPool{T}.Shared"/> does;</item>
/// <item>a given-back buffer is filled with <see cref="DiagnosticMemoryPoolOptions.Poison"/> and held in a
/// quarantine; when it leaves (pushed out by newer ones, or by <see cref="Verify"/> and <see cref="MemoryPool{T}.Dispose()"/>)
/// its bytes are checked, and overwritten poison is recorded as a <see cref="UseAfterFreeException"/>,
/// thrown by the next <see cref="Verify"/> or by <c>Dispose</c>;</item>
/// <item>with <see cref="DiagnosticMemoryPoolOptions.LeakDetection"/>, tracked rents remember their stack
/// trace: <see cref="GetOutstanding"/> lists those not given back yet (check it at the end of a test), and
/// an owner garbage collected without <c>Dispose</c> is reported to
/// <see cref="DiagnosticMemoryPoolOptions.LeakDetected"/> and <see cref="GetLeaks"/>;</item>
/// <item>with <see cref="DiagnosticMemoryPoolOptions.GuardBytes"/>, every buffer is followed by a guard zone
/// filled with <see cref="DiagnosticMemoryPoolOptions.GuardPattern"/>, checked when the buffer is disposed:
/// a write past the end of <c>Memory</c> (for example past <c>seg.Offset + seg.Count</c> of the shared
/// arena array that <c>MemoryMarshal.TryGetArray</c> gives) throws <see cref="BufferOverrunException"/>
/// from that <c>Dispose</c>, after the buffer was given back.</item>
/// </list>
/// <para>Threading: as the inner pool. Renting and disposing buffers are safe from any thread; the
/// quarantine takes a lock.</para>
/// </remarks>
public sealed class DiagnosticMemoryPool : MemoryPool<byte>
{
    private readonly MemoryPool<byte> _inner;
    private readonly DiagnosticMemoryPoolOptions _options;
    private readonly Lock _lock = new();
    private readonly Queue<DiagnosticOwner> _quarantine = new();
    private readonly List<UseAfterFreeException> _violations = [];
    private readonly ConcurrentDictionary<LeakRecord, byte> _outstanding = new();
    private readonly ConcurrentQueue<LeakReport> _leaks = new();
    private long _rents;
    private bool _disposed;

    /// <summary>Wraps <paramref name="inner"/>.</summary>
    /// <exception cref="ArgumentNullException"><paramref name="inner"/> is null.</exception>
    /// <exception cref="ArgumentOutOfRangeException">An option is out of its documented range.</exception>
    public DiagnosticMemoryPool(MemoryPool<byte> inner, DiagnosticMemoryPoolOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(inner);
        options ??= new DiagnosticMemoryPoolOptions();
        options.Validate();
        _inner = inner;
        _options = options;
    }

    /// <summary>The decorated pool.</summary>
    public MemoryPool<byte> Inner => _inner;

    /// <inheritdoc/>
    /// <remarks>The inner pool's, less <see cref="DiagnosticMemoryPoolOptions.GuardBytes"/>.</remarks>
    public override int MaxBufferSize => _inner.MaxBufferSize - _options.GuardBytes;

    /// <summary>Buffers given back and held in quarantine.</summary>
    public int QuarantinedCount
    {
        get
        {
            lock (_lock)
            {
                return _quarantine.Count;
            }
        }
    }

    /// <summary>Rents from the inner pool; the inner pool's exceptions pass through unchanged.</summary>
    /// <exception cref="ObjectDisposedException">The decorator was disposed.</exception>
    public override IMemoryOwner<byte> Rent(int minBufferSize = -1)
    {
        if (Volatile.Read(ref _disposed))
        {
            BufferThrowHelper.Disposed(nameof(DiagnosticMemoryPool));
        }

        int guard = _options.GuardBytes;
        if (guard > 0 && (uint)minBufferSize > (uint)MaxBufferSize && minBufferSize != -1)
        {
            // The inner pool would accept a size that leaves no room for the guard: refuse it as it would.
            ThrowHelper.ArgumentOutOfRange(nameof(minBufferSize), minBufferSize, $"minBufferSize must be -1 (the default size) or between 0 and MaxBufferSize ({MaxBufferSize}, the inner pool's less {guard} guard bytes).");
        }

        IMemoryOwner<byte> inner = _inner.Rent(minBufferSize == -1 || guard == 0 ? minBufferSize : minBufferSize + guard);
        LeakRecord? record = null;
        if (ShouldTrack())
        {
            // Skip this frame: the report starts at the caller of Rent.
            record = new LeakRecord(inner.Memory.Length, new StackTrace(1, fNeedFileInfo: true).ToString());
            _outstanding.TryAdd(record, 0);
        }

        return new DiagnosticOwner(this, inner, record);
    }

    /// <summary>Tracked buffers rented and not yet given back, with where they were rented. Any thread.</summary>
    public IReadOnlyList<LeakReport> GetOutstanding() =>
        _outstanding.Keys.Select(r => new LeakReport(r.Length, r.RentedAt, Collected: false)).ToArray();

    /// <summary>Tracked buffers found garbage collected without having been disposed, so far. Any thread.</summary>
    public IReadOnlyList<LeakReport> GetLeaks() => _leaks.ToArray();

    private bool ShouldTrack() => _options.LeakDetection switch
    {
        LeakDetectionLevel.Paranoid => true,
        LeakDetectionLevel.Sampled => Interlocked.Increment(ref _rents) % _options.SamplingInterval == 0,
        _ => false,
    };

    private void Leaked(DiagnosticOwner owner, LeakRecord record)
    {
        _outstanding.TryRemove(record, out _);
        if (_options.ReclaimLeakedBuffers)
        {
            owner.ReleaseInner();
        }

        var report = new LeakReport(record.Length, record.RentedAt, Collected: true);
        _leaks.Enqueue(report);
        try
        {
            _options.LeakDetected?.Invoke(report);
        }
        catch (Exception e)
        {
            // A throwing callback on the finalizer thread would end the process; say so where it is visible.
            Debug.Fail("DiagnosticMemoryPoolOptions.LeakDetected threw: " + e);
        }
    }

    /// <summary>
    /// Checks every quarantined buffer now and releases them to the inner pool; then throws the
    /// writes after free found since the previous call, if any (each is reported once).
    /// </summary>
    /// <exception cref="UseAfterFreeException">A given-back buffer was written.</exception>
    public void Verify()
    {
        // Also Dispose's last step (after it set _disposed): thrown from this wait, an interrupt would leave the
        // quarantine full for good. Kept for the thread's next blocking call instead.
        bool interrupted = false;
        LockWait.EnterKeepingInterrupt(_lock, ref interrupted);
        try
        {
            while (_quarantine.Count > 0)
            {
                ReleaseLocked(_quarantine.Dequeue());
            }

            if (_violations.Count > 0)
            {
                // Each violation is reported once; the pool stays usable for the rest of the test or session.
                UseAfterFreeException first = _violations[0];
                int count = _violations.Count;
                _violations.Clear();
                throw count == 1
                    ? first
                    : new UseAfterFreeException($"{count} buffers were written after they were given back. First: {first.Message}");
            }
        }
        finally
        {
            _lock.Exit();
            Arena.KeepInterrupt(interrupted);
        }
    }

    /// <summary>
    /// Flushes the quarantine (checking each buffer), disposes the inner pool if configured, and throws
    /// if any write after free was found.
    /// </summary>
    protected override void Dispose(bool disposing)
    {
        if (_disposed)
        {
            return;
        }

        _disposed = true;
        try
        {
            Verify();
        }
        finally
        {
            if (_options.DisposeInner)
            {
                _inner.Dispose();
            }
        }
    }

    private void Returned(DiagnosticOwner owner)
    {
        BufferOverrunException? overrun = CheckGuard(owner);
        ReturnChecked(owner);
        if (overrun is not null)
        {
            throw overrun;
        }
    }

    private BufferOverrunException? CheckGuard(DiagnosticOwner owner)
    {
        if (_options.GuardBytes == 0)
        {
            return null;
        }

        Span<byte> guard = owner.InnerMemory.Span[owner.ExposedLength..];
        int bad = guard.IndexOfAnyExcept(_options.GuardPattern);
        if (bad < 0)
        {
            return null;
        }

        string where = owner.Record is { } r ? $" Rented at:{Environment.NewLine}{r.RentedAt}" : "";
        return new BufferOverrunException(
            $"A {owner.ExposedLength}-byte buffer was written past its end: byte {owner.ExposedLength + bad} (guard byte {bad}) is 0x{guard[bad]:X2} instead of the guard pattern 0x{_options.GuardPattern:X2}. In a shared arena that write lands in another renter's buffer.{where}");
    }

    private void ReturnChecked(DiagnosticOwner owner)
    {
        if (_options.PoisonFreedMemory)
        {
            owner.InnerMemory.Span.Fill(_options.Poison);
        }

        // The owner is already marked returned: thrown from this wait, an interrupt would leave its buffer neither in
        // the quarantine nor with the inner pool. Kept for the thread's next blocking call instead.
        bool interrupted = false;
        LockWait.EnterKeepingInterrupt(_lock, ref interrupted);
        try
        {
            if (_options.QuarantineLength == 0 || _disposed)
            {
                ReleaseLocked(owner);
                return;
            }

            _quarantine.Enqueue(owner);
            if (_quarantine.Count > _options.QuarantineLength)
            {
                ReleaseLocked(_quarantine.Dequeue());
            }
        }
        finally
        {
            _lock.Exit();
            Arena.KeepInterrupt(interrupted);
        }
    }

    /// <summary>The quarantine's lock (for the tests that hold it).</summary>
    internal Lock LockForTests => _lock;

    private void ReleaseLocked(DiagnosticOwner owner)
    {
        if (_options.PoisonFreedMemory)
        {
            Span<byte> bytes = owner.InnerMemory.Span;
            int bad = bytes.IndexOfAnyExcept(_options.Poison);
            if (bad >= 0)
            {
                string where = owner.Record is { } r ? $" Rented at:{Environment.NewLine}{r.RentedAt}" : "";
                _violations.Add(new UseAfterFreeException(
                    $"A {bytes.Length}-byte buffer was written after it was given back: byte {bad} is 0x{bytes[bad]:X2} instead of the poison 0x{_options.Poison:X2}.{where}"));
            }
        }

        owner.ReleaseInner();
    }

    /// <summary>Where a tracked buffer came from. Kept apart from the owner so that the owner can be collected.</summary>
    private sealed record LeakRecord(int Length, string RentedAt)
    {
        // Identity, not value, equality: two rents from the same line are two records.
        public bool Equals(LeakRecord? other) => ReferenceEquals(this, other);

        public override int GetHashCode() => System.Runtime.CompilerServices.RuntimeHelpers.GetHashCode(this);
    }

    /// <summary>
    /// One rent: never recycled, so every misuse of this object is caught. Tracked owners keep their
    /// finalizer, which reports them if they are collected without Dispose; the others suppress it.
    /// </summary>
    /// <remarks>
    /// A <see cref="MemoryManager{T}"/>, so that the memory it hands out keeps it (and through its inner
    /// memory, the inner owner) reachable: a renter that keeps only <c>Memory</c> is never reported as a
    /// leak, and with <see cref="DiagnosticMemoryPoolOptions.ReclaimLeakedBuffers"/> its bytes are never
    /// released under it. The span of a stale memory stays the quarantined bytes, so that a write after
    /// free is caught by the poison check rather than refused. <see cref="IDisposable"/> is re-implemented:
    /// <see cref="MemoryManager{T}"/>'s own would suppress the leak report.
    /// </remarks>
    private sealed class DiagnosticOwner : MemoryManager<byte>, IMemoryOwner<byte>, IDisposable
    {
        private readonly DiagnosticMemoryPool _pool;
        private readonly Memory<byte> _memory;
        private readonly Memory<byte> _exposed;
        private IMemoryOwner<byte>? _inner;
        private int _disposed;

        public DiagnosticOwner(DiagnosticMemoryPool pool, IMemoryOwner<byte> inner, LeakRecord? record)
        {
            _pool = pool;
            _inner = inner;
            _memory = inner.Memory;
            int guard = pool._options.GuardBytes;
            _exposed = guard == 0 ? _memory : _memory[..Math.Max(0, _memory.Length - guard)];
            if (guard != 0)
            {
                _memory.Span[_exposed.Length..].Fill(pool._options.GuardPattern);
            }

            Record = record;
            if (record is null)
            {
                GC.SuppressFinalize(this);
            }
        }

#pragma warning disable CA2015 // A finalizer on a MemoryManager<T>: it only reports (and, when asked, reclaims) an owner nobody references, memory included.
        ~DiagnosticOwner()
#pragma warning restore CA2015
        {
            if (Volatile.Read(ref _disposed) == 0 && Record is { } record)
            {
                _pool.Leaked(this, record);
            }
        }

        public LeakRecord? Record { get; }

        public override Memory<byte> Memory
        {
            get
            {
                if (Volatile.Read(ref _disposed) != 0)
                {
                    BufferThrowHelper.Disposed(nameof(DiagnosticMemoryPool) + " buffer", "The buffer was used after it was given back to the pool (Memory read after Dispose).");
                }

                return CreateMemory(_exposed.Length);
            }
        }

        public override Span<byte> GetSpan() => _exposed.Span;

        // The inner memory's pin (a no-op handle over PageFrag's pinned arenas, a GCHandle over an array pool's arrays).
        public override MemoryHandle Pin(int elementIndex = 0) => _exposed[elementIndex..].Pin();

        public override void Unpin()
        {
        }

        /// <summary>The length the renter sees; the guard zone follows it.</summary>
        public int ExposedLength => _exposed.Length;

        /// <summary>The memory, for the pool's poisoning and checks after the renter is done.</summary>
        public Memory<byte> InnerMemory => _memory;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _disposed, 1) != 0)
            {
                string where = Record is { } r ? $" Rented at:{Environment.NewLine}{r.RentedAt}" : "";
                BufferThrowHelper.Disposed(nameof(DiagnosticMemoryPool) + " buffer", "The buffer was given back to the pool twice (Dispose called twice)." + where);
            }

            if (Record is { } record)
            {
                _pool._outstanding.TryRemove(record, out _);
                GC.SuppressFinalize(this);
            }

            _pool.Returned(this);
        }

        protected override bool TryGetArray(out ArraySegment<byte> segment) => MemoryMarshal.TryGetArray<byte>(_exposed, out segment);

        // Never reached: IDisposable is re-implemented by Dispose().
        protected override void Dispose(bool disposing)
        {
        }

        public void ReleaseInner()
        {
            IMemoryOwner<byte>? inner = _inner;
            _inner = null;
            inner?.Dispose();
        }
    }
}
