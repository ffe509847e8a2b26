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

    // Session 9: every descriptor fills one cache line, so that a head's fields move between threads as one line. The
    // pinned heap places the array where the filler says only when no gap left by dead objects takes the filler or
    // the array (a test process has many): the arithmetic is tested exactly, the placement as a hint.
    [Fact]
    public void The_filler_before_the_descriptor_array_moves_its_first_element_onto_a_cache_line()
    {
        for (long next = 0x7f00_0000_0000; next < 0x7f00_0000_0000 + 4 * Arena.LineSize; next += 8)
        {
            int n = Arena.FillerLength((nint)next);
            if ((next & (Arena.LineSize - 1)) == 0)
            {
                Assert.Equal(-1, n);
                continue;
            }

            Assert.InRange(n, 0, Arena.LineSize);
            int footprint = (24 + n + 7) & ~7; // header, type and length, then the elements, rounded up to 8
            Assert.Equal(0, (next + footprint) & (Arena.LineSize - 1));
        }
    }

    [Fact]
    public void An_arenas_descriptor_array_is_zeroed_pinned_and_used_as_any_other()
    {
        for (int i = 0; i < 8; i++)
        {
            PageDescriptor[] pages = Arena.AllocateDescriptors(16 + i);
            Assert.Equal(16 + i, pages.Length);
            Assert.All(pages, d => Assert.Equal(default, d));
            long before = Address(pages);
            GC.Collect(2, GCCollectionMode.Forced, blocking: true, compacting: true);
            Assert.Equal(before, Address(pages)); // on the pinned heap: never moved
        }

        // An arena's own array: a cache carves and another thread frees across it, and nothing leaks.
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

    private static unsafe long Address(PageDescriptor[] pinned) =>
        (long)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(pinned));
}
