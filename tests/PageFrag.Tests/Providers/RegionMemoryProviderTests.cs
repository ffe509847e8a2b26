using System.IO.MemoryMappedFiles;
using PageFrag.Pages;
using PageFrag.Pool;
using PageFrag.Providers;
using PageFrag.Tests.Infrastructure;
using PageFrag.Tests.Pool;
using static PageFrag.Tests.Pool.PoolTesting;

namespace PageFrag.Tests.Providers;

public class RegionMemoryProviderTests
{
    [Fact]
    public void A_pool_over_an_array_region_hands_out_net_iovs_whose_device_address_is_the_offset_in_the_region()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        byte[] region = new byte[16 * 4096];
        using RegionMemoryProvider provider = RegionMemoryProvider.FromArray(region);
        PagePool pool = NewPool(allocator, provider: provider, flags: PagePoolFlags.DmaMap);
        Assert.Same(pool, provider.BoundPool);

        var held = new List<NetMem>();
        for (int i = 0; i < 16; i++)
        {
            Assert.True(pool.TryAllocNetMem(out NetMem m));
            held.Add(m);
        }

        Assert.False(pool.TryAllocNetMem(out _)); // the region is exhausted
        Assert.Equal(0, provider.FreeChunks);
        Assert.Equal(0, allocator.PagesInUse);
        Assert.Equal(
            Enumerable.Range(0, 16).Select(i => (ulong)i * 4096).ToHashSet(),
            held.Select(m => m.DmaAddress).ToHashSet());

        NetMem n = held[5];
        Assert.True(n.IsNetIov);
        Assert.True(n.IsReadable);
        Assert.Equal(-1, n.Node);
        Assert.Equal(4096, n.Length);
        Assert.False(n.TryGetPage(out _));
        Assert.Same(provider.Areas[0], n.Owner);
        n.Span.Fill(0xC3);
        Assert.Equal(0xC3, region[(int)n.DmaAddress + 4095]);

        held.ForEach(pool.RecycleDirect);
        Assert.True(pool.TryAlloc(300, out PagePoolBuffer frag));
        Assert.Equal(frag.NetMem.DmaAddress, frag.DmaAddress);
        Assert.True(frag.ArraySegment.Array == region);
        frag.Free();

        pool.Dispose();
        Assert.True(pool.IsReleased);
        Assert.Null(provider.BoundPool);
        Assert.Equal(16, provider.FreeChunks);
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Bytes_written_into_a_memory_mapped_region_are_seen_by_another_view_at_the_buffers_device_address()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        string path = Path.Combine(Path.GetTempPath(), $"pagefrag-region-{Guid.NewGuid():N}.bin");
        try
        {
            using (var file = MemoryMappedFile.CreateFromFile(path, FileMode.CreateNew, null, 8 * 4096))
            {
                using MemoryMappedViewAccessor writerView = file.CreateViewAccessor();
                using MemoryMappedViewAccessor readerView = file.CreateViewAccessor(); // what another process maps
                using RegionMemoryProvider provider = RegionMemoryProvider.FromView(writerView);
                Assert.Equal(8, provider.ChunkCount);
                PagePool pool = NewPool(allocator, provider: provider);

                var sent = new List<(ulong Offset, byte[] Data)>();
                var buffers = new List<PagePoolBuffer>();
                for (int i = 0; i < 20; i++)
                {
                    Assert.True(pool.TryAlloc(100 + (i * 37), out PagePoolBuffer b));
                    byte[] data = Enumerable.Range(0, b.Length).Select(x => (byte)(x ^ i)).ToArray();
                    data.CopyTo(b.Span);
                    sent.Add((b.DmaAddress, data));
                    buffers.Add(b);
                }

                foreach ((ulong offset, byte[] data) in sent)
                {
                    byte[] seen = new byte[data.Length];
                    readerView.ReadArray((long)offset, seen, 0, seen.Length);
                    Assert.Equal(data, seen);
                }

                buffers.ForEach(b => b.Free());
                pool.Dispose();
                Assert.True(pool.IsReleased);
            }
        }
        finally
        {
            File.Delete(path);
        }

        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Unreadable_device_memory_refuses_cpu_access_and_hands_consumers_tokens_they_give_back()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        using var provider = new RegionMemoryProvider(0, 8 * 4096, new RegionMemoryProviderOptions { Readable = false });
        PagePool pool = NewPool(allocator, provider: provider, flags: PagePoolFlags.DmaMap);
        Assert.True(pool.TryAlloc(1000, out PagePoolBuffer a));
        Assert.True(pool.TryAlloc(1000, out PagePoolBuffer b));
        Assert.False(a.IsReadable);

