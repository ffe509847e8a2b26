using System.Runtime.CompilerServices;
using PageFrag.Pages;

namespace PageFrag.Frag;

/// <summary>
/// A fragment carved from a page by a <see cref="PageFragCache"/>: a value handle that owns one reference
/// on its page until <see cref="Free"/> (page_frag_free).
/// </summary>
/// <remarks>
/// <para>The bytes live in a pinned array, so the fragment can be used as <see cref="Span"/>,
/// <see cref="Memory"/>, <see cref="ArraySegment"/> (which <c>MemoryMarshal.TryGetArray</c> also returns)
/// and as a raw pointer (<see cref="Address"/>), all valid until the fragment is freed.</para>
/// <para>Freeing is safe from any thread. Copies of the handle are the same fragment: free exactly one of
/// them, once. A second free, also a racing one, always throws <see cref="PageFragDoubleFreeException"/>.</para>
/// <para>Use after free: in the detection mode (<see cref="PageAllocatorOptions.DetectMisuse"/>),
/// <see cref="Span"/>, <see cref="Memory"/>, <see cref="ArraySegment"/> and <see cref="Pointer"/> of a freed,
/// aborted or stale handle throw <see cref="InvalidOperationException"/>. In the default mode they are not
/// checked (a freed handle's bytes may already belong to another owner). <see cref="Address"/> is never
/// checked: it is the fragment's identity (for <see cref="PageFragCache.Free(nint)"/>, logs), not access.</para>
/// </remarks>
public readonly struct PageFragment : IEquatable<PageFragment>
{
    internal readonly Arena? Arena;
    internal readonly int ArenaOffset;
    private readonly int _length;
    private readonly int _trueSize;
    internal readonly int Generation;

    internal PageFragment(Arena arena, int arenaOffset, int length, int trueSize, int generation)
    {
        Arena = arena;
        ArenaOffset = arenaOffset;
        _length = length;
        _trueSize = trueSize;
        Generation = generation;
    }

    /// <summary>True for the default value and for the result of a failed allocation.</summary>
    public bool IsEmpty => Arena is null;

    /// <summary>The bytes requested (and committed).</summary>
    public int Length => _length;

    /// <summary>
    /// The bytes this fragment took from its page: <see cref="Length"/> plus the alignment padding skipped
    /// before it. This is what socket accounting should charge (skb truesize).
    /// </summary>
    public int TrueSize => _trueSize;

    /// <summary>Offset of the fragment within its page block.</summary>
    public int PageOffset => ArenaOffset - (NonEmpty.Pages[ArenaOffset >> PageConstants.PageShift].HeadIndex << PageConstants.PageShift);

    /// <summary>The address of the first byte (stable: the memory is pinned).</summary>
    public nint Address => NonEmpty.BaseAddress + ArenaOffset;

    /// <summary>The fragment's bytes.</summary>
    /// <exception cref="InvalidOperationException">The handle is empty, or (detection mode) the fragment was freed.</exception>
    public Span<byte> Span
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => Accessible.GetSpan(ArenaOffset, _length);
    }

    /// <summary>The fragment's bytes as memory over the pinned backing array.</summary>
    /// <exception cref="InvalidOperationException">The handle is empty, or (detection mode) the fragment was freed.</exception>
    public Memory<byte> Memory
    {
        get
        {
            Arena a = Accessible;
            return new(a.Array, a.ArrayOffset + ArenaOffset, _length);
        }
    }

    /// <summary>The fragment as a segment of the pinned backing array.</summary>
    /// <exception cref="InvalidOperationException">The handle is empty, or (detection mode) the fragment was freed.</exception>
    public ArraySegment<byte> ArraySegment
    {
        get
        {
            Arena a = Accessible;
            return new(a.Array, a.ArrayOffset + ArenaOffset, _length);
        }
    }

    /// <summary>The page block that holds the fragment.</summary>
    public Page Page => new(NonEmpty, NonEmpty.Pages[ArenaOffset >> PageConstants.PageShift].HeadIndex);

    /// <summary>A pointer to the first byte. Valid until the fragment is freed.</summary>
    /// <exception cref="InvalidOperationException">The handle is empty, or (detection mode) the fragment was freed.</exception>
    public unsafe byte* Pointer => (byte*)(Accessible.BaseAddress + ArenaOffset);

    /// <summary>Drops the fragment's page reference (page_frag_free). Any thread.</summary>
    /// <exception cref="ArgumentException">The handle is empty.</exception>
    /// <exception cref="PageFragDoubleFreeException">The fragment was already freed, or its page moved on.</exception>
    public void Free() => PageFragCache.Free(this);

    internal Arena NonEmpty
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get
        {
            Arena? a = Arena;
            if (a is null)
            {
                ThrowHelper.EmptyHandle("fragment");
            }

            return a;
        }
    }

    /// <summary>The arena, for an access to the bytes: in the detection mode, only while the fragment is live.</summary>
    private Arena Accessible
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get
        {
            Arena a = NonEmpty;
            if (a.DetectMisuse)
            {
                // Static, with the fields by value: an instance call would take the handle's address and keep
                // every caller's copy of it in memory instead of registers (a store-forwarding stall per use).
                CheckLive(a, ArenaOffset, Generation);
            }

            return a;
        }
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void CheckLive(Arena arena, int arenaOffset, int generation)
    {
        ref PageDescriptor d = ref arena.Pages[arena.Pages[arenaOffset >> PageConstants.PageShift].HeadIndex];
        if (d.Generation != generation || (d.Flags & PageFlags.Head) == 0 ||
            Arena.ReadSettled(arena.FragStates, Arena.StateIndex(arena.FragStates, arenaOffset)) != Arena.LiveTag(generation, arenaOffset))
        {
            ThrowHelper.InvalidOperation($"Use after free: the fragment at 0x{arena.BaseAddress + arenaOffset:x} was freed or aborted, or its page moved on, " +
                "so its bytes may belong to another owner now.");
        }
    }

    /// <inheritdoc/>
    public bool Equals(PageFragment other) =>
        ReferenceEquals(Arena, other.Arena) && ArenaOffset == other.ArenaOffset && _length == other._length && Generation == other.Generation;

    /// <inheritdoc/>
    public override bool Equals(object? obj) => obj is PageFragment f && Equals(f);

    /// <inheritdoc/>
    public override int GetHashCode() => HashCode.Combine(Arena, ArenaOffset, _length, Generation);

    /// <summary>Same fragment.</summary>
    public static bool operator ==(PageFragment left, PageFragment right) => left.Equals(right);

    /// <summary>Different fragments.</summary>
    public static bool operator !=(PageFragment left, PageFragment right) => !left.Equals(right);

    /// <inheritdoc/>
    public override string ToString() => IsEmpty ? "PageFragment(empty)" : $"PageFragment(0x{Address:x}, {_length} B, truesize {_trueSize})";
}
