using PageFrag.Pages;
using PageFrag.Pool;
using PageFrag.Tests.Infrastructure;
using static PageFrag.Tests.Pool.PoolTesting;

namespace PageFrag.Tests.Pool;

public class PagePoolBadInputTests
{
    [Theory]
    [InlineData(0)]
    [InlineData(-1)]
    [InlineData(4097)]
    [InlineData(int.MaxValue)]
    public void Sizes_outside_one_to_the_page_size_throw_and_the_pool_still_works(int size)
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        PagePool pool = NewPool(allocator);
        ArgumentOutOfRangeException e1 = Assert.Throws<ArgumentOutOfRangeException>(() => pool.TryAllocFrag(size, out _));
        ArgumentOutOfRangeException e2 = Assert.Throws<ArgumentOutOfRangeException>(() => pool.TryAlloc(size, out _));
        Assert.Equal("size", e1.ParamName);
        Assert.StartsWith("The size must be between 1 and the pool's page size (4096 bytes).", e2.Message, StringComparison.Ordinal);
        Assert.Equal(0, pool.PagesHeld);

        Assert.True(pool.TryAlloc(100, out PagePoolBuffer ok));
        ok.Free();
        DisposeAndAssertNoLeak(pool, allocator);
    }

    [Fact]
    public void Putting_a_page_of_another_pool_throws_and_leaves_both_pools_intact()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        PagePool p1 = NewPool(allocator);
        PagePool p2 = NewPool(allocator);
        Assert.True(p1.TryAllocNetMem(out NetMem m));
        ArgumentException ex = Assert.Throws<ArgumentException>(() => p2.PutFullPage(m, allowDirect: true));
        Assert.StartsWith("The memory belongs to another PagePool.", ex.Message, StringComparison.Ordinal);
        Assert.Equal("netmem", ex.ParamName);
        Assert.Equal(1, m.PpRefCount);

        Assert.True(p1.TryAlloc(64, out PagePoolBuffer buf));
        Assert.Throws<ArgumentException>(() => p2.PutBuffer(buf, allowDirect: false));
        buf.Free();
        p1.RecycleDirect(m);
        p1.Dispose();
        DisposeAndAssertNoLeak(p2, allocator);
        Assert.True(p1.IsReleased);
    }

    [Fact]
    public void A_double_put_of_a_whole_page_throws_even_after_the_page_was_handed_out_again()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        PagePool pool = NewPool(allocator);
        Assert.True(pool.TryAllocNetMem(out NetMem m));
        pool.RecycleDirect(m);
        PageFragDoubleFreeException ex = Assert.Throws<PageFragDoubleFreeException>(() => pool.RecycleDirect(m));
        Assert.Equal("The handle is stale: its memory was already put back into the pool (double put).", ex.Message);

        Assert.True(pool.TryAllocNetMem(out NetMem again));
        Assert.Equal(m.Address, again.Address);
        Assert.Throws<PageFragDoubleFreeException>(() => pool.PutPage(m, -1, false));
        Assert.Equal(1, again.PpRefCount);
        pool.RecycleDirect(again);
        Assert.Equal(2, pool.GetStats().RecycleCached);
        DisposeAndAssertNoLeak(pool, allocator);
    }

    [Fact]
    public void A_double_free_of_a_fragment_throws_while_its_page_still_has_other_fragments()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        PagePool pool = NewPool(allocator);
        Assert.True(pool.TryAllocFrag(128, out PagePoolBuffer a));
        Assert.True(pool.TryAllocFrag(128, out PagePoolBuffer b));
        a.Free();
        long count = a.NetMem.PpRefCount;
        PageFragDoubleFreeException ex = Assert.Throws<PageFragDoubleFreeException>(() => a.Free());
        Assert.Equal("The fragment was already freed.", ex.Message);
        Assert.Equal(count, a.NetMem.PpRefCount);
        b.Free();
        DisposeAndAssertNoLeak(pool, allocator);
    }

    [Fact]
    public void A_double_free_of_a_whole_page_buffer_throws()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        PagePool pool = NewPool(allocator);
        Assert.True(pool.TryAlloc(3000, out PagePoolBuffer whole));
        OnOtherThread(whole.Free);
        Assert.Throws<PageFragDoubleFreeException>(() => whole.Free());
        Assert.Equal(1, pool.GetStats().RecycleRing);
        DisposeAndAssertNoLeak(pool, allocator);
    }

    [Fact]
    public void Putting_a_page_after_the_pool_is_gone_throws_and_leaks_nothing()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        PagePool pool = NewPool(allocator);
        Assert.True(pool.TryAllocNetMem(out NetMem m));
        Assert.True(pool.TryAlloc(100, out PagePoolBuffer frag));
        pool.RecycleDirect(m);
        frag.Free();
        DisposeAndAssertNoLeak(pool, allocator);

        PageFragDoubleFreeException ex = Assert.Throws<PageFragDoubleFreeException>(() => pool.RecycleDirect(m));
        Assert.StartsWith("The memory (netmem) is not held by a page pool", ex.Message, StringComparison.Ordinal);
        Assert.Throws<PageFragDoubleFreeException>(() => frag.Free());
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Empty_handles_are_rejected_with_argument_exceptions()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        PagePool pool = NewPool(allocator);
        ArgumentException ex = Assert.Throws<ArgumentException>(() => pool.RecycleDirect(default));
        Assert.StartsWith("The handle is empty", ex.Message, StringComparison.Ordinal);
        Assert.Throws<ArgumentException>(() => default(PagePoolBuffer).Free());
        Assert.Throws<InvalidOperationException>(() => default(NetMem).Length);
        DisposeAndAssertNoLeak(pool, allocator);
    }

    [Fact]
    public void Allocating_off_the_owner_thread_throws_and_allocating_after_dispose_throws_object_disposed()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        PagePool pool = NewPool(allocator);
        InvalidOperationException notOwner = ThrowsOnOtherThread<InvalidOperationException>(() => pool.TryAllocFrag(64, out _));
        Assert.StartsWith($"Page pool {pool.Id} allocates only on its owner thread", notOwner.Message, StringComparison.Ordinal);
        ThrowsOnOtherThread<InvalidOperationException>(() => pool.TryAlloc(64, out _));
        ThrowsOnOtherThread<InvalidOperationException>(() => pool.SetNode(0));
        Assert.Equal(0, pool.PagesHeld);

        pool.Dispose();
        Assert.Throws<ObjectDisposedException>(() => pool.TryAllocNetMem(out _));
        Assert.Throws<ObjectDisposedException>(() => pool.TryAlloc(64, out _));
        Assert.Throws<ObjectDisposedException>(pool.SetOwnerThread);
        DisposeAndAssertNoLeak(pool, allocator);
    }

    [Fact]
    public void Bad_dma_sync_sizes_and_reference_counts_throw_without_changing_the_page()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        PagePool pool = NewPool(allocator);
        Assert.True(pool.TryAllocNetMem(out NetMem m));
        Assert.Throws<ArgumentOutOfRangeException>(() => pool.PutPage(m, -2, true));
        Assert.Throws<ArgumentOutOfRangeException>(() => pool.FragmentNetMem(m, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => pool.UnrefNetMem(m, 0));
        PageFragDoubleFreeException under = Assert.Throws<PageFragDoubleFreeException>(() => pool.UnrefNetMem(m, 2));
        Assert.Contains("below zero", under.Message, StringComparison.Ordinal);
        Assert.Equal(1, m.PpRefCount);

        pool.FragmentNetMem(m, 2);
        InvalidOperationException shared = Assert.Throws<InvalidOperationException>(() => pool.FragmentNetMem(m, 3));
        Assert.Equal("Only a page held by one user (pp_ref_count 1) can be fragmented.", shared.Message);
        pool.PutPage(m, -1, true);
        pool.PutPage(m, -1, true);
        Assert.Equal(1, pool.GetStats().RecycleCached);
        DisposeAndAssertNoLeak(pool, allocator);
    }

    [Fact]
    public void Invalid_options_are_rejected_when_the_pool_is_created()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        Assert.Equal("Order", Assert.Throws<ArgumentOutOfRangeException>(() => NewPool(allocator, order: 5)).ParamName);
        Assert.Equal("PoolSize", Assert.Throws<ArgumentOutOfRangeException>(() => NewPool(allocator, poolSize: 0)).ParamName);
        Assert.Equal("PoolSize", Assert.Throws<ArgumentOutOfRangeException>(() => NewPool(allocator, poolSize: 32769)).ParamName);
        Assert.Equal("Node", Assert.Throws<ArgumentOutOfRangeException>(() => NewPool(allocator, node: -2)).ParamName);
        ArgumentException sync = Assert.Throws<ArgumentException>(() => NewPool(allocator, flags: PagePoolFlags.DmaSyncForDevice, maxLen: 100));
        Assert.StartsWith("DmaSyncForDevice requires DmaMap", sync.Message, StringComparison.Ordinal);
        Assert.Equal("MaxLen", Assert.Throws<ArgumentOutOfRangeException>(() => NewPool(allocator, flags: PagePoolFlags.DmaMap | PagePoolFlags.DmaSyncForDevice)).ParamName);
        Assert.Equal("MaxLen", Assert.Throws<ArgumentOutOfRangeException>(() => NewPool(allocator, maxLen: 4000, offset: 100)).ParamName);
        Assert.Throws<ArgumentOutOfRangeException>(() => NewPool(allocator, retry: TimeSpan.Zero));
        Leaks.AssertNone(allocator);
    }
}