        NetMemUnreadableException ex = Assert.Throws<NetMemUnreadableException>(() => a.Span.Length);
        Assert.StartsWith("The memory is device memory registered as unreadable", ex.Message, StringComparison.Ordinal);
        Assert.Throws<NetMemUnreadableException>(() => a.Memory);
        Assert.Throws<NetMemUnreadableException>(() => a.Address);
        Assert.Throws<NetMemUnreadableException>(() => a.NetMem.Span.Length);

        DevMemToken ta = provider.Export(a);
        DevMemToken tb = provider.Export(b);
        Assert.Equal((a.DmaAddress, 1000), (ta.Offset, ta.Length));
        Assert.Equal(ta.Offset + 1024, tb.Offset);
        Assert.NotEqual(ta.Id, tb.Id);
        Assert.Equal(2, provider.OutstandingTokens);

        // The consumer gives tokens back from its own thread.
        OnOtherThread(() => provider.ReturnTokens([ta, tb]));
        Assert.Equal(0, provider.OutstandingTokens);
        ArgumentException again = Assert.Throws<ArgumentException>(() => provider.ReturnToken(ta));
        Assert.StartsWith($"The token {ta.Id} is unknown or was already returned.", again.Message, StringComparison.Ordinal);
        Assert.Throws<ArgumentException>(() => provider.ReturnToken(tb with { Length = 5 }));

        pool.Dispose();
        Assert.True(pool.IsReleased);
        Assert.Equal(8, provider.FreeChunks);
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_region_split_into_several_areas_gives_every_chunk_a_distinct_device_address()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        byte[] region = new byte[10 * 4096];
        using RegionMemoryProvider provider = RegionMemoryProvider.FromArray(region, new RegionMemoryProviderOptions { MaxAreaSize = 4 * 4096 });
        Assert.Equal(3, provider.Areas.Count);
        PagePool pool = NewPool(allocator, provider: provider);
        var held = new List<NetMem>();
        while (pool.TryAllocNetMem(out NetMem m))
        {
            m.Span[0] = (byte)held.Count;
            held.Add(m);
        }

        Assert.Equal(10, held.Count);
        Assert.Equal(Enumerable.Range(0, 10).Select(i => (ulong)i * 4096).ToHashSet(), held.Select(m => m.DmaAddress).ToHashSet());
        foreach (NetMem m in held)
        {
            Assert.Equal(m.Span[0], region[(int)m.DmaAddress]);
        }

        OnOtherThread(() => held.ForEach(m => pool.PutFullPage(m, false)));
        Assert.Equal(10, pool.GetStats().RecycleRing);
        pool.Dispose();
        Assert.Equal(10, provider.FreeChunks);
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_region_refuses_pools_it_cannot_serve_and_still_serves_a_proper_one()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        using RegionMemoryProvider provider = RegionMemoryProvider.FromArray(new byte[4 * 4096]);
        ArgumentException order = Assert.Throws<ArgumentException>(() => NewPool(allocator, provider: provider, order: 1));
        Assert.StartsWith("The pool's page size (8192) must equal the region's chunk size (4096).", order.Message, StringComparison.Ordinal);
        ArgumentException sync = Assert.Throws<ArgumentException>(() =>
            NewPool(allocator, provider: provider, flags: PagePoolFlags.DmaMap | PagePoolFlags.DmaSyncForDevice, maxLen: 100));
        Assert.StartsWith("A region provider does not support DmaSyncForDevice", sync.Message, StringComparison.Ordinal);
        Assert.Null(provider.BoundPool);

        PagePool pool = NewPool(allocator, provider: provider);
        InvalidOperationException bound = Assert.Throws<InvalidOperationException>(() => provider.Init(pool));
        Assert.Equal("The pool is already bound to this region.", bound.Message);
        Assert.Equal(1, provider.BoundPoolCount);
        Assert.True(pool.TryAllocNetMem(out NetMem m));

