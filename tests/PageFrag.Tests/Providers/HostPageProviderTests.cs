using PageFrag.Pages;
using PageFrag.Pool;
using PageFrag.Providers;
using PageFrag.Tests.Infrastructure;
using static PageFrag.Tests.Pool.PoolTesting;

namespace PageFrag.Tests.Providers;

public class HostPageProviderTests
{
    [Fact]
    public void A_pool_with_a_host_provider_takes_pages_from_the_providers_allocator_and_gives_them_back_there()
    {
        using PageAllocator poolAllocator = Leaks.NewAllocator();
        using PageAllocator other = Leaks.NewAllocator(arenaSize: 1 << 20);
        var provider = new HostPageProvider(other);
        PagePool pool = NewPool(poolAllocator, provider: provider, flags: PagePoolFlags.DmaMap);
        Assert.Same(provider, pool.MemoryProvider);

        Assert.True(pool.TryAlloc(1000, out PagePoolBuffer a));
        Assert.True(pool.TryAllocNetMem(out NetMem b));
        Assert.False(b.IsNetIov);
        Assert.Equal((ulong)b.Address, b.DmaAddress); // host pages are still mapped by the pool
        Assert.True(b.TryGetPage(out Page page));
        Assert.Same(other, page.Allocator);
        Assert.Equal(64, provider.Allocated);
        Assert.Equal(0, poolAllocator.PagesInUse);
        Assert.Equal(1, pool.GetStats().AllocSlow);

        a.Free();
        pool.RecycleDirect(b);
        pool.Dispose();
        Assert.True(pool.IsReleased);
        Assert.Equal(64, provider.Released);
        Leaks.AssertNone(other);
        Leaks.AssertNone(poolAllocator);

        // Destroy unbound it: another pool may use it now.
        PagePool second = NewPool(poolAllocator, provider: provider, order: 1);
        Assert.True(second.TryAllocNetMem(out NetMem big));
        Assert.Equal(8192, big.Length);
        Assert.Equal(1, second.GetStats().AllocSlowHighOrder);
        second.RecycleDirect(big);
        second.Dispose();
        Leaks.AssertNone(other);
    }

    [Fact]
    public void A_host_provider_serves_one_pool_at_a_time()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        var provider = new HostPageProvider();
        PagePool pool = NewPool(allocator, provider: provider);
        InvalidOperationException ex = Assert.Throws<InvalidOperationException>(() => NewPool(allocator, provider: provider));
        Assert.Equal("The host page provider is already bound to a page pool.", ex.Message);
        DisposeAndAssertNoLeak(pool, allocator);
    }
}
