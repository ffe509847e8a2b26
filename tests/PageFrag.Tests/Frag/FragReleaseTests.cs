using System.Diagnostics;
using PageFrag.Frag;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;

namespace PageFrag.Tests.Frag;

/// <summary>
/// One release wins (issue 11 items 3 and 6): every release of a fragment is decided by one compare-and-swap
/// of its state byte, tiny fragments included, and a page whose fragments are all released has no live state.
/// </summary>
public class FragReleaseTests
{
    private const int RaceMilliseconds = 1500;

    /// <summary>A way to release a fragment.</summary>
    public enum Way
    {
        Handle,
        Address,
        Local,
    }

    [Theory]
    [InlineData(Way.Handle, Way.Handle, 64)]
    [InlineData(Way.Handle, Way.Address, 64)]
    [InlineData(Way.Address, Way.Address, 64)]
    [InlineData(Way.Handle, Way.Handle, 4)]
    [InlineData(Way.Local, Way.Handle, 64)]
    [InlineData(Way.Local, Way.Address, 4)]
    public void Of_two_racing_releases_of_one_fragment_exactly_one_wins_and_no_page_leaks(Way first, Way second, int size)
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        var stop = Stopwatch.StartNew();
        PageFragment frag = default;
        int[] wins = new int[2];
        int[] losses = new int[2];

        void Release(int who, Way way)
        {
            try
            {
                switch (way)
                {
                    case Way.Handle: PageFragCache.Free(frag); break;
                    case Way.Address: PageFragCache.Free(frag.Address); break;
                    default: cache.FreeLocal(frag); break;
                }

                wins[who]++;
            }
            catch (PageFragDoubleFreeException)
            {
                losses[who]++;
            }
        }

        using var gate = new RaceGate(() => Release(1, second));
        int rounds = 0;
        while (stop.ElapsedMilliseconds < RaceMilliseconds && gate.Failure is null)
        {
            Assert.True(cache.TryAlloc(64, out PageFragment keeper));
            Assert.True(cache.TryAlloc(size, out frag));
            FragKit.Fill(keeper, rounds);
            rounds++;
            gate.Race(() => Release(0, first));
            Assert.Equal(rounds, wins[0] + wins[1]);
            Assert.True(FragKit.IsIntact(keeper, rounds - 1), "the keeper was damaged");
            cache.FreeLocal(keeper);
        }

        gate.Dispose();
        Assert.Null(gate.Failure);
        Assert.Equal(rounds, wins[0] + wins[1]);
        Assert.Equal(rounds, losses[0] + losses[1]);
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void A_double_free_of_a_fragment_under_8_bytes_is_caught_and_the_live_neighbour_keeps_its_page()
    {
        // Issue 11 item 6, first repro.
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(4, out PageFragment tiny));
        Assert.True(cache.TryAlloc(100, out PageFragment live));
        Assert.Equal(8, tiny.TrueSize);
        Assert.NotEqual(tiny.Address >> 3, live.Address >> 3);
        PageFragment copy = tiny;
        tiny.Free();
        FragKit.Throws<PageFragDoubleFreeException>(() => copy.Free(), null, "already freed");
        cache.Drain();
        Assert.True(allocator.PagesInUse > 0, "the live fragment's page was returned");
        FragKit.Fill(live, 7);
        Assert.True(FragKit.IsIntact(live, 7));
        live.Free();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void An_abort_after_a_free_of_a_tiny_fragment_is_refused_and_leaves_the_counts_right()
    {
        // Issue 11 item 6, second repro.
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(4, out PageFragment t));
        int bias = cache.Bias;
        int offset = cache.Offset;
        t.Free();
        FragKit.Throws<PageFragDoubleFreeException>(() => cache.Abort(t), null, "already freed");
        Assert.Equal(bias, cache.Bias);
        Assert.Equal(offset, cache.Offset);
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void An_aborted_fragment_cannot_be_freed_and_its_state_is_clear()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(3, out PageFragment a));
        cache.Abort(a);
        FragKit.Throws<PageFragDoubleFreeException>(() => a.Free(), null, "already freed");
        FragKit.Throws<PageFragDoubleFreeException>(() => PageFragCache.Free(a.Address), null, "No live fragment starts");
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void A_page_whose_fragments_are_all_released_has_no_live_state_when_it_is_reused_in_place()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        var random = new Random(5);
        for (int i = 0; i < 20_000 && cache.PagesReused < 3; i++)
        {
            Assert.True(cache.TryAlloc(random.Next(1, 300), 1 << random.Next(0, 7), out PageFragment f));
            switch (i % 4)
            {
                case 0: f.Free(); break;
                case 1: cache.FreeLocal(f); break;
                case 2: PageFragCache.Free(f.Address); break;
                default: cache.Abort(f); break;
            }
        }

        // Every fragment is released: no byte of the arena may say "live", and the page was reused in place
        // (a Debug build also asserts the invariant at each reuse).
        Assert.True(cache.PagesReused >= 3, "the page was never reused in place");
        Arena arena = cache.CurrentPage.Arena!;
        Assert.True(Arena.NoLiveFragments(arena.FragStates, 0, arena.ByteLength));
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void FreeLocal_of_a_copy_already_freed_elsewhere_throws_and_keeps_the_bias()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(64, out PageFragment f));
        PageFragment copy = f;
        OtherThread.Run(() => copy.Free());
        int bias = cache.Bias;
        FragKit.Throws<PageFragDoubleFreeException>(() => cache.FreeLocal(f), null, "already freed");
        Assert.Equal(bias, cache.Bias);
        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }
}
