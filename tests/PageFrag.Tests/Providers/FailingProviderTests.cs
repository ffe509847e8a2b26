using PageFrag.Pages;
using PageFrag.Pool;
using PageFrag.Providers;
using PageFrag.Tests.Infrastructure;
using static PageFrag.Tests.Pool.PoolTesting;

namespace PageFrag.Tests.Providers;

public class FailingProviderTests
{
    /// <summary>A region provider that can be told to fail, to see what the pool does with a broken provider.</summary>
    private sealed class FlakyProvider(RegionMemoryProvider inner) : IMemoryProvider
    {
        public bool FailInit;
        public bool ReturnNothing;
        public bool Throw;
        public int OverReport;
        public int Destroyed;

        public void Init(PagePool pool)
        {
            if (FailInit)
            {
                throw new InvalidOperationException("device not ready");
            }

            inner.Init(pool);
        }

        public int AllocNetMems(PagePool pool, Span<NetMem> netmems)
        {
            if (Throw)
            {
                throw new IOException("device fell off the bus");
            }

            if (ReturnNothing)
            {
                return 0;
            }

            if (OverReport > 0)
            {
                return netmems.Length + OverReport;
            }

            // Up to 4 units per call: the region gives one at a time, this provider batches them.
            int got = 0;
            while (got < Math.Min(4, netmems.Length) && inner.AllocNetMems(pool, netmems.Slice(got, 1)) == 1)
            {
                got++;
            }

            return got;
        }

        public void ReleaseNetMem(PagePool pool, NetMem netmem) => inner.ReleaseNetMem(pool, netmem);

        public void Destroy(PagePool pool)
        {
            Destroyed++;
            inner.Destroy(pool);
        }
    }

    [Fact]
    public void A_provider_that_fails_to_initialise_fails_the_pool_constructor()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        using RegionMemoryProvider region = RegionMemoryProvider.FromArray(new byte[8 * 4096]);
        var flaky = new FlakyProvider(region) { FailInit = true };
        InvalidOperationException ex = Assert.Throws<InvalidOperationException>(() => NewPool(allocator, provider: flaky));
        Assert.Equal("device not ready", ex.Message);
        Assert.Null(region.BoundPool);
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_provider_with_nothing_to_give_makes_allocations_fail_and_the_pool_recovers_when_it_has()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        using RegionMemoryProvider region = RegionMemoryProvider.FromArray(new byte[8 * 4096]);
        var flaky = new FlakyProvider(region) { ReturnNothing = true };
        PagePool pool = NewPool(allocator, provider: flaky);
        Assert.False(pool.TryAllocNetMem(out NetMem none));
        Assert.True(none.IsEmpty);
        Assert.False(pool.TryAlloc(100, out _));
        Assert.Equal(0, pool.PagesHeld);

        flaky.ReturnNothing = false;
        Assert.True(pool.TryAlloc(100, out PagePoolBuffer b));
        Assert.Equal(4, pool.PagesHeld);
        b.Free();
        pool.Dispose();
        Assert.True(pool.IsReleased);
        Assert.Equal(1, flaky.Destroyed);
        Assert.Equal(8, region.FreeChunks);
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_provider_that_throws_propagates_its_exception_and_leaves_the_pool_usable()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        using RegionMemoryProvider region = RegionMemoryProvider.FromArray(new byte[8 * 4096]);
        var flaky = new FlakyProvider(region) { Throw = true };
        PagePool pool = NewPool(allocator, provider: flaky);
        IOException ex = Assert.Throws<IOException>(() => pool.TryAllocNetMem(out _));
        Assert.Equal("device fell off the bus", ex.Message);
        flaky.Throw = false;
        Assert.True(pool.TryAllocNetMem(out NetMem m));
        pool.RecycleDirect(m);
        pool.Dispose();
        Assert.Equal(8, region.FreeChunks);
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_provider_that_reports_more_than_it_was_asked_for_is_caught()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        using RegionMemoryProvider region = RegionMemoryProvider.FromArray(new byte[8 * 4096]);
        var flaky = new FlakyProvider(region) { OverReport = 1 };
        PagePool pool = NewPool(allocator, provider: flaky);
        InvalidOperationException ex = Assert.Throws<InvalidOperationException>(() => pool.TryAllocNetMem(out _));
        Assert.Equal("The memory provider reported 65 units for a span of 64.", ex.Message);
        Assert.Equal(0, pool.PagesHeld);
        pool.Dispose();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_provider_that_hands_out_memory_a_pool_still_holds_is_caught()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        using RegionMemoryProvider region = RegionMemoryProvider.FromArray(new byte[8 * 4096]);
        PagePool pool = NewPool(allocator, provider: new DuplicatingProvider(region));
        Assert.True(pool.TryAllocNetMem(out NetMem first));
        pool.RecycleDirect(first);
        Assert.True(pool.TryAllocNetMem(out NetMem second));
        InvalidOperationException ex = Assert.Throws<InvalidOperationException>(() => pool.TryAllocNetMem(out _));
        Assert.Equal("The memory provider returned memory that a page pool still holds.", ex.Message);
        pool.RecycleDirect(second);
        pool.Dispose();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void What_a_provider_gave_after_a_bad_unit_goes_back_to_it()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        using RegionMemoryProvider region = RegionMemoryProvider.FromArray(new byte[8 * 4096]);
        var provider = new GoodBadGoodProvider(region);
        PagePool pool = NewPool(allocator, provider: provider);
        InvalidOperationException ex = Assert.Throws<InvalidOperationException>(() => pool.TryAllocNetMem(out _));
        Assert.StartsWith("The memory provider returned an empty unit", ex.Message, StringComparison.Ordinal);
        Assert.Equal(1, pool.PagesHeld);
        Assert.Equal(7, region.FreeChunks); // the good one after the bad one was released
        pool.Dispose();
        Assert.True(pool.IsReleased);
        Assert.Equal(8, region.FreeChunks);
        Leaks.AssertNone(allocator);
    }

    /// <summary>Returns a good chunk, an empty handle, and another good chunk.</summary>
    private sealed class GoodBadGoodProvider(RegionMemoryProvider region) : IMemoryProvider
    {
        public void Init(PagePool pool) => region.Init(pool);

        public int AllocNetMems(PagePool pool, Span<NetMem> netmems)
        {
            Assert.Equal(1, region.AllocNetMems(pool, netmems[..1]));
            Assert.Equal(1, region.AllocNetMems(pool, netmems[1..2]));
            netmems[2] = netmems[1];
            netmems[1] = default;
            return 3;
        }

        public void ReleaseNetMem(PagePool pool, NetMem netmem) => region.ReleaseNetMem(pool, netmem);

        public void Destroy(PagePool pool) => region.Destroy(pool);
    }

    /// <summary>Hands out chunk 0 on every call: the second call gives the pool a chunk it already holds.</summary>
    private sealed class DuplicatingProvider(RegionMemoryProvider region) : IMemoryProvider
    {
        public void Init(PagePool pool)
        {
        }

        public int AllocNetMems(PagePool pool, Span<NetMem> netmems)
        {
            netmems[0] = region.Areas[0].GetChunk(0);
            return 1;
        }

        public void ReleaseNetMem(PagePool pool, NetMem netmem)
        {
        }

        public void Destroy(PagePool pool)
        {
        }
    }
}
