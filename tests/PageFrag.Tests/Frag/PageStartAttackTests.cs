using System.Diagnostics;
using PageFrag.Frag;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;

namespace PageFrag.Tests.Frag;

/// <summary>
/// Session 6 attacks on the dense page-start state table (Arena.StateIndex) and the inlined fast paths of
/// TryAlloc and Free: fragments that start exactly on a 4 KiB page start against fragments in the middle.
/// </summary>
public class PageStartAttackTests
{
    [Fact]
    public void Page_start_fragment_double_free_by_address_then_handle_is_refused_and_changes_nothing()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        var frags = new PageFragment[8];
        for (int i = 0; i < frags.Length; i++)
        {
            Assert.True(cache.TryAlloc(4096, 4096, out frags[i]));
            Assert.Equal(0, frags[i].Address & 4095);
        }

        int refCount = frags[0].Page.RefCount;
        PageFragCache.Free(frags[1].Address);
        Assert.Equal(refCount - 1, frags[0].Page.RefCount);
        Assert.Throws<PageFragDoubleFreeException>(() => PageFragCache.Free(frags[1].Address));
        Assert.Throws<PageFragDoubleFreeException>(() => PageFragCache.Free(in frags[1]));
        Assert.Equal(refCount - 1, frags[0].Page.RefCount);

        // An interior 4 KiB page start of a bigger fragment is not a fragment start.
        Assert.True(cache.TryAlloc(8192, 4096, out PageFragment big));
        int bigRef = big.Page.RefCount;
        Assert.ThrowsAny<InvalidOperationException>(() => PageFragCache.Free(big.Address + 4096));
        Assert.Equal(bigRef, big.Page.RefCount);
        big.Free();

        for (int i = 0; i < frags.Length; i++)
        {
            if (i != 1)
            {
                PageFragCache.Free(in frags[i]);
            }
        }

        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void Racing_free_by_handle_and_by_address_of_a_page_start_fragment_exactly_one_wins()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        PageFragment shared = default;
        int secondWins = 0, secondThrows = 0;
        using (var gate = new RaceGate(() =>
        {
            try
            {
                PageFragCache.Free(shared.Address);
                secondWins++;
            }
            catch (PageFragDoubleFreeException)
            {
                secondThrows++;
            }
        }))
        {
            var sw = Stopwatch.StartNew();
            int firstWins = 0, rounds = 0;
            while (sw.ElapsedMilliseconds < 1500)
            {
                // Alternate a page-start fragment and a mid-page one.
                int size = (rounds & 1) == 0 ? 4096 : 100;
                Assert.True(cache.TryAlloc(size, (rounds & 1) == 0 ? 4096 : 1, out shared));
                PageFragment copy = shared;
                gate.Race(() =>
                {
                    try
                    {
                        PageFragCache.Free(in copy);
                        firstWins++;
                    }
                    catch (PageFragDoubleFreeException)
                    {
                    }
                });
                rounds++;
                Assert.Equal(rounds, firstWins + secondWins);
            }

            Assert.Equal(firstWins, secondThrows);
        }

        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }

    [Fact]
    public void Stale_page_start_handle_after_drain_discard_and_reuse_is_refused_and_the_new_owner_keeps_its_bytes()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(4096, 4096, out PageFragment stale));
        PageFragment copy = stale;
        stale.Free();
        cache.Drain();
        allocator.DrainPerCpuLists();
        allocator.DiscardFreeMemory();


        // Reuse: carve page-start fragments until one lands on the stale start again.
        var fresh = new List<PageFragment>();
        PageFragment victim = default;
        bool found = false;
        for (int i = 0; i < 60 && !found; i++)
        {
            Assert.True(cache.TryAlloc(4096, 4096, out PageFragment f));
            FragKit.Fill(f, i);
            fresh.Add(f);
            if (f.Address == copy.Address)
            {
                victim = f;
                found = true;
            }
        }

        Assert.True(found, "the stale start was never carved again");
        int refCount = victim.Page.RefCount;
        Assert.Throws<PageFragDoubleFreeException>(() => PageFragCache.Free(in copy));
        Assert.Equal(refCount, victim.Page.RefCount);
        for (int i = 0; i < fresh.Count; i++)
        {
            Assert.True(FragKit.IsIntact(fresh[i], i));
            PageFragCache.Free(fresh[i].Address);
        }

        FragKit.DrainAndAssertNoLeak(cache, allocator);
    }
}
