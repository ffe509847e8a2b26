using PageFrag.Pages;
using PageFrag.Pool;
using PageFrag.Providers;
using PageFrag.Tests.Frag;
using PageFrag.Tests.Infrastructure;
using static PageFrag.Tests.Pool.PoolTesting;

namespace PageFrag.Tests.Providers;

/// <summary>
/// The memory providers' rows of <c>docs/bad-input.md</c>: providers used with the wrong pool or the wrong
/// memory, regions and areas that cannot be built. Each checks the exception's type, parameter and message,
/// that the provider still serves its own pool, and that no page or chunk leaked.
/// </summary>
public class ProviderBadInputTests
{
    [Fact]
    public void A_host_provider_refuses_a_pool_of_an_order_its_allocator_cannot_give_and_a_pool_it_is_not_bound_to()
    {
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 1 << 20);
        using PageAllocator small = Leaks.NewAllocator(arenaSize: 32 * 1024);
        var provider = new HostPageProvider(small);
        ArgumentException order = FragKit.Throws<ArgumentException>(() => NewPool(allocator, order: 4, provider: provider), "pool",
            "The pool's order 4 is above the allocator's highest order 3.");
        Assert.NotNull(order);

        PagePool bound = NewPool(allocator, provider: provider);
        PagePool other = NewPool(allocator);
        InvalidOperationException notBound = Assert.Throws<InvalidOperationException>(() => provider.AllocNetMems(other, new NetMem[4]));
        Assert.Equal("The host page provider is not bound to this page pool.", notBound.Message);

        Assert.True(bound.TryAllocNetMem(out NetMem m));
        bound.RecycleDirect(m);
        DisposeAndAssertNoLeak(other, allocator);
        bound.Dispose();
        Assert.True(bound.IsReleased);
        Leaks.AssertNone(small);
    }

    [Fact]
    public void A_host_provider_refuses_to_take_back_provider_memory()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        using RegionMemoryProvider region = RegionMemoryProvider.FromArray(new byte[4 * 4096]);
        var host = new HostPageProvider(allocator);
        var chunk = region.Areas[0].GetChunk(0);
        PagePool pool = NewPool(allocator, provider: host);
        FragKit.Throws<ArgumentException>(() => host.ReleaseNetMem(pool, chunk), "netmem", "The host page provider takes back host pages only.");
        Assert.Equal(0, host.Released);
        DisposeAndAssertNoLeak(pool, allocator);
        Assert.Equal(4, region.FreeChunks);
    }

    [Fact]
    public void A_region_refuses_an_unbound_pool_foreign_memory_and_binding_after_dispose()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        RegionMemoryProvider region = RegionMemoryProvider.FromArray(new byte[4 * 4096]);
        using RegionMemoryProvider other = RegionMemoryProvider.FromArray(new byte[4 * 4096]);
        PagePool stranger = NewPool(allocator);
        InvalidOperationException notBound = Assert.Throws<InvalidOperationException>(() => region.AllocNetMems(stranger, new NetMem[2]));
        Assert.Equal("The region is not bound to this page pool.", notBound.Message);
        FragKit.Throws<ArgumentException>(() => region.ReleaseNetMem(stranger, other.Areas[0].GetChunk(1)), "netmem", "The memory does not belong to this region.");
        Assert.True(stranger.TryAllocNetMem(out NetMem host));
        FragKit.Throws<ArgumentException>(() => region.ReleaseNetMem(stranger, host), "netmem", "The memory does not belong to this region.");
        stranger.RecycleDirect(host);
        Assert.Equal(4, region.FreeChunks);

        region.Dispose();
        Assert.Throws<ObjectDisposedException>(() => NewPool(allocator, provider: region));
        DisposeAndAssertNoLeak(stranger, allocator);
    }

    [Fact]
    public void Regions_that_cannot_be_split_into_chunks_are_rejected_with_the_rule()
    {
        FragKit.Throws<ArgumentOutOfRangeException>(() => new RegionMemoryProvider(4096, 4096, new RegionMemoryProviderOptions { ChunkSize = 3000 }),
            "options", "ChunkSize must be a power of two from 4096 to 1073741824 bytes.");
        FragKit.Throws<ArgumentOutOfRangeException>(() => new RegionMemoryProvider(4096, 4096, new RegionMemoryProviderOptions { ChunkSize = 2048 }),
            "options", "ChunkSize must be a power of two");
        FragKit.Throws<ArgumentOutOfRangeException>(() => new RegionMemoryProvider(4096, 8192, new RegionMemoryProviderOptions { MaxAreaSize = 6000 }),
            "options", "MaxAreaSize must be a multiple of ChunkSize, at most 1 GiB.");
        FragKit.Throws<ArgumentOutOfRangeException>(() => new RegionMemoryProvider(4096, 5000), "length", "The region length must be a positive multiple of the chunk size (4096).");
        FragKit.Throws<ArgumentOutOfRangeException>(() => new RegionMemoryProvider(4096, -4096), "length", "The region length must be a positive multiple");
        FragKit.Throws<ArgumentException>(() => new RegionMemoryProvider(0, 4096), "address", "A readable region needs an address.");
        FragKit.Throws<ArgumentNullException>(() => RegionMemoryProvider.FromArray(null!), "array");
        FragKit.Throws<ArgumentNullException>(() => RegionMemoryProvider.FromView(null!), "view");

        // An array shorter than one chunk leaves nothing to bind; its pin is released again.
        byte[] tiny = new byte[100];
        FragKit.Throws<ArgumentOutOfRangeException>(() => RegionMemoryProvider.FromArray(tiny), "length", "The region length must be a positive multiple");
        using RegionMemoryProvider fine = RegionMemoryProvider.FromArray(new byte[4096]);
        Assert.Equal(1, fine.ChunkCount);
    }

    [Fact]
    public void Provider_areas_with_bad_geometry_and_chunk_indexes_outside_the_area_are_rejected()
    {
        using RegionMemoryProvider owner = RegionMemoryProvider.FromArray(new byte[4096]);
        byte[] bytes = new byte[8 * 4096];
        FragKit.Throws<ArgumentNullException>(() => new NetIovArea(null!, 0, default, 4096, 1, 0, readable: false), "provider");
        FragKit.Throws<ArgumentOutOfRangeException>(() => new NetIovArea(owner, 0, default, 5000, 1, 0, readable: false), "chunkSize",
            "The chunk size must be a power of two from 4096 to 1073741824 bytes.");
        FragKit.Throws<ArgumentOutOfRangeException>(() => new NetIovArea(owner, 0, default, 4096, 0, 0, readable: false), "chunkCount",
            "An area holds at least one chunk and at most 1 GiB.");
        FragKit.Throws<ArgumentOutOfRangeException>(() => new NetIovArea(owner, 1, bytes.AsMemory(0, 4096), 4096, 8, 0, readable: true), "memory",
            "A readable area needs memory that covers every chunk.");

        var area = new NetIovArea(owner, 0, default, 4096, 8, 0x1000_0000, readable: false);
        FragKit.Throws<ArgumentOutOfRangeException>(() => area.GetChunk(8), "index", "The chunk index must be between 0 and 7.");
        FragKit.Throws<ArgumentOutOfRangeException>(() => area.GetChunk(-1), "index", "The chunk index must be between 0 and 7.");
        Assert.Equal(-1, area.IndexOf(0x0FFF_FFFF));
        Assert.Equal(7, area.IndexOf(0x1000_7FFF));
        Assert.False(area.GetChunk(3).IsReadable);
    }
}
