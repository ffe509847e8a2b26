using System.Diagnostics;
using PageFrag.Pages;
using PageFrag.Pool;
using PageFrag.Providers;
using PageFrag.Tests.Infrastructure;
using static PageFrag.Tests.Pool.PoolTesting;

namespace PageFrag.Tests.Providers;

/// <summary>
/// The <see cref="IMemoryProvider"/> hooks are public members of the built-in providers, so a caller can call them
/// with any pool and any handle, from any thread. Two releases of one unit racing on two threads: exactly one wins.
/// <c>AllocNetMems</c>, <c>Init</c> and <c>Destroy</c> called by anyone but the pool itself are refused: they could
/// hand the pool's memory to a second owner, leak a region's chunks for good, or unbind a live pool.
/// </summary>
public class ProviderHookAttackTests
{
    private const int RaceMilliseconds = 1200;

    /// <summary>Forwards every hook; when the pool gives a unit back, races a second give-back of it on another thread.</summary>
    private sealed class RacingReleaseProvider(IMemoryProvider inner) : IMemoryProvider
    {
        private PagePool? _pool;
        private NetMem _unit;
        private int _wins;
        private int _refusals;

        public RaceGate? Gate { get; set; }

        public int Rounds { get; private set; }

        public int Wins => Volatile.Read(ref _wins);

        public int Refusals => Volatile.Read(ref _refusals);

        public void Init(PagePool pool) => inner.Init(pool);

        public int AllocNetMems(PagePool pool, Span<NetMem> netmems) => inner.AllocNetMems(pool, netmems);

        public void Destroy(PagePool pool) => inner.Destroy(pool);

        public void ReleaseNetMem(PagePool pool, NetMem netmem)
        {
            _pool = pool;
            _unit = netmem;
            Rounds++;
            Gate!.Race(Attempt);
        }

        public void Attempt()
        {
            try
            {
                inner.ReleaseNetMem(_pool!, _unit);
                Interlocked.Increment(ref _wins);
            }
            catch (InvalidOperationException e) when (e.Message.Contains("not memory that a page pool is giving back", StringComparison.Ordinal))
            {
                Interlocked.Increment(ref _refusals);
            }
        }
    }

    [Fact]
    public void Of_two_racing_releases_of_one_host_page_exactly_one_wins_and_no_page_leaks()
    {
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 1 << 20);
        var host = new HostPageProvider(allocator);
        var racing = new RacingReleaseProvider(host);
        using (var gate = new RaceGate(racing.Attempt))
        {
            racing.Gate = gate;
            var clock = Stopwatch.StartNew();
            while ((clock.ElapsedMilliseconds < RaceMilliseconds || racing.Rounds < 200) && gate.Failure is null)
            {
                // 64 pages from one bulk, all back in the owner's cache; Dispose gives each back to the provider.
                PagePool pool = NewPool(allocator, provider: racing);
                var pages = new NetMem[PagePool.AllocCacheRefill];
                for (int i = 0; i < pages.Length; i++)
                {
                    Assert.True(pool.TryAllocNetMem(out pages[i]));
                }

                foreach (NetMem page in pages)
                {
                    pool.RecycleDirect(page);
                }

                pool.Dispose();
                Assert.True(pool.IsReleased);
            }

            Assert.Null(gate.Failure);
        }

        Assert.True(racing.Rounds >= 200);
        Assert.Equal(racing.Rounds, racing.Wins);
        Assert.Equal(racing.Rounds, racing.Refusals);
        Assert.Equal(host.Allocated, host.Released);
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Of_two_racing_releases_of_one_region_chunk_exactly_one_wins_and_the_chunk_is_freed_once()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        using RegionMemoryProvider region = RegionMemoryProvider.FromArray(new byte[8 * 4096]);
        var racing = new RacingReleaseProvider(region);
        using (var gate = new RaceGate(racing.Attempt))
        {
            racing.Gate = gate;
            var clock = Stopwatch.StartNew();
            while ((clock.ElapsedMilliseconds < RaceMilliseconds || racing.Rounds < 200) && gate.Failure is null)
            {
                PagePool pool = NewPool(allocator, provider: racing);
                var chunks = new PagePoolBuffer[8];
                for (int i = 0; i < chunks.Length; i++)
                {
                    Assert.True(pool.TryAllocPage(out chunks[i]));
                }

                Assert.Equal(0, region.FreeChunks);
                foreach (PagePoolBuffer chunk in chunks)
                {
                    PagePool.Free(chunk);
                }

                pool.Dispose();
                Assert.True(pool.IsReleased);

                // A chunk freed twice would show here (more free chunks than the region has) or fail the next pool.
                Assert.Equal(region.ChunkCount, region.FreeChunks);
            }

            Assert.Null(gate.Failure);
        }

