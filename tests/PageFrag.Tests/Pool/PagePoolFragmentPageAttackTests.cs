using PageFrag.Pages;
using PageFrag.Pool;
using PageFrag.Tests.Infrastructure;

namespace PageFrag.Tests.Pool;

/// <summary>
/// A fragment's <see cref="PagePoolBuffer.NetMem"/> is its whole page. The page-level puts (<c>PutPage</c>,
/// <c>UnrefNetMem</c>, <c>PutUnrefedNetMem</c>, <c>FragmentNetMem</c>) must refuse it: they drop page references that
/// no fragment's state byte accounts for, so the page would go back to the pool while other fragments still hold
/// it. And <c>PutUnrefedNetMem</c> must refuse a page whose pieces are still out.
/// </summary>
public class PagePoolFragmentPageAttackTests
{
    /// <summary>A page-level call made with a fragment's page handle.</summary>
    public enum PageCall
    {
        PutPage,
        PutFullPage,
        RecycleDirect,
        UnrefAll,
        PutUnrefed,
        FragmentNetMem,
    }

    [Theory]
    [InlineData(PageCall.PutPage)]
    [InlineData(PageCall.PutFullPage)]
    [InlineData(PageCall.RecycleDirect)]
    [InlineData(PageCall.UnrefAll)]
    [InlineData(PageCall.PutUnrefed)]
    [InlineData(PageCall.FragmentNetMem)]
    public void A_page_level_call_on_a_fragments_page_is_refused_and_the_other_fragments_keep_their_bytes(PageCall call)
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        var pool = PoolTesting.NewPool(allocator, poolSize: 16);
        Assert.True(pool.TryAllocFrag(256, out PagePoolBuffer a));
        Assert.True(pool.TryAllocFrag(256, out PagePoolBuffer b));
        b.Span.Fill(0x3C);
        NetMem page = a.NetMem;

        Action act = call switch
        {
            PageCall.PutPage => () => pool.PutPage(page, -1, false),
            PageCall.PutFullPage => () => pool.PutFullPage(page, false),
            PageCall.RecycleDirect => () => pool.RecycleDirect(page),
            PageCall.UnrefAll => () => pool.UnrefNetMem(page, page.PpRefCount),
            PageCall.PutUnrefed => () => pool.PutUnrefedNetMem(page, -1, false),
            _ => () => pool.FragmentNetMem(page, 4),
        };
        var e = Assert.Throws<InvalidOperationException>(act);
        Assert.Contains("carved into fragments", e.Message, StringComparison.Ordinal);

        // The fragment is released as a fragment; then the pool carves and recycles pages for a while, and every
        // buffer it hands out is written: b's page must not come back to anyone while b holds it.
        PagePool.Free(a);
        var held = new List<PagePoolBuffer>();
        for (int i = 0; i < 200; i++)
        {
            Assert.True(i % 3 == 0 ? pool.TryAllocPage(out PagePoolBuffer x) : pool.TryAllocFrag(1024, out x));
            x.Span.Fill(0xEE);
            held.Add(x);
            if (held.Count > 4)
            {
                PagePool.Free(held[0]);
                held.RemoveAt(0);
            }
        }

        Assert.False(b.Span.ContainsAnyExcept((byte)0x3C), "a live fragment's page was handed to another owner");
        foreach (PagePoolBuffer x in held)
        {
            PagePool.Free(x);
        }

        PagePool.Free(b);
        PoolTesting.DisposeAndAssertNoLeak(pool, allocator);
    }

    [Fact]
    public void PutUnrefedNetMem_refuses_a_page_whose_pieces_are_still_out()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        var pool = PoolTesting.NewPool(allocator, poolSize: 16);
        Assert.True(pool.TryAllocNetMem(out NetMem page));
        pool.FragmentNetMem(page, 4);

        var e = Assert.Throws<InvalidOperationException>(() => pool.PutUnrefedNetMem(page, -1, false));
        Assert.Contains("still holds", e.Message, StringComparison.Ordinal);
        Assert.Equal(4, page.PpRefCount);

        // The four holders put their pieces as usual; the last one recycles the page.
        for (int i = 0; i < 4; i++)
        {
            pool.PutFullPage(page, false);
        }

        PoolTesting.DisposeAndAssertNoLeak(pool, allocator);
    }
}
