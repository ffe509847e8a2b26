using System.Runtime.CompilerServices;
using PageFrag.Frag;
using PageFrag.Pages;

namespace PageFrag.Tests.Pages;

/// <summary>
/// A private <see cref="PageAllocator"/> its user drops without <c>Dispose</c>: the arena registry keeps arenas for
/// lookups by address, but not their allocator, so the allocator is collected, its finalizer unregisters its arenas,
/// and the GC takes their pinned memory back once no page handle references it.
/// </summary>
public class ForgottenAllocatorTests
{
    [Fact]
    public void A_private_allocator_dropped_without_Dispose_gives_its_arenas_back_to_the_GC()
    {
        WeakReference arenaArray = UseAndDrop(keep: false, out _);
        Collect(arenaArray);
        Assert.False(arenaArray.IsAlive, "the arena's pinned array is still reachable: the registry keeps the dropped allocator alive");
    }

    [Fact]
    public void A_fragment_held_past_its_dropped_allocator_keeps_its_bytes_and_frees_without_error()
    {
        WeakReference arenaArray = HoldPastTheAllocatorThenFree();
        Collect(arenaArray);
        Assert.False(arenaArray.IsAlive, "the arena's pinned array is still reachable after its last fragment was freed");
    }

    // Not inlined, so that no copy of the fragment's handle outlives this frame.
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static WeakReference HoldPastTheAllocatorThenFree()
    {
        WeakReference arenaArray = UseAndDrop(keep: true, out PageFragment kept);
        Collect(arenaArray);

        // The handle references the arena: its bytes stay valid memory, and its free has no allocator to go back to.
        Assert.True(arenaArray.IsAlive);
        Assert.True(kept.Span.IndexOfAnyExcept((byte)0x5A) < 0);
        PageFragCache.Free(kept);
        bool refused = false;
        try
        {
            PageFragCache.Free(kept);
        }
        catch (PageFragDoubleFreeException)
        {
            refused = true;
        }

        Assert.True(refused, "a second free of the fragment was not refused");
        return arenaArray;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static WeakReference UseAndDrop(bool keep, out PageFragment kept)
    {
        var allocator = new PageAllocator(new PageAllocatorOptions { ArenaSize = 64 * 1024 });
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(100, out PageFragment fragment));
        fragment.Span.Fill(0x5A);
        Assert.True(cache.TryAlloc(200, out PageFragment other));
        PageFragCache.Free(other);
        var array = new WeakReference(fragment.Arena!.Array);
        if (keep)
        {
            kept = fragment;
        }
        else
        {
            PageFragCache.Free(fragment);
            kept = default;
        }

        // Neither the cache nor the allocator is disposed: both are simply dropped.
        return array;
    }

    private static void Collect(WeakReference target)
    {
        for (int i = 0; i < 5 && target.IsAlive; i++)
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
        }
    }
}
