using PageFrag.Frag;
using PageFrag.Pages;
using PageFrag.Pool;
using PageFrag.Tests.Infrastructure;

namespace PageFrag.Tests.Frag;

public class FreeOfPoolBufferTests
{
    [Fact]
    public void Freeing_a_page_pool_buffer_by_address_is_rejected_and_the_pool_keeps_its_page()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        var pool = new PagePool(new PagePoolOptions { Allocator = allocator });
        Assert.True(pool.TryAlloc(100, out PagePoolBuffer buffer));
        long inUse = allocator.PagesInUse;

        var e = Assert.Throws<ArgumentException>(() => PageFragCache.Free(buffer.Address));
        Assert.Equal("address", e.ParamName);
        Assert.Contains("page pool buffer", e.Message);
        Assert.Equal(inUse, allocator.PagesInUse);

        pool.PutBuffer(buffer, allowDirect: true);
        pool.Dispose();
        Leaks.AssertNone(allocator);
    }
}
