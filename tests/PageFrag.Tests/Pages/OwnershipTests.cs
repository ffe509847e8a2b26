using PageFrag.Frag;
using PageFrag.Pages;
using PageFrag.Pool;
using PageFrag.Tests.Infrastructure;
using static PageFrag.Tests.Pages.PageTestKit;

namespace PageFrag.Tests.Pages;

/// <summary>
/// FreePages drops only references that are the caller's: any reference of a block from TryAllocPages, and
/// on a page pool's or fragment cache's page only one the caller added with AddRef. A free page, a page parked
/// on a per-CPU list and another allocator's page are refused, and a refusal changes nothing (issue 11 item 8).
/// </summary>
public class OwnershipTests
{
    private const string NotCallersMessage = "The page belongs to a page pool or a fragment cache";

    [Fact]
    public void FreePages_refuses_a_page_pool_page_and_the_pool_still_releases()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        var pool = new PagePool(new PagePoolOptions { Allocator = allocator });
        Assert.True(pool.TryAllocNetMem(out NetMem nm));
        Assert.True(PageAllocator.TryGetPage(nm.Address, out Page pg));
        int before = pg.RefCount;

        InvalidOperationException ex = Assert.Throws<InvalidOperationException>(() => allocator.FreePages(pg));
        Assert.StartsWith(NotCallersMessage, ex.Message);
        Assert.Equal(before, pg.RefCount);

        // A reference the caller added is the caller's to drop (get_page/put_page on a page-pool page), once.
        pg.AddRef();
        allocator.FreePages(pg);
        Assert.Equal(before, pg.RefCount);
        Assert.Throws<InvalidOperationException>(() => allocator.FreePages(pg));
        Assert.Equal(before, pg.RefCount);

