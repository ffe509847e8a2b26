using PageFrag.Pages;
using PageFrag.Pool;
using PageFrag.Tests.Infrastructure;
using static PageFrag.Tests.Pool.PoolTesting;

namespace PageFrag.Tests.Pool;

public class PagePoolDmaTests
{
    private const PagePoolFlags MapAndSync = PagePoolFlags.DmaMap | PagePoolFlags.DmaSyncForDevice;

    [Fact]
    public void Pages_are_mapped_once_when_they_enter_the_pool_and_keep_their_address_while_recycled()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        var mapper = new RecordingMapper();
        PagePool pool = NewPool(allocator, flags: PagePoolFlags.DmaMap, mapper: mapper);
        Assert.True(pool.TryAllocNetMem(out NetMem m));
        Assert.Equal(PagePool.AllocCacheRefill, mapper.Maps); // the whole bulk
        ulong address = m.DmaAddress;
        Assert.NotEqual(0UL, address);

        pool.RecycleDirect(m);
        Assert.True(pool.TryAllocNetMem(out NetMem again));
        Assert.Equal(address, again.DmaAddress);
        Assert.Equal(PagePool.AllocCacheRefill, mapper.Maps);
        Assert.Empty(mapper.Syncs); // no sync flag

        Assert.True(pool.TryAlloc(100, out PagePoolBuffer frag));
        Assert.Equal(frag.NetMem.DmaAddress, frag.DmaAddress);
        Assert.True(pool.TryAlloc(100, out PagePoolBuffer frag2));
        Assert.Equal(frag.NetMem.DmaAddress + 128, frag2.DmaAddress);
        frag.Free();
        frag2.Free();
        pool.RecycleDirect(again);
        DisposeAndAssertNoLeak(pool, allocator);
        Assert.Equal(mapper.Maps, mapper.Unmaps);
    }

    [Fact]
    public void A_recycle_syncs_offset_to_offset_plus_the_smaller_of_the_sync_size_and_max_len()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        var mapper = new RecordingMapper();
        PagePool pool = NewPool(allocator, flags: MapAndSync, maxLen: 1500, offset: 256, mapper: mapper);
        Assert.True(pool.TryAllocNetMem(out NetMem m));

        // Right after mapping each page is synced for MaxLen.
        Assert.Equal(mapper.Maps, mapper.Syncs.Count);
        Assert.All(mapper.Syncs, s => Assert.Equal((256, 1500), (s.Offset, s.Length)));
        mapper.Syncs.Clear();

        pool.PutPage(m, 100, allowDirect: true);
        Assert.True(pool.TryAllocNetMem(out m));
        pool.PutPage(m, 100_000, allowDirect: true);
        Assert.True(pool.TryAllocNetMem(out m));
        pool.PutFullPage(m, allowDirect: false);
        Assert.True(pool.TryAllocNetMem(out m));
        pool.PutPage(m, 0, allowDirect: true);

        Assert.Equal([(256, 100), (256, 1500), (256, 1500)], mapper.Syncs.Select(s => (s.Offset, s.Length)));
        Assert.All(mapper.Syncs, s => Assert.NotEqual(0UL, s.Address));
        DisposeAndAssertNoLeak(pool, allocator);
    }

    [Fact]
    public void Fragment_pages_are_synced_for_max_len_when_recycled_or_reused_in_place()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        var mapper = new RecordingMapper();
        PagePool pool = NewPool(allocator, flags: MapAndSync, maxLen: 4096, mapper: mapper);
        Assert.True(pool.TryAllocFrag(2048, out PagePoolBuffer a));
        Assert.True(pool.TryAllocFrag(2048, out PagePoolBuffer b));
        mapper.Syncs.Clear();
        a.Free();
        b.Free();
        Assert.Empty(mapper.Syncs); // the pool still holds its bias
        Assert.True(pool.TryAllocFrag(2048, out PagePoolBuffer c)); // drains and reuses in place
        Assert.Equal([(c.NetMem.DmaAddress, 0, 4096)], mapper.Syncs);
        c.Free();
        DisposeAndAssertNoLeak(pool, allocator);
    }

    [Fact]
    public void A_mapping_failure_returns_the_page_to_the_allocator_and_fails_the_allocation()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        var mapper = new RecordingMapper { FailMaps = true };
        PagePool pool = NewPool(allocator, flags: PagePoolFlags.DmaMap, mapper: mapper);
        Assert.False(pool.TryAllocNetMem(out NetMem none));
        Assert.True(none.IsEmpty);
        Assert.Equal(0, pool.PagesHeld);
        Leaks.AssertNone(allocator);

        mapper.FailMaps = false;
        Assert.True(pool.TryAllocNetMem(out NetMem m));
        pool.RecycleDirect(m);
        DisposeAndAssertNoLeak(pool, allocator);
        Assert.Equal(mapper.Maps, mapper.Unmaps);
    }

    [Fact]
    public void A_mapper_that_throws_halfway_through_a_bulk_loses_no_page()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        var mapper = new RecordingMapper { ThrowOnMap = 3 };
        PagePool pool = NewPool(allocator, flags: PagePoolFlags.DmaMap, mapper: mapper);
        InvalidOperationException ex = Assert.Throws<InvalidOperationException>(() => pool.TryAllocNetMem(out _));
        Assert.Equal("IOMMU fault", ex.Message);
        Assert.Equal(3, pool.PagesHeld);
        Assert.Equal(3, pool.CachedPages);
        Assert.Equal(3, allocator.PagesInUse);

        // The three mapped pages are usable.
        mapper.ThrowOnMap = -1;
        Assert.True(pool.TryAllocNetMem(out NetMem m));
        Assert.Equal(1, pool.GetStats().AllocFast);
        pool.RecycleDirect(m);
        DisposeAndAssertNoLeak(pool, allocator);
        Assert.Equal(mapper.Maps, mapper.Unmaps);
    }

    [Fact]
    public void The_host_mapper_maps_identity_and_counts_syncs()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        var mapper = new HostDmaMapper();
        PagePool pool = NewPool(allocator, flags: MapAndSync, maxLen: 2000, mapper: mapper);
        Assert.True(pool.TryAllocNetMem(out NetMem m));
        Assert.Equal((ulong)m.Address, m.DmaAddress);
        long syncs = mapper.Syncs;
        pool.PutPage(m, 700, allowDirect: true);
        Assert.Equal(syncs + 1, mapper.Syncs);
        Assert.Equal(mapper.Maps * 2000 + 700, mapper.SyncedBytes);
        DisposeAndAssertNoLeak(pool, allocator);
        Assert.Equal(mapper.Maps, mapper.Unmaps);
    }
}
