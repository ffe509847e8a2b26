using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using PageFrag.Frag;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;

namespace PageFrag.Tests.Pages;

/// <summary>
/// The page descriptor is 64 bytes (session 8): the recycle slots of the cache that carved a 32 KiB block are found
/// in the arena's per-block table, which is used only while the block's head says a fragment cache carves it.
/// </summary>
public class PageDescriptorLayoutTests
{
    [Fact]
    public void A_page_descriptor_is_64_bytes()
    {
        Assert.Equal(64, Unsafe.SizeOf<PageDescriptor>());
        Assert.True(PageDescriptor.LayoutFitsRefAndGeneration());
    }

    [Fact]
    public void A_block_a_cache_carved_and_gave_back_is_not_parked_for_that_cache_when_its_next_user_frees_it()
    {
        using PageAllocator allocator = Leaks.NewAllocator(64 * 1024);
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(2048, out PageFragment f));
        nint block = f.Address & ~(nint)32767;
        PageFragCache.Free(f);
        cache.Drain();
        Arena arena = ArenaRegistry.Find(block)!;
        int head = (int)((block - arena.BaseAddress) >> PageConstants.PageShift);
        Assert.NotNull(arena.Recyclers[head >> PageRecycler.Order]); // the entry outlives the cache's use of the block
        allocator.DrainPerCpuLists();

        // The block's next user is not a fragment cache: its last release goes to the lists, never to the slots the
        // stale entry names, though that cache is still open.
        Assert.True(allocator.TryAllocBlock(PageRecycler.Order, AllocFlags.None, out Arena? a, out int index));
        Assert.Same(arena, a);
        Assert.Equal(head, index);
        Assert.False(arena.Pages[index].FragmentCachePage);
        PageAllocator.PutBlockRef(a!, index);
        Assert.Equal(0, allocator.RecycledBlocks);
        Assert.True(allocator.GetStats().IsConsistent);

        // Carved again by another cache, freed by another thread: parked there, not in the first cache's slots.
        var other = new PageFragCache(allocator);
        allocator.DrainPerCpuLists();
        Assert.True(other.TryAlloc(2048, out PageFragment g));
        Assert.Equal(block, g.Address & ~(nint)32767);
        Assert.True(other.TryAlloc(32768 - 2048, out PageFragment rest)); // the rest of the page: the cache leaves it
        other.Drain();
        OtherThread.Run(() =>
        {
            PageFragCache.Free(g);
            PageFragCache.Free(rest);
        });
        Assert.Equal(1, allocator.RecycledBlocks);
        Assert.Equal(0, cache.PagesRecycled);
        Assert.True(other.TryAlloc(2048, out PageFragment h));
        Assert.Equal(1, other.PagesRecycled);
        PageFragCache.Free(h);
        other.Dispose();
        cache.Dispose();
        Leaks.AssertNone(allocator);
    }

    // Session 9: every descriptor fills one cache line, so that a head's fields move between threads as one line.
    [Fact]
    public void An_arenas_descriptors_start_on_a_cache_line()
    {
        // Other tests allocate pinned memory at the same time and can take the spot the placement computed (then the
        // array is used where it landed): of eight placed in a row, most start on a line.
        int onLine = 0;
        for (int i = 0; i < 8; i++)
        {
            PageDescriptor[] pages = Arena.AllocateDescriptors(16 + i);
            Assert.Equal(16 + i, pages.Length);
            Assert.All(pages, d => Assert.Equal(default, d));
            onLine += LineOffset(pages) == 0 ? 1 : 0;
        }

        Assert.True(onLine >= 6, $"only {onLine} of 8 descriptor arrays start on a cache line");

        // An arena's own array, used as any other: a cache carves and frees across it, and nothing leaks.
        using PageAllocator allocator = Leaks.NewAllocator(256 * 1024);
        var cache = new PageFragCache(allocator);
        for (int i = 0; i < 64; i++)
        {
            Assert.True(cache.TryAlloc(4000, out PageFragment f));
            OtherThread.Run(() => PageFragCache.Free(f));
        }

        Arena arena = cache.CurrentPage.Arena!;
        Assert.Equal(arena.PageCount, arena.Pages.Length);
        cache.Dispose();
        Leaks.AssertNone(allocator);
    }

    private static unsafe long LineOffset(PageDescriptor[] pinned) =>
        (long)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(pinned)) & (Arena.LineSize - 1);
}