        pool.PutFullPage(nm, allowDirect: false);
        pool.Dispose();
        Assert.True(pool.IsReleased);
        Assert.Equal(0, pool.InFlight);
        AssertClean(allocator);
    }

    [Fact]
    public void FreePages_refuses_a_fragment_caches_page_by_handle_and_by_address()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(64, out PageFragment f));
        Page current = cache.CurrentPage;
        Assert.True(PageAllocator.TryGetPage(f.Address, out Page byAddress));
        Assert.Equal(current, byAddress);
        int before = current.RefCount;

        foreach (Page p in new[] { current, byAddress })
        {
            InvalidOperationException ex = Assert.Throws<InvalidOperationException>(() => allocator.FreePages(p));
            Assert.StartsWith(NotCallersMessage, ex.Message);
            p.AddRef();
            allocator.FreePages(p);
            ex = Assert.Throws<InvalidOperationException>(() => allocator.FreePages(p));
            Assert.StartsWith(NotCallersMessage, ex.Message);
        }

        Assert.Equal(before, current.RefCount);
        PageFragCache.Free(f);
        cache.Drain();
        AssertClean(allocator);
    }

    [Fact]
    public void FreePages_refuses_a_free_page_and_a_page_parked_on_a_per_CPU_list()
    {
        using PageAllocator allocator = OneArena(arenaSize: 128 * 1024);

        // Order 4 skips the per-CPU lists: the other half of the arena stays a free order-4 buddy block.
        Page half = Alloc(allocator, 4);
        Assert.True(PageAllocator.TryGetPage(half.Address + 65536, out Page neverAllocated) && neverAllocated.Allocator == allocator
            || PageAllocator.TryGetPage(half.Address - 65536, out neverAllocated) && neverAllocated.Allocator == allocator);
        Assert.Equal(0, neverAllocated.RefCount);
        PageAllocatorStats before = allocator.GetStats();
        Assert.Throws<PageFragDoubleFreeException>(() => allocator.FreePages(neverAllocated));
        Assert.Throws<InvalidOperationException>(neverAllocated.AddRef);
        Assert.Equal(before.FreePages, allocator.GetStats().FreePages);
        Assert.Equal(before.PagesInUse, allocator.GetStats().PagesInUse);

        Page held = Alloc(allocator, 0);
        Page parked = Alloc(allocator, 0);
        Assert.True(PageAllocator.TryGetPage(parked.Address, out Page parkedByAddress));
        allocator.FreePages(parked); // order 0: parked on this CPU's list
        before = allocator.GetStats();

        foreach (Page p in new[] { parked, parkedByAddress, neverAllocated })
        {
            Assert.Throws<PageFragDoubleFreeException>(() => allocator.FreePages(p));
            Assert.Throws<InvalidOperationException>(p.AddRef);
        }

        // Looked up again now that the block is free, it is still refused.
        Assert.True(PageAllocator.TryGetPage(parked.Address, out Page again));
        Assert.Throws<PageFragDoubleFreeException>(() => allocator.FreePages(again));

        PageAllocatorStats after = allocator.GetStats();
        Assert.Equal(before.PagesInUse, after.PagesInUse);
        Assert.Equal(before.CachedPages + before.FreePages, after.CachedPages + after.FreePages);
        Assert.Equal(1, held.RefCount);
        allocator.FreePages(held);
        allocator.FreePages(half);
        AssertClean(allocator);
    }

    [Fact]
    public void A_tail_page_resolves_to_its_head_and_the_block_is_freed_once()
    {
        using PageAllocator allocator = OneArena();
        Page block = Alloc(allocator, 3);
        Assert.True(PageAllocator.TryGetPage(block.Address + 5 * 4096 + 7, out Page tail));
        Assert.Equal(block, tail);
        Assert.Equal(3, tail.Order);
        allocator.FreePages(tail);
        Assert.Throws<PageFragDoubleFreeException>(() => allocator.FreePages(block));
        AssertClean(allocator);
    }

    [Fact]
    public void FreePages_and_AddRef_refuse_another_allocators_page()
    {
        using PageAllocator a = Leaks.NewAllocator();
        using PageAllocator b = Leaks.NewAllocator();
        Page page = Alloc(a, 1);
        ArgumentException ex = Assert.Throws<ArgumentException>(() => b.FreePages(page));
        Assert.Equal("page", ex.ParamName);
        Assert.Equal(1, page.RefCount);
        a.FreePages(page);
        AssertClean(a);
        AssertClean(b);
    }

    [Fact]
    public void A_page_pool_page_a_caller_holds_a_reference_on_is_freed_by_that_caller_after_the_pool_lets_go()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        var pool = new PagePool(new PagePoolOptions { Allocator = allocator });
        Assert.True(pool.TryAllocNetMem(out NetMem nm));
        Assert.True(PageAllocator.TryGetPage(nm.Address, out Page pg));
        pg.AddRef();
        pool.PutFullPage(nm, allowDirect: false); // two references: released, not recycled
        pool.Dispose();
        Assert.True(pool.IsReleased);
        Assert.Equal(1, pg.RefCount);
        allocator.FreePages(pg);
        Assert.Throws<PageFragDoubleFreeException>(() => allocator.FreePages(pg));
        AssertClean(allocator);
    }

    [Fact]
    public void The_descriptor_layout_lets_one_64_bit_word_hold_the_count_and_the_generation()
    {
        Assert.True(PageDescriptor.LayoutFitsRefAndGeneration());
    }

    [Fact]
    public void A_caller_page_with_extra_references_is_freed_once_per_reference()
    {
        using PageAllocator allocator = OneArena();
        Page page = Alloc(allocator, 2);
        page.AddRef();
        Assert.True(PageAllocator.TryGetPage(page.Address + 100, out Page found));
        found.AddRef();
        Assert.Equal(3, page.RefCount);
        allocator.FreePages(found);
        allocator.FreePages(page);
        allocator.FreePages(page);
        Assert.Throws<PageFragDoubleFreeException>(() => allocator.FreePages(page));
        Assert.Throws<InvalidOperationException>(page.AddRef);
        AssertClean(allocator);
    }

    [Fact]
    public void Two_racing_FreePages_of_one_page_exactly_one_wins_even_when_the_winner_reallocates_at_once()
    {
        using PageAllocator allocator = OneArena();
        var start = new Barrier(2);
        Page shared = Alloc(allocator, 0);
        var reallocated = new Page[2];
        var won = new int[2];
        var refused = new int[2];
        long rounds = 0;
        long ready = 0;
        int errors = 0;
        string? firstError = null;
        var stopAt = DateTime.UtcNow.AddSeconds(2);
        bool stop = false;

        void Run(int me)
        {
            for (long round = 1; ; round++)
            {
                // A spinning start (not the barrier's wake-up, which staggers the threads by microseconds), so
                // that both frees land within nanoseconds of each other.
                Interlocked.Increment(ref ready);
                var spin = default(SpinWait);
                while (Volatile.Read(ref ready) < 2 * round)
                {
                    spin.SpinOnce(sleep1Threshold: -1);
                }

                if (Volatile.Read(ref stop))
                {
                    return;
                }

                Page mine = shared;
                try
                {
                    allocator.FreePages(mine);
                    won[me]++;

                    // Take the block straight back: the loser's free must not drop this new reference.
                    reallocated[me] = Alloc(allocator, 0);
                }
                catch (PageFragDoubleFreeException)
                {
                    refused[me]++;
                }
                catch (Exception e)
                {
                    // Anything else is a failure, but the round still ends so that the other thread is not left at the barrier.
                    Interlocked.Increment(ref errors);
                    firstError ??= e.ToString();
                }

                start.SignalAndWait();
                if (me == 0)
                {
                    int winners = (reallocated[0].IsEmpty ? 0 : 1) + (reallocated[1].IsEmpty ? 0 : 1);
                    if (winners != 1)
                    {
                        Interlocked.Increment(ref errors);
                        firstError ??= $"round {rounds}: {winners} winners";
                    }

                    Page next = default;
                    foreach (ref Page r in reallocated.AsSpan())
                    {
                        if (!r.IsEmpty)
                        {
                            if (r.RefCount != 1)
                            {
                                Interlocked.Increment(ref errors);
                                firstError ??= $"round {rounds}: the reallocated page has {r.RefCount} references";
                                r.AddRef();
                            }

                            if (next.IsEmpty)
                            {
                                next = r;
                            }
                            else
                            {
                                allocator.FreePages(r);
                            }

                            r = default;
                        }
                    }

                    shared = next.IsEmpty ? Alloc(allocator, 0) : next;
                    rounds++;
                    Volatile.Write(ref stop, DateTime.UtcNow > stopAt);
                }
            }
        }

        var t0 = new Thread(() => Run(0));
        var t1 = new Thread(() => Run(1));
        t0.Start();
        t1.Start();
        t0.Join();
        t1.Join();

        Assert.True(errors == 0, $"{errors} bad rounds of {rounds}; first: {firstError}");
        Assert.Equal(rounds, won[0] + won[1]);
        Assert.Equal(rounds, refused[0] + refused[1]);
        allocator.FreePages(shared);
        AssertClean(allocator);
    }
}
