using PageFrag.Pages;
using PageFrag.Pool;
using PageFrag.Providers;
using PageFrag.Tests.Infrastructure;
using static PageFrag.Tests.Pool.PoolTesting;

namespace PageFrag.Tests.Faults;

/// <summary>
/// A memory provider failing in the middle of a run, with buffers of the pool in flight on other threads:
/// the pool reports the failure as documented, nothing held is corrupted, allocation works again once the
/// provider has memory again, and every chunk and page comes back.
/// </summary>
public class ProviderFaultTests
{
    /// <summary>Hands out what the region has, until told to fail: by returning nothing, or by throwing.</summary>
    private sealed class SwitchableProvider(RegionMemoryProvider region) : IMemoryProvider
    {
        public volatile int Mode;

        public void Init(PagePool pool) => region.Init(pool);

        public int AllocNetMems(PagePool pool, Span<NetMem> netmems) => Mode switch
        {
            1 => 0,
            2 => throw new IOException("the device stopped answering"),
            _ => region.AllocNetMems(pool, netmems.Length > 8 ? netmems[..8] : netmems),
        };

        public void ReleaseNetMem(PagePool pool, NetMem netmem) => region.ReleaseNetMem(pool, netmem);

        public void Destroy(PagePool pool) => region.Destroy(pool);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    public void A_provider_that_fails_mid_run_fails_allocations_as_documented_corrupts_nothing_and_recovers(int mode)
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        using RegionMemoryProvider region = RegionMemoryProvider.FromArray(new byte[32 * 4096]);
        var provider = new SwitchableProvider(region);
        PagePool pool = NewPool(allocator, provider: provider, poolSize: 16);
        var held = new List<(PagePoolBuffer Buffer, byte Stamp)>();
        byte stamp = 0;

        // Use up the pool's cache and ring, with half the buffers freed on another thread as we go.
        for (int i = 0; i < 64; i++)
        {
            Assert.True(pool.TryAlloc(i % 3 == 0 ? 3000 : 700, out PagePoolBuffer b), $"allocation {i}");
            b.Span.Fill(++stamp);
            held.Add((b, stamp));
            if (i % 2 == 1)
            {
                (PagePoolBuffer old, byte s) = held[0];
                held.RemoveAt(0);
                Assert.False(old.Span.ContainsAnyExcept(s));
                OtherThread.Run(old.Free);
            }
        }

        // The provider fails: allocations that need new memory fail as documented until it is back.
        provider.Mode = mode;
        int failures = 0;
        for (int i = 0; i < 200 && failures < 3; i++)
        {
            try
            {
                if (pool.TryAllocPage(out PagePoolBuffer b))
                {
                    // Served from what the pool already had.
                    b.Span.Fill(++stamp);
                    held.Add((b, stamp));
                }
                else
                {
                    Assert.Equal(1, mode);
                    Assert.True(b.IsEmpty);
                    failures++;
                }
            }
            catch (IOException e) when (mode == 2)
            {
                Assert.Equal("the device stopped answering", e.Message);
                failures++;
            }
        }

        Assert.Equal(3, failures);
        long heldPages = pool.PagesHeld - pool.PagesReleased;
        Assert.Equal(region.ChunkCount - region.FreeChunks, heldPages);
        foreach ((PagePoolBuffer b, byte s) in held)
        {
            Assert.False(b.Span.ContainsAnyExcept(s), $"{b} was overwritten while the provider failed");
        }

        // Memory comes back: the provider answers again, or buffers returned to the pool refill it.
        provider.Mode = 0;
        Assert.True(pool.TryAllocFrag(500, out PagePoolBuffer again));
        again.Free();

        foreach ((PagePoolBuffer b, _) in held)
        {
            OtherThread.Run(b.Free);
        }

        pool.Dispose();
        Assert.True(pool.IsReleased);
        Assert.Equal(32, region.FreeChunks);
        Assert.Null(region.BoundPool);
        Leaks.AssertNone(allocator);
    }
}