        Assert.True(racing.Rounds >= 200);
        Assert.Equal(racing.Rounds, racing.Wins);
        Assert.Equal(racing.Rounds, racing.Refusals);
        Assert.Equal(0, region.BoundPoolCount);
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void AllocNetMems_called_by_another_thread_while_the_pool_refills_never_hands_out_the_pools_pages()
    {
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 1 << 20);
        var host = new HostPageProvider(allocator);
        var stolen = new NetMem[PagePool.AllocCacheRefill];
        int got = 0;
        Exception? odd = null;
        using (var gate = new RaceGate(() =>
        {
            try
            {
                got = host.AllocNetMems(Volatile.Read(ref s_pool)!, stolen);
            }
            catch (InvalidOperationException)
            {
                got = 0;
            }
            catch (Exception e)
            {
                got = 0;
                odd ??= e;
            }
        }))
        {
            var clock = Stopwatch.StartNew();
            int shared = 0;
            var mine = new NetMem[PagePool.AllocCacheRefill];
            while (clock.ElapsedMilliseconds < RaceMilliseconds && gate.Failure is null && shared == 0 && odd is null)
            {
                PagePool pool = NewPool(allocator, provider: host);
                Volatile.Write(ref s_pool, pool);
                gate.Race(() =>
                {
                    for (int i = 0; i < mine.Length; i++)
                    {
                        Assert.True(pool.TryAllocNetMem(out mine[i]));
                    }
                });

                var held = new HashSet<nint>();
                foreach (NetMem m in mine)
                {
                    held.Add(m.Address);
                }

                for (int i = 0; i < got; i++)
                {
                    if (held.Contains(stolen[i].Address))
                    {
                        shared++;
                    }
                }

                if (shared > 0)
                {
                    // Two owners of one page (before the fix): the pool's memory is no longer its own; stop here.
                    break;
                }

                for (int i = 0; i < got; i++)
                {
                    // Whatever the caller got is a plain allocator page it holds: give it back that way.
                    Assert.True(stolen[i].TryGetPage(out Page page));
                    allocator.FreePages(page);
                }

                foreach (NetMem m in mine)
                {
                    pool.RecycleDirect(m);
                }

                pool.Dispose();
                Assert.True(pool.IsReleased);
                Assert.Equal(0, got);
            }

            Assert.Null(gate.Failure);
            Assert.Null(odd);
            Assert.Equal(0, shared);
        }

        Leaks.AssertNone(allocator);
    }

    private static PagePool? s_pool;

    [Fact]
    public void Direct_calls_of_a_host_providers_AllocNetMems_Init_and_Destroy_are_refused_and_the_pool_keeps_working()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        var host = new HostPageProvider(allocator);
        PagePool pool = NewPool(allocator, provider: host);
        Assert.True(pool.TryAllocPage(out PagePoolBuffer first));

        // On the owner thread, outside the pool's own refill: refused, nothing taken.
        long pagesBefore = allocator.GetStats().PagesInUse;
        InvalidOperationException alloc = Assert.Throws<InvalidOperationException>(() => host.AllocNetMems(pool, new NetMem[4]));
        Assert.Contains("Only the page pool calls", alloc.Message, StringComparison.Ordinal);
        Assert.Equal(pagesBefore, allocator.GetStats().PagesInUse);

        // Destroy of a live pool would unbind it (its next refill would throw, and another pool could take the provider).
        InvalidOperationException destroy = Assert.Throws<InvalidOperationException>(() => host.Destroy(pool));
        Assert.Contains("Only the page pool calls", destroy.Message, StringComparison.Ordinal);
        PagePool stranger = NewPool(allocator);
        Assert.Throws<InvalidOperationException>(() => host.Init(stranger));

        // Still bound: the pool refills from the provider past its first bulk.
        var pages = new List<PagePoolBuffer> { first };
        for (int i = 0; i < 2 * PagePool.AllocCacheRefill; i++)
        {
            Assert.True(pool.TryAllocPage(out PagePoolBuffer b));
            pages.Add(b);
        }

        foreach (PagePoolBuffer b in pages)
        {
            PagePool.Free(b);
        }

        stranger.Dispose();
        Assert.True(stranger.IsReleased);
        DisposeAndAssertNoLeak(pool, allocator);
        Assert.Equal(host.Allocated, host.Released);

        // Released by its pool, the provider serves a new one.
        PagePool next = NewPool(allocator, provider: host);
        Assert.True(next.TryAllocPage(out PagePoolBuffer n));
        PagePool.Free(n);
        DisposeAndAssertNoLeak(next, allocator);
    }

    [Fact]
    public void Direct_calls_of_a_regions_AllocNetMems_Init_and_Destroy_are_refused_and_no_chunk_is_lost()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        RegionMemoryProvider region = RegionMemoryProvider.FromArray(new byte[4 * 4096]);
        PagePool pool = NewPool(allocator, provider: region);

        // A chunk handed to a caller directly could never come back (ReleaseNetMem takes only what a pool returns):
        // it would be lost for good and the region could never be disposed.
        InvalidOperationException alloc = Assert.Throws<InvalidOperationException>(() => region.AllocNetMems(pool, new NetMem[1]));
        Assert.Contains("Only the page pool calls", alloc.Message, StringComparison.Ordinal);
        Assert.Equal(4, region.FreeChunks);

        // Destroy of a live pool would unbind it while it may still hold chunks.
        Assert.True(pool.TryAllocPage(out PagePoolBuffer held));
        Assert.Throws<InvalidOperationException>(() => region.Destroy(pool));
        Assert.Equal(1, region.BoundPoolCount);

        // Init of a pool that does not use the region would keep the region bound for ever.
        PagePool stranger = NewPool(allocator);
        Assert.Throws<InvalidOperationException>(() => region.Init(stranger));
        Assert.Equal(1, region.BoundPoolCount);

        Assert.True(pool.TryAllocPage(out PagePoolBuffer second));
        PagePool.Free(held);
        PagePool.Free(second);
        DisposeAndAssertNoLeak(stranger, allocator);
        DisposeAndAssertNoLeak(pool, allocator);
        Assert.Equal(0, region.BoundPoolCount);
        Assert.Equal(4, region.FreeChunks);
        region.Dispose();
    }
}