        InvalidOperationException inUse = Assert.Throws<InvalidOperationException>(provider.Dispose);
        Assert.StartsWith("The region is still in use by a page pool", inUse.Message, StringComparison.Ordinal);
        pool.RecycleDirect(m);
        pool.Dispose();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void One_region_serves_the_pools_of_two_queues_and_is_free_again_when_the_last_pool_goes()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        using RegionMemoryProvider provider = RegionMemoryProvider.FromArray(new byte[8 * 4096]);
        PagePool q0 = NewPool(allocator, provider: provider);
        PagePool q1 = NewPool(allocator, provider: provider);
        Assert.Equal(2, provider.BoundPoolCount);
        Assert.True(q0.TryAllocNetMem(out NetMem a));
        Assert.True(q1.TryAllocNetMem(out NetMem b));
        Assert.NotEqual(a.DmaAddress, b.DmaAddress);
        Assert.Same(q0, a.Pool);
        Assert.Same(q1, b.Pool);

        q0.RecycleDirect(a);
        q0.Dispose();
        Assert.True(q0.IsReleased);
        Assert.Equal(1, provider.BoundPoolCount);
        Assert.Throws<InvalidOperationException>(provider.Dispose); // q1 still holds the region

        q1.PutFullPage(b, allowDirect: false);
        q1.Dispose();
        Assert.True(q1.IsReleased);
        Assert.Equal(0, provider.BoundPoolCount);
        Assert.Null(provider.BoundPool);
        Assert.Equal(8, provider.FreeChunks);
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void One_queue_cannot_starve_another_the_slow_path_takes_one_chunk_at_a_time()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        using RegionMemoryProvider provider = RegionMemoryProvider.FromArray(new byte[4 * 4096]);
        PagePool q0 = NewPool(allocator, provider: provider);
        PagePool q1 = NewPool(allocator, provider: provider);

        // Before: the first allocation of q0 took all four chunks into its cache and q1 got none.
        Assert.True(q0.TryAllocNetMem(out NetMem a));
        Assert.Equal(0, q0.CachedPages);
        Assert.Equal(3, provider.FreeChunks);
        Assert.True(q1.TryAllocNetMem(out NetMem b));
        Assert.Equal(2, provider.FreeChunks);

        q0.PutFullPage(a, allowDirect: false);
        q1.PutFullPage(b, allowDirect: false);
        q0.Dispose();
        q1.Dispose();
        Assert.True(q0.IsReleased && q1.IsReleased);
        Assert.Equal(4, provider.FreeChunks);
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Bad_regions_are_rejected_when_bound()
    {
        Assert.Equal("length", Assert.Throws<ArgumentOutOfRangeException>(() => new RegionMemoryProvider(4096, 5000)).ParamName);
        Assert.Equal("length", Assert.Throws<ArgumentOutOfRangeException>(() => new RegionMemoryProvider(4096, 0)).ParamName);
        Assert.Equal("address", Assert.Throws<ArgumentException>(() => new RegionMemoryProvider(0, 4096)).ParamName);
        Assert.Throws<ArgumentOutOfRangeException>(() => new RegionMemoryProvider(4096, 4096, new RegionMemoryProviderOptions { ChunkSize = 3000 }));
        Assert.Throws<ArgumentOutOfRangeException>(() => RegionMemoryProvider.FromArray(new byte[100]));
    }

    [Fact]
    public void Exporting_a_host_page_buffer_is_rejected()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        using RegionMemoryProvider provider = RegionMemoryProvider.FromArray(new byte[4096]);
        PagePool hostPool = NewPool(allocator);
        Assert.True(hostPool.TryAlloc(10, out PagePoolBuffer b));
        Assert.Throws<ArgumentException>(() => provider.Export(b));
        Assert.Throws<ArgumentException>(() => provider.Export(default));
        b.Free();
        DisposeAndAssertNoLeak(hostPool, allocator);
    }

    [Fact]
    public void Alloc_and_direct_recycle_of_provider_memory_allocate_nothing_on_the_gc_heap()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        using RegionMemoryProvider provider = RegionMemoryProvider.FromArray(new byte[16 * 4096]);
        PagePool pool = NewPool(allocator, provider: provider);
        Assert.Equal(0, PageFrag.Tests.Pool.ZeroAlloc.MinAllocatedBytes(() => Loop(pool, 20_000)));
        pool.Dispose();
        Leaks.AssertNone(allocator);

        static void Loop(PagePool pool, int n)
        {
            for (int i = 0; i < n; i++)
            {
                pool.TryAllocNetMem(out NetMem m);
                pool.RecycleDirect(m);
                pool.TryAlloc(700, out PagePoolBuffer f);
                f.Span[0] = 1;
                f.Free();
            }
        }
    }
}
