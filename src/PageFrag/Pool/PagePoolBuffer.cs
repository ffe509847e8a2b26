using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace PageFrag.Pool;

/// <summary>
/// A buffer handed out by a <see cref="PagePool"/>: a whole page or a fragment of one, with the bytes asked for
/// (<see cref="Length"/>) and the memory it really keeps from reuse (<see cref="TrueSize"/>). It owns one
/// <c>pp_ref_count</c> reference on its page until <see cref="Free"/>.
/// </summary>
/// <remarks>
/// <para>A value handle: copies are the same buffer; free exactly one of them, once. Freeing is safe from any
/// thread (napi_pp_put_page): on the pool's owner thread the page may go straight back into the pool's cache,
/// elsewhere it goes through the recycle ring.</para>
/// <para>A second free throws <see cref="PageFragDoubleFreeException"/>: fragments are checked with a mark per
/// fragment, whole pages with the page's generation.</para>
/// </remarks>
public readonly struct PagePoolBuffer : IEquatable<PagePoolBuffer>
{
    private readonly NetMem _netMem;
    private readonly int _offset;
    private readonly int _length;
    private readonly int _trueSize;
    private readonly bool _isFragment;

    internal PagePoolBuffer(NetMem netMem, int offset, int length, int trueSize, bool isFragment)
    {
        _netMem = netMem;
        _offset = offset;
        _length = length;
        _trueSize = trueSize;
        _isFragment = isFragment;
    }

    /// <summary>True for the default value and the result of a failed allocation.</summary>
    public bool IsEmpty => _netMem.IsEmpty;

    /// <summary>The page (or provider chunk) that holds the buffer.</summary>
    public NetMem NetMem => _netMem;

    /// <summary>Offset of the buffer in its page.</summary>
    public int Offset => _offset;

    /// <summary>The bytes asked for.</summary>
    public int Length => _length;

    /// <summary>
    /// The bytes the buffer keeps from reuse: the whole page for a page, the size rounded to 64 bytes for a
    /// fragment, or the rest of the page when too little was left for another fragment. Charge this, not
    /// <see cref="Length"/>, to whoever holds the buffer (skb truesize).
    /// </summary>
    public int TrueSize => _trueSize;

    /// <summary>True when the buffer was carved from a shared fragment page.</summary>
    public bool IsFragment => _isFragment;

    /// <summary>False for device memory, whose bytes the CPU must not touch.</summary>
    public bool IsReadable => _netMem.IsReadable;

    /// <summary>Device address of the first byte.</summary>
    public ulong DmaAddress => _netMem.DmaAddress + (ulong)_offset;

    /// <summary>Address of the first byte.</summary>
    /// <exception cref="NetMemUnreadableException">The buffer is in device memory.</exception>
    public nint Address => _netMem.Address + _offset;

    /// <summary>A pointer to the first byte, valid until the buffer is freed.</summary>
    /// <exception cref="NetMemUnreadableException">The buffer is in device memory.</exception>
    public unsafe byte* Pointer => (byte*)Address;

    /// <summary>The bytes.</summary>
    /// <exception cref="NetMemUnreadableException">The buffer is in device memory.</exception>
    public unsafe Span<byte> Span
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => new((void*)Address, _length);
    }

    /// <summary>The bytes as <see cref="Memory{T}"/> (array-backed for host pages, so
    /// <see cref="MemoryMarshal.TryGetArray{T}"/> succeeds).</summary>
    /// <exception cref="NetMemUnreadableException">The buffer is in device memory.</exception>
    public Memory<byte> Memory => _netMem.Memory.Slice(_offset, _length);

    /// <summary>The bytes as a segment of the pinned array behind a host page (for socket APIs that take segments).</summary>
    /// <exception cref="NetMemUnreadableException">The buffer is in device memory.</exception>
    /// <exception cref="InvalidOperationException">The memory is not array-backed.</exception>
    public ArraySegment<byte> ArraySegment
    {
        get
        {
            if (!MemoryMarshal.TryGetArray(Memory, out ArraySegment<byte> segment))
            {
                ThrowHelper.InvalidOperation("The buffer's memory is not backed by an array.");
            }

            return segment;
        }
    }

    /// <summary>
    /// Gives the buffer back (napi_pp_put_page). Any thread; on the pool's owner thread the page may be recycled
    /// straight into the pool's cache.
    /// </summary>
    /// <exception cref="InvalidOperationException">The buffer is empty.</exception>
    /// <exception cref="PageFragDoubleFreeException">The buffer was already freed.</exception>
    public void Free() => PagePoolCore.Free(this);

    internal int Generation => _netMem.Generation;

    /// <inheritdoc/>
    public bool Equals(PagePoolBuffer other) =>
        _netMem.Equals(other._netMem) && _offset == other._offset && _length == other._length && _trueSize == other._trueSize;

    /// <inheritdoc/>
    public override bool Equals(object? obj) => obj is PagePoolBuffer b && Equals(b);

    /// <inheritdoc/>
    public override int GetHashCode() => HashCode.Combine(_netMem, _offset, _length);

    /// <summary>Same buffer.</summary>
    public static bool operator ==(PagePoolBuffer left, PagePoolBuffer right) => left.Equals(right);

    /// <summary>Different buffers.</summary>
    public static bool operator !=(PagePoolBuffer left, PagePoolBuffer right) => !left.Equals(right);

    /// <inheritdoc/>
    public override string ToString() =>
        IsEmpty ? "PagePoolBuffer(empty)" : $"PagePoolBuffer({(_isFragment ? "fragment" : "page")} +{_offset}, {_length} B, truesize {_trueSize})";
}
