using PageFrag.Frag;
using PageFrag.Pages;
using PageFrag.Pool;
using PageFrag.Providers;
using PageFrag.Tests.Frag;
using PageFrag.Tests.Infrastructure;
using PageFrag.Tests.Pool;

namespace PageFrag.Tests.Providers;

/// <summary>
/// The providers' <c>ReleaseNetMem</c> is public (an <see cref="IMemoryProvider"/> member): a caller may call it with
/// any handle. It must take back only memory that a page pool is giving back at that moment, so that a caller can
/// neither give away memory a pool's buffer still holds nor return a unit twice.
/// </summary>
public class ProviderReleaseAttackTests
{
    [Fact]
    public void A_host_provider_refuses_to_take_back_a_page_that_a_pool_buffer_still_holds()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        var provider = new HostPageProvider(allocator);
        var pool = PoolTesting.NewPool(allocator, provider: provider);
        Assert.True(pool.TryAllocPage(out PagePoolBuffer held));
        held.Span.Fill(0x5A);

        var e = Assert.Throws<InvalidOperationException>(() => provider.ReleaseNetMem(pool, held.NetMem));
        Assert.Contains("not memory that a page pool is giving back", e.Message, StringComparison.Ordinal);

        // Nothing changed: the page is still the buffer's, and the allocator does not hand it out again.
        var other = new PageFragCache(allocator);
        for (int i = 0; i < 64; i++)
        {
            Assert.True(other.TryAlloc(4096, out PageFragment f));
            f.Span.Fill(0xA5);
        }

        Assert.False(held.Span.ContainsAnyExcept((byte)0x5A), "the held page was handed to another owner");
        Assert.Equal(0, provider.Released);
        PagePool.Free(held);
        pool.Dispose();
        Assert.True(pool.IsReleased);
        Assert.Equal(provider.Allocated, provider.Released);
        other.Dispose();
    }

    [Fact]
    public void A_host_provider_refuses_a_page_of_a_pool_without_a_provider_and_any_allocator_page()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        var pool = PoolTesting.NewPool(allocator);
        var provider = new HostPageProvider(allocator);
        Assert.True(pool.TryAllocPage(out PagePoolBuffer held));
        held.Span.Fill(0x11);
        Assert.Throws<InvalidOperationException>(() => provider.ReleaseNetMem(pool, held.NetMem));

        // A plain allocator page seen through the pool's area type: refused too, and still the caller's.
        Assert.True(allocator.TryAllocPages(0, AllocFlags.None, out Page page));
        Assert.Equal(1, page.RefCount);
        Assert.False(held.Span.ContainsAnyExcept((byte)0x11));
        allocator.FreePages(page);

        PagePool.Free(held);
        PoolTesting.DisposeAndAssertNoLeak(pool, allocator);
    }

    [Fact]
    public void A_region_refuses_to_take_back_a_chunk_that_a_pool_buffer_still_holds_or_that_is_already_free()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        using RegionMemoryProvider region = RegionMemoryProvider.FromArray(new byte[4 * 4096]);
        var pool = PoolTesting.NewPool(allocator, provider: region);
        Assert.True(pool.TryAllocPage(out PagePoolBuffer held));
        held.Span.Fill(0x77);
        long free = region.FreeChunks;

        var e = Assert.Throws<InvalidOperationException>(() => region.ReleaseNetMem(pool, held.NetMem));
        Assert.Contains("not memory that a page pool is giving back", e.Message, StringComparison.Ordinal);
        Assert.Equal(free, region.FreeChunks);

        // Another queue's pool on the same region gets every other chunk, never the held one.
        var second = PoolTesting.NewPool(allocator, provider: region);
        var got = new List<PagePoolBuffer>();
        while (second.TryAllocPage(out PagePoolBuffer b))
        {
            b.Span.Fill(0x88);
            got.Add(b);
        }

        Assert.False(held.Span.ContainsAnyExcept((byte)0x77), "the held chunk was handed to another pool");
        NetMem stale = held.NetMem;
        PagePool.Free(held);
        pool.Dispose();
        Assert.True(pool.IsReleased);

        // The chunk is free now: a second give-back is refused and does not free it twice.
        long afterRelease = region.FreeChunks;
        Assert.Throws<InvalidOperationException>(() => region.ReleaseNetMem(pool, stale));
        Assert.Equal(afterRelease, region.FreeChunks);

        foreach (PagePoolBuffer b in got)
        {
            PagePool.Free(b);
        }

        second.Dispose();
        Assert.True(second.IsReleased);
        Assert.Equal(region.ChunkCount, region.FreeChunks);
        Leaks.AssertNone(allocator);
    }
}
