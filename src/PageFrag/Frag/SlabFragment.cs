using System.Runtime.CompilerServices;

namespace PageFrag.Frag;

/// <summary>
/// A fragment handed out by a <see cref="SlabCache"/>: one slot of a slab page, owned until <see cref="Free"/>.
/// A value handle; copies are the same fragment: free exactly one of them, once.
/// </summary>
/// <remarks>
/// <para>The bytes live in a pinned array: <see cref="Span"/>, <see cref="Memory"/>, <see cref="ArraySegment"/>
/// and <see cref="Address"/> are all valid until the fragment is freed.</para>
/// <para>Every access to the bytes (<see cref="Span"/>, <see cref="Memory"/>, <see cref="ArraySegment"/>)
/// checks that the handle is still live, in every mode: the slot's state word must still hold the value the
/// allocation gave this handle. A freed or stale handle throws <see cref="InvalidOperationException"/>
/// instead of reaching bytes that may belong to another owner. (A free racing with the access is not caught:
/// a <see cref="Memory{T}"/> taken before the free stays a view of the slot.)</para>
/// <para>A slot's state counts every allocation and free of that slot; a stale handle could only match again
/// after 2^31 reuses of the same slot.</para>
/// </remarks>
public readonly struct SlabFragment : IEquatable<SlabFragment>
{
    internal readonly SlabPage? Page;
    internal readonly int Slot;
    internal readonly int State;
    private readonly int _length;

    internal SlabFragment(SlabPage page, int slot, int state, int length)
    {
        Page = page;
        Slot = slot;
        State = state;
        _length = length;
    }

    /// <summary>True for the default value and for the result of a failed allocation.</summary>
    public bool IsEmpty => Page is null;

    /// <summary>The bytes requested.</summary>
    public int Length => _length;

    /// <summary>The bytes the fragment takes from its page: its size class's slot (<see cref="SlabCache.SlotSize"/>).</summary>
    public int TrueSize => Page is null ? 0 : Page.Class.SlotSize;

    /// <summary>The address of the first byte (the memory is pinned). Not checked: it is the fragment's identity, not access.</summary>
    /// <exception cref="InvalidOperationException">The handle is empty.</exception>
    public nint Address
    {
        get
        {
            SlabPage p = NonEmpty(Page);
            return p.Address + (Slot * p.Class.SlotSize);
        }
    }

    /// <summary>The fragment's bytes.</summary>
    /// <exception cref="InvalidOperationException">The handle is empty, or the fragment was freed.</exception>
    public Span<byte> Span
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get
        {
            SlabPage p = Live(Page, Slot, State);
            return new Span<byte>(p.Arena!.Array, p.ArrayOffset + (Slot * p.Class.SlotSize), _length);
        }
    }

    /// <summary>The fragment's bytes as memory over the pinned backing array.</summary>
    /// <exception cref="InvalidOperationException">The handle is empty, or the fragment was freed.</exception>
    public Memory<byte> Memory
    {
        get
        {
            SlabPage p = Live(Page, Slot, State);
            return new Memory<byte>(p.Arena!.Array, p.ArrayOffset + (Slot * p.Class.SlotSize), _length);
        }
    }

    /// <summary>The fragment as a segment of the pinned backing array.</summary>
    /// <exception cref="InvalidOperationException">The handle is empty, or the fragment was freed.</exception>
    public ArraySegment<byte> ArraySegment
    {
        get
        {
            SlabPage p = Live(Page, Slot, State);
            return new ArraySegment<byte>(p.Arena!.Array, p.ArrayOffset + (Slot * p.Class.SlotSize), _length);
        }
    }

    /// <summary>Frees the fragment (<see cref="SlabCache.Free"/>). Any thread.</summary>
    /// <exception cref="ArgumentException">The handle is empty.</exception>
    /// <exception cref="PageFragDoubleFreeException">The fragment was already freed, or the handle is stale.</exception>
    public void Free() => SlabCache.Free(this);

    // Static, with the fields by value, so that callers keep the handle in registers.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static SlabPage Live(SlabPage? page, int slot, int state)
    {
        SlabPage p = NonEmpty(page);
        if (Volatile.Read(ref p.States[slot]) != state)
        {
            ThrowFreed();
        }

        return p;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static SlabPage NonEmpty(SlabPage? page)
    {
        if (page is null)
        {
            ThrowHelper.EmptyHandle("slab fragment");
        }

        return page;
    }

    [System.Diagnostics.CodeAnalysis.DoesNotReturn]
    private static void ThrowFreed() =>
        ThrowHelper.InvalidOperation("Use after free: the slab fragment was freed (or the handle is stale), so its bytes may belong to another owner now.");

    /// <inheritdoc/>
    public bool Equals(SlabFragment other) =>
        ReferenceEquals(Page, other.Page) && Slot == other.Slot && State == other.State && _length == other._length;

    /// <inheritdoc/>
    public override bool Equals(object? obj) => obj is SlabFragment f && Equals(f);

    /// <inheritdoc/>
    public override int GetHashCode() => HashCode.Combine(Page, Slot, State, _length);

    /// <summary>Same fragment.</summary>
    /// <param name="left">A fragment.</param>
    /// <param name="right">Another fragment.</param>
    public static bool operator ==(SlabFragment left, SlabFragment right) => left.Equals(right);

    /// <summary>Different fragments.</summary>
    /// <param name="left">A fragment.</param>
    /// <param name="right">Another fragment.</param>
    public static bool operator !=(SlabFragment left, SlabFragment right) => !left.Equals(right);

    /// <inheritdoc/>
    public override string ToString() => IsEmpty ? "SlabFragment(empty)" : $"SlabFragment(0x{Address:x}, {_length} B, truesize {TrueSize})";
}
