using PageFrag.Frag;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;

namespace PageFrag.Tests;

public class SmokeTests
{
    [Fact]
    public void A_fragment_can_be_allocated_written_and_freed_without_leaking()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(12, out PageFragment f));
        f.Span.Fill(0xAB);
        Assert.Equal(12, f.Length);
        f.Free();
        cache.Drain();
        Leaks.AssertNone(allocator);
    }
}
