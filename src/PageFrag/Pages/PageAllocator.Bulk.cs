namespace PageFrag.Pages;

public sealed partial class PageAllocator
{
    /// <summary>
    /// Allocates up to <paramref name="arenas"/>.Length order-0 pages (alloc_pages_bulk), each set up as
    /// <see cref="TryAllocBlock(int, AllocFlags, out Arena?, out int)"/> does (reference count 1, fresh generation).
    /// </summary>
    /// <returns>
    /// How many pages were allocated: the first that fails (memory limit, reserve watermark, injected fault)
    /// ends the batch, as the kernel's bulk allocator returns what it could get.
    /// </returns>
    /// <remarks>
    /// The page pool's slow path calls this with 64 slots. Each page still goes through the same checks as a
    /// single allocation, so limits and fault injection apply page by page; the per-CPU list already batches
    /// the buddy lock, so a separate bulk path would save little and duplicate the descriptor set-up.
    /// </remarks>
    internal int TryAllocBulk(AllocFlags flags, Span<Arena?> arenas, Span<int> indexes)
    {
        int count = Math.Min(arenas.Length, indexes.Length);
        int got = 0;
        while (got < count && TryAllocBlock(0, flags, out Arena? arena, out int index))
        {
            arenas[got] = arena;
            indexes[got] = index;
            got++;
        }

        return got;
    }
}
