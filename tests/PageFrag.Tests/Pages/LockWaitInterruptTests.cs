using PageFrag.Frag;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;

namespace PageFrag.Tests.Pages;

/// <summary>
/// The allocator's lock waits that sit in the middle of a change: an allocation that has charged its pages, a free
/// whose block is already on a list when it spills a batch, a drain or a dispose that has begun to move pages, a
/// cache closing its recycle slots, a trim that unregisters its arenas. A <see cref="Thread.Interrupt"/> while one of
/// them waits for a contended lock must not leave the change half-done (see docs/interrupts.md).
/// </summary>
public class LockWaitInterruptTests
{
    [Theory]
    [InlineData(0)] // a per-CPU list's lock
    [InlineData(4)] // above the per-CPU orders: the buddy lock
    public void An_interrupt_while_an_allocation_waits_for_a_list_lock_gives_its_charge_back(int order)
    {
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 256 * 1024);
        Page page = default;
        Interrupts.Outcome outcome = Interrupts.WhileBlocked(allocator.FreeLocksForTests(), () =>
        {
            Assert.True(allocator.TryAllocPages(order, AllocFlags.None, out page));
        });

        // Either way is honest (an allocation may throw the interrupt of its lock's wait), but nothing may stay charged.
        if (outcome.Threw is null)
        {
            allocator.FreePages(page);
        }
        else
        {
            Assert.IsType<ThreadInterruptedException>(outcome.Threw);
        }

        allocator.DrainPerCpuLists();
        Leaks.AssertNone(allocator);
        Assert.True(allocator.TryAllocPages(order, AllocFlags.None, out Page again));
        allocator.FreePages(again);
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void An_interrupt_while_a_limited_allocation_waits_does_not_take_pages_from_the_limit()
    {
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 64 * 1024, maxBytes: 64 * 1024);
        Interrupts.Outcome outcome = Interrupts.WhileBlocked(allocator.FreeLocksForTests(), () =>
        {
            if (allocator.TryAllocPages(0, AllocFlags.None, out Page p))
            {
                allocator.FreePages(p);
            }
        });
        _ = outcome;

        // The whole limit is still there: sixteen pages, one by one.
        var pages = new List<Page>();
        for (int i = 0; i < 16; i++)
        {
            Assert.True(allocator.TryAllocPages(0, AllocFlags.None, out Page p), $"page {i} of the 16 the limit allows was refused");
            pages.Add(p);
        }

        pages.ForEach(allocator.FreePages);
        allocator.DrainPerCpuLists();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void An_interrupt_while_a_free_waits_for_the_transfer_stack_is_kept_for_later_and_the_free_completes()
    {
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 4 << 20);
        var blocks = new List<Page>();
        for (int i = 0; i < 64; i++)
        {
            Assert.True(allocator.TryAllocPages(3, AllocFlags.None, out Page p));
            blocks.Add(p);
        }

        // The frees fill this CPU's order-3 list past its high mark, and the spill waits for the transfer stack.
        Interrupts.Outcome outcome = Interrupts.WhileBlocked([allocator.TransferLockForTests], () => blocks.ForEach(allocator.FreePages));

        Interrupts.AssertCompletedAndKept(outcome);
        allocator.DrainPerCpuLists();
        Leaks.AssertNone(allocator);
        Assert.Equal(allocator.GetStats().TotalPages, allocator.GetStats().FreePages);
    }

    [Theory]
    [InlineData("DrainPerCpuLists")]
    [InlineData("Trim")]
    [InlineData("Dispose")]
    public void An_interrupt_while_a_drain_waits_for_the_recycle_slots_list_is_kept_and_the_drain_completes(string call)
    {
        PageAllocator allocator = Leaks.NewAllocator(arenaSize: 256 * 1024);
        try
        {
            var pages = new List<Page>();
            for (int i = 0; i < 8; i++)
            {
                Assert.True(allocator.TryAllocPages(i % 3, AllocFlags.None, out Page p));
                pages.Add(p);
            }

            pages.ForEach(allocator.FreePages);
            Assert.True(allocator.GetStats().CachedPages > 0, "the per-CPU lists should hold the freed pages");

            int trimmed = -1;
            Interrupts.Outcome outcome = Interrupts.WhileBlocked([allocator.RecyclersLockForTests], () =>
            {
                switch (call)
                {
                    case "DrainPerCpuLists": allocator.DrainPerCpuLists(); break;
                    case "Trim": trimmed = allocator.Trim(); break;
                    default: allocator.Dispose(); break;
                }
            });

            Interrupts.AssertCompletedAndKept(outcome);
            PageAllocatorStats stats = allocator.GetStats();
            Assert.Equal(0, stats.CachedPages);
            Assert.Equal(0, stats.PagesInUse);
            if (call == "Trim")
            {
                Assert.True(trimmed > 0, "the trim released no arena");
                Assert.Equal(0, stats.Arenas);
            }
            else if (call == "DrainPerCpuLists")
            {
                Assert.Equal(stats.TotalPages, stats.FreePages);
            }
        }
        finally
        {
            allocator.Dispose();
        }
    }

    [Fact]
    public void An_interrupt_while_a_cache_closes_its_recycle_slots_is_kept_and_the_slots_leave_the_list()
    {
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 256 * 1024);
        using var kept = new PageFragCache(allocator);
        var cache = new PageFragCache(allocator);
        Assert.True(cache.TryAlloc(100, out PageFragment fragment));
        Assert.Equal(2, allocator.OpenRecyclersForTests);

        Interrupts.Outcome outcome = Interrupts.WhileBlocked([allocator.RecyclersLockForTests], cache.Dispose);

        Interrupts.AssertCompletedAndKept(outcome);
        Assert.Equal(1, allocator.OpenRecyclersForTests);
        PageFragCache.Free(in fragment);
        allocator.DrainPerCpuLists();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void An_interrupt_while_a_trim_unregisters_its_arenas_is_kept_and_every_released_arena_leaves_the_registry()
    {
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 64 * 1024);
        var pages = new List<Page>();
        for (int i = 0; i < 3; i++)
        {
            // Three arenas, all free again.
            Assert.True(allocator.TryAllocPages(4, AllocFlags.None, out Page p));
            pages.Add(p);
        }

        pages.ForEach(allocator.FreePages);
        Assert.Equal(3, allocator.GetStats().Arenas);

        int trimmed = -1;
        Interrupts.Outcome outcome = Interrupts.WhileBlocked([ArenaRegistry.WriteLockForTests], () => trimmed = allocator.Trim());

        Interrupts.AssertCompletedAndKept(outcome);
        Assert.Equal(3, trimmed);
        Assert.Equal(0, allocator.GetStats().Arenas);
        foreach (Page p in pages)
        {
            Assert.False(PageAllocator.TryGetPage(p.Address, out _), "a released arena is still in the registry");
        }

        // The allocator grows again, and its new arena is found by address.
        Assert.True(allocator.TryAllocPages(0, AllocFlags.None, out Page fresh));
        Assert.True(PageAllocator.TryGetPage(fresh.Address, out _));
        allocator.FreePages(fresh);
        allocator.DrainPerCpuLists();
        Leaks.AssertNone(allocator);
    }
}
