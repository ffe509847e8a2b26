using PageFrag.Pages;

namespace PageFrag.Frag;

/// <summary>
/// What a prepare or probe found: the space left in the cache's current page, from the (aligned) offset
/// where the next fragment would start to the end of the page (the kernel's <c>struct page_frag</c>
/// {page, offset, size}). No reference is taken and the cache does not move until a commit.
/// </summary>
/// <remarks>
/// Write into <see cref="Span"/> (or <see cref="Memory"/>), then commit the bytes used with
/// <see cref="PageFragCache.Commit"/> or <see cref="PageFragCache.CommitNoRef(in PreparedFragment, int)"/>,
/// or simply drop the preparation to use nothing. A preparation goes stale when the cache allocates or
/// commits anything else; committing a stale one throws.
/// </remarks>
public readonly struct PreparedFragment
{
    internal readonly Arena? Arena;
    internal readonly int PageIndex;
    internal readonly int Generation;
    private readonly int _offset;
    private readonly int _size;

    internal PreparedFragment(Arena arena, int pageIndex, int generation, int offset, int size)
    {
        Arena = arena;
        PageIndex = pageIndex;
        Generation = generation;
        _offset = offset;
        _size = size;
    }

    /// <summary>True for the default value and for a failed prepare or probe.</summary>
    public bool IsEmpty => Arena is null;

    /// <summary>Where in the page the next fragment would start (already aligned).</summary>
    public int Offset => _offset;

    /// <summary>
    /// All the bytes left in the page from <see cref="Offset"/>: at least what was asked for, up to the
    /// whole rest of an order-3 page.
    /// </summary>
    public int Size => _size;

    /// <summary>The page block.</summary>
    public Page Page => new(NonEmpty, PageIndex);

    /// <summary>The address of the first available byte.</summary>
    public nint Address => NonEmpty.BaseAddress + (PageIndex << PageConstants.PageShift) + _offset;

    /// <summary>The available bytes, to be written before the commit.</summary>
    public Span<byte> Span => NonEmpty.GetSpan((PageIndex << PageConstants.PageShift) + _offset, _size);

    /// <summary>The available bytes as memory over the pinned backing array.</summary>
    public Memory<byte> Memory => new(NonEmpty.Array, Arena!.ArrayOffset + (PageIndex << PageConstants.PageShift) + _offset, _size);

    private Arena NonEmpty
    {
        get
        {
            if (Arena is null)
            {
                ThrowHelper.EmptyHandle("preparation");
            }

            return Arena;
        }
    }

    /// <inheritdoc/>
    public override string ToString() => IsEmpty ? "PreparedFragment(empty)" : $"PreparedFragment(offset {_offset}, size {_size})";
}
