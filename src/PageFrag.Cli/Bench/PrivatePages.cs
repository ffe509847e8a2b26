using PageFrag.Pages;

namespace PageFrag.Cli.Bench;

/// <summary>
/// A private page allocator for one measurement of a PageFrag row: its page counts are that measurement's
/// alone, so a leak cannot hide behind another user of <see cref="PageAllocator.Shared"/>.
/// </summary>
internal sealed class PrivatePages : IDisposable
{
    public PrivatePages()
    {
        Allocator = new PageAllocator();

        // A fresh allocator has no arena, and the cache's order-3 attempt never grows the arenas, so its
        // first refill would get a 4 KiB page (which reuse in place then keeps). Take and free one order-3
        // block first, as a process that has been running would have: the arena's creation is set-up, and
        // the caches work on their 32 KiB pages.
        if (!Allocator.TryAllocPages(PageConstants.FragCacheMaxOrder, AllocFlags.None, out Page first))
        {
            Allocator.Dispose();
            throw new BenchFailureException("A fresh page allocator could not provide an order-3 block.");
        }

        Allocator.FreePages(first);
    }

    public PageAllocator Allocator { get; }

    /// <summary>Pages in use; after every buffer was freed and every cache drained, the leaked pages.</summary>
    public long PagesInUse => Allocator.PagesInUse;

    public void Dispose() => Allocator.Dispose();
}
