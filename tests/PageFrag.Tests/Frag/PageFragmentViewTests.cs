using System.Runtime.InteropServices;
using PageFrag.Frag;
using PageFrag.Pages;

namespace PageFrag.Tests.Frag;

/// <summary>A fragment seen as Span, Memory, ArraySegment and pointer: the same pinned bytes.</summary>
public class PageFragmentViewTests
{
    [Fact]
    public unsafe void Memory_of_a_fragment_yields_the_pinned_arena_array_to_TryGetArray()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(12, out PageFragment a));
        Assert.True(cache.TryAlloc(300, 64, out PageFragment f));

        Assert.True(MemoryMarshal.TryGetArray(f.Memory, out ArraySegment<byte> fromMemory));
        ArraySegment<byte> segment = f.ArraySegment;
        Assert.Same(f.Arena!.Array, fromMemory.Array);
        Assert.Same(segment.Array, fromMemory.Array);
        Assert.Equal(segment.Offset, fromMemory.Offset);
        Assert.Equal(300, fromMemory.Count);
        Assert.Equal(300, segment.Count);
        Assert.Equal(300, f.Memory.Length);
        Assert.Equal(300, f.Span.Length);

        // The arena lives on the pinned object heap, and a full compacting collection does not move it:
        // the address computed when the arena was made still names the segment's first byte.
        Assert.Equal(GC.MaxGeneration, GC.GetGeneration(segment.Array!));
        GC.Collect(GC.MaxGeneration, GCCollectionMode.Forced, blocking: true, compacting: true);
        fixed (byte* first = &segment.Array![segment.Offset])
        {
            Assert.Equal(f.Address, (nint)first);
            Assert.Equal((nint)f.Pointer, (nint)first);
        }

        // Neighbouring fragments are neighbouring segments of the same array.
        Assert.Same(segment.Array, a.ArraySegment.Array);
        Assert.Equal(segment.Offset - 64, a.ArraySegment.Offset);

        a.Free();
        f.Free();
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public unsafe void Writes_through_one_view_are_seen_through_every_other()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(200, out PageFragment f));
        Assert.True(cache.TryAlloc(200, out PageFragment neighbour));
        neighbour.Span.Fill(0xEE);

        for (int i = 0; i < f.Length; i++)
        {
            f.Span[i] = (byte)i;
        }

        Assert.Equal(17, f.Memory.Span[17]);
        Assert.Equal(199, f.ArraySegment[199]);
        Assert.Equal(100, f.Pointer[100]);
        Assert.Equal(42, ((byte*)f.Address)[42]);

        f.Pointer[5] = 0xAA;
        f.Memory.Span[6] = 0xBB;
        ArraySegment<byte> segment = f.ArraySegment;
        segment[7] = 0xCC;
        Assert.Equal(0xAA, f.Span[5]);
        Assert.Equal(0xBB, f.Span[6]);
        Assert.Equal(0xCC, f.Span[7]);

        // Writes stay inside the fragment.
        Assert.False(neighbour.Span.ContainsAnyExcept((byte)0xEE));

        f.Free();
        neighbour.Free();
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void A_preparation_is_a_window_on_the_bytes_that_the_commit_hands_out()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(10, out PageFragment a));
        Assert.True(cache.TryPrepare(64, out PreparedFragment prepared));
        prepared.Memory.Span[..64].Fill(0x11);
        Assert.True(MemoryMarshal.TryGetArray<byte>(prepared.Memory, out ArraySegment<byte> window));
        Assert.Same(a.ArraySegment.Array, window.Array);

        PageFragment f = cache.Commit(prepared, 64);
        Assert.False(f.Span.ContainsAnyExcept((byte)0x11));
        Assert.Equal(window.Offset, f.ArraySegment.Offset);

        a.Free();
        f.Free();
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void Copies_of_a_handle_are_equal_and_name_the_same_fragment()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(100, out PageFragment a));
        Assert.True(cache.TryAlloc(100, out PageFragment b));
        PageFragment copy = a;

        Assert.True(copy == a);
        Assert.True(a != b);
        Assert.Equal(a.GetHashCode(), copy.GetHashCode());
        Assert.Contains("100 B", a.ToString(), StringComparison.Ordinal);
        Assert.True(PageAllocator.TryGetPage(a.Address + 50, out Page page));
        Assert.Equal(a.Page, page);

        copy.Free();
        FragKit.Throws<PageFragDoubleFreeException>(() => a.Free(), null, "already freed");
        b.Free();
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }
}
