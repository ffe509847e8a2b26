using System.Runtime.CompilerServices;
using PageFrag.Buffers;
using PageFrag.Frag;
using PageFrag.Pages;
using PageFrag.Providers;
using PageFrag.Tests.Infrastructure;

namespace PageFrag.Tests.Diagnostics;

/// <summary>
/// "A forgotten Dispose costs nothing for good" for the disposable handles that had no safety net: each test forgets
/// the Dispose, drops the object, collects, and checks that what it held comes back.
/// </summary>
public class ForgottenDisposeTests
{
    private static void Collect(Func<bool> done)
    {
        for (int i = 0; i < 6 && !done(); i++)
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
        }
    }

    [Fact]
    public void A_region_over_an_array_never_disposed_unpins_the_array_when_collected()
    {
        WeakReference array = RegionOverAnArrayDropped();
        Collect(() => !array.IsAlive);

        // The pin is a GC root: while it is held, the array can never be collected (nor moved), for ever.
        Assert.False(array.IsAlive, "the region's pin kept its array alive after the region was dropped");
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static WeakReference RegionOverAnArrayDropped()
    {
        byte[] memory = new byte[8 * 4096];
        RegionMemoryProvider region = RegionMemoryProvider.FromArray(memory);
        Assert.Equal(8, region.FreeChunks);
        return new WeakReference(memory);
    }

    [Fact]
    public void A_writer_never_disposed_gives_its_reservation_back_when_collected()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        var cache = new PageFragCache(allocator);
        WriteAndDrop(cache);
        Collect(() => allocator.GetStats().PagesInUse == 0);
        cache.Dispose();
        Collect(() => allocator.GetStats().PagesInUse == 0);
        Leaks.AssertNone(allocator);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void WriteAndDrop(PageFragCache cache)
    {
        var writer = new FragBufferWriter(cache);
        writer.GetSpan(100).Fill(1);
        writer.Advance(100);
        writer.GetSpan(50);
    }
}
