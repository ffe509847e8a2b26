using System.Runtime.InteropServices;

namespace PageFrag.Pages;

/// <summary>
/// A block of 2^<see cref="Order"/> contiguous pages handed out by a <see cref="PageAllocator"/>
/// (a <c>struct page *</c> to a head page). A value handle: copying it does not take a reference.
/// </summary>
public readonly struct Page : IEquatable<Page>
{
    internal readonly Arena? Arena;
    internal readonly int Index;

    // The block's generation when the handle was made: a handle kept after the block was freed and handed
    // to someone else no longer matches, so it cannot drop the new owner's reference.
    internal readonly int Generation;

    internal Page(Arena arena, int index)
    {
        Arena = arena;
        Index = index;
        // The generation a pending release claim of a page pool settles on, never the claim's passing one: a page that
        // leaves its pool while callers hold it goes back to their generation when the claim ends.
        Generation = (int)(PageDescriptor.ReadUnclaimed(ref arena.Pages[index]) >> 32);
    }

    /// <summary>True for the default value and for the result of a failed allocation.</summary>
    public bool IsEmpty => Arena is null;

    /// <summary>The block's order.</summary>
    public int Order => Descriptor.Order;

    /// <summary>The block's size in bytes: 4096 &lt;&lt; <see cref="Order"/>.</summary>
    public int Length => PageConstants.PageSize << Descriptor.Order;

    /// <summary>
    /// The address of the first byte, aligned to the block's size (<see cref="Length"/>) for orders 0 to 3,
    /// and to 32 KiB (or the whole arena if smaller) for larger blocks.
    /// </summary>
    public nint Address => NonEmpty.BaseAddress + (Index << PageConstants.PageShift);

    /// <summary>The current reference count (page_ref_count).</summary>
    /// <remarks>
    /// On the page a fragment cache is carving, fragments freed by other threads that the cache has not counted
    /// yet (it counts them when it leaves the page, see docs/kernel-map.md) are already subtracted, so the figure
    /// is the kernel's: one reference less per freed fragment. It is a snapshot: other threads may change it.
    /// </remarks>
    public int RefCount
    {
        get
        {
            Arena arena = NonEmpty;
            ref PageDescriptor d = ref arena.Pages[Index];
            int count = (int)PageDescriptor.ReadUnclaimed(ref d);
            if (Volatile.Read(ref d.CacheHeld) != 0)
            {
                count -= Arena.CountStates(arena.FragStates, (Index << PageConstants.PageShift) >> Arena.MarkShift, Length >> Arena.MarkShift,
                    Arena.FreedMark(Volatile.Read(ref d.Generation)));
            }

            return count;
        }
    }

    /// <summary>True when the block came from the emergency reserve (page_is_pfmemalloc).</summary>
    public bool IsPfMemalloc => (Descriptor.Flags & PageFlags.PfMemalloc) != 0;

    /// <summary>The allocator the block belongs to.</summary>
    /// <exception cref="InvalidOperationException">The handle is empty.</exception>
    /// <exception cref="ObjectDisposedException">The allocator was a private one, dropped without <c>Dispose</c> and collected.</exception>
    public PageAllocator Allocator => NonEmpty.Owner;

    /// <summary>The block's bytes.</summary>
    public Span<byte> Span => NonEmpty.GetSpan(Index << PageConstants.PageShift, Length);

    /// <summary>The block's bytes as <see cref="Memory{T}"/> over the pinned arena array.</summary>
    public Memory<byte> Memory => new(NonEmpty.Array, Arena!.ArrayOffset + (Index << PageConstants.PageShift), Length);

    /// <summary>
    /// Takes one more reference (get_page), to be dropped with <see cref="PageAllocator.FreePages"/>. Allowed on
    /// a page pool's or fragment cache's page too (the page then outlives its owner's release until the
    /// caller frees this reference, as with the kernel's get_page on a page-pool page).
    /// </summary>
    /// <exception cref="InvalidOperationException">The page is empty, has no reference left (it was freed),
    /// already has <see cref="int.MaxValue"/> references, or the handle is stale (the block was freed and
    /// handed out again since).</exception>
    public void AddRef()
    {
        PageAllocator.AddCallerRef(ref Descriptor, Generation);
    }

    internal ref PageDescriptor Descriptor => ref NonEmpty.Pages[Index];

    private Arena NonEmpty
    {
        get
        {
            if (Arena is null)
            {
                ThrowHelper.EmptyHandle("page");
            }

            return Arena;
        }
    }

    /// <summary>Same block of memory (a handle from before an in-place reuse equals one from after it).</summary>
    public bool Equals(Page other) => ReferenceEquals(Arena, other.Arena) && Index == other.Index;

    /// <inheritdoc/>
    public override bool Equals(object? obj) => obj is Page p && Equals(p);

    /// <inheritdoc/>
    public override int GetHashCode() => HashCode.Combine(Arena, Index);

    /// <summary>Equality of two handles (same block).</summary>
    public static bool operator ==(Page left, Page right) => left.Equals(right);

    /// <summary>Inequality of two handles.</summary>
    public static bool operator !=(Page left, Page right) => !left.Equals(right);

    /// <inheritdoc/>
    public override string ToString() => IsEmpty ? "Page(empty)" : $"Page(arena {Arena!.Id}, index {Index}, order {Order})";
}
