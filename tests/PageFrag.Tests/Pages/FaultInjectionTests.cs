using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;
using static PageFrag.Tests.Pages.PageTestKit;

namespace PageFrag.Tests.Pages;

public class FaultInjectionTests
{
    [Fact]
    public void FailOrderAtLeast_fails_that_order_and_above_before_any_arena_is_created()
    {
        var faults = new FaultInjection { FailOrderAtLeast = 2 };
        using PageAllocator allocator = Leaks.NewAllocator(faults: faults);
        Assert.Same(faults, allocator.FaultInjection);

        AssertAllocFails(allocator, 4);
        Assert.Equal(0, allocator.GetStats().Arenas);

        Page zero = Alloc(allocator, 0);
        Page one = Alloc(allocator, 1);
        PageAllocatorStats before = allocator.GetStats();
        AssertAllocFails(allocator, 2);
        AssertAllocFails(allocator, 3);
        AssertUnchanged(before, allocator.GetStats(), addedFailures: 2);

        Assert.Equal(3, faults.Injected);
        Assert.Equal(3, allocator.GetStats().Failures);
        allocator.FreePages(zero);
        allocator.FreePages(one);
        AssertClean(allocator);
    }

    [Fact]
    public void FailEveryNth_fails_exactly_every_nth_attempt()
    {
        var faults = new FaultInjection { FailEveryNth = 3 };
        using PageAllocator allocator = Leaks.NewAllocator(faults: faults);
        var pattern = new List<bool>();
        for (int i = 0; i < 9; i++)
        {
            bool ok = allocator.TryAllocPages(i % 5, AllocFlags.None, out Page page);
            pattern.Add(ok);
            if (ok)
            {
                allocator.FreePages(page);
            }
        }

        Assert.Equal([true, true, false, true, true, false, true, true, false], pattern);
        Assert.Equal(3, faults.Injected);
        PageAllocatorStats stats = allocator.GetStats();
        Assert.Equal(3, stats.Failures);
        Assert.Equal(6, stats.Allocations);
        AssertClean(allocator);
    }

    [Fact]
    public void FailEveryNth_of_1_fails_every_attempt_including_reserve_and_opportunistic_ones()
    {
        var faults = new FaultInjection { FailEveryNth = 1 };
        using PageAllocator allocator = Leaks.NewAllocator(faults: faults);
        AssertAllocFails(allocator, 0);
        AssertAllocFails(allocator, 0, AllocFlags.MayUseReserve);
        AssertAllocFails(allocator, 3, AllocFlags.Opportunistic);
        Assert.Equal(3, faults.Injected);
        Assert.Equal(0, allocator.GetStats().Arenas);
        AssertClean(allocator);
    }

    [Fact]
    public void Attempts_failed_by_order_do_not_advance_the_every_nth_counter()
    {
        var faults = new FaultInjection { FailOrderAtLeast = 3, FailEveryNth = 2 };
        using PageAllocator allocator = Leaks.NewAllocator(faults: faults);
        int[] orders = [0, 3, 0, 0, 3, 0];
        var pattern = new List<bool>();
        foreach (int order in orders)
        {
            bool ok = allocator.TryAllocPages(order, AllocFlags.None, out Page page);
            pattern.Add(ok);
            if (ok)
            {
                allocator.FreePages(page);
            }
        }

        // Counted attempts are the order-0 ones only: the 2nd and 4th of them fail.
        Assert.Equal([true, false, false, true, false, false], pattern);
        Assert.Equal(4, faults.Injected);
        AssertClean(allocator);
    }

    [Fact]
    public void Fault_injection_can_be_swapped_at_run_time_and_removed_to_recover()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        Assert.Null(allocator.FaultInjection);
        Page kept = Alloc(allocator, 0);

        var everything = new FaultInjection { FailOrderAtLeast = 0 };
        allocator.FaultInjection = everything;
        for (int order = 0; order <= allocator.MaxOrder; order++)
        {
            AssertAllocFails(allocator, order);
        }

        Assert.Equal(5, everything.Injected);

        var highOnly = new FaultInjection { FailOrderAtLeast = 4 };
        allocator.FaultInjection = highOnly;
        Page three = Alloc(allocator, 3);
        AssertAllocFails(allocator, 4);
        Assert.Equal(1, highOnly.Injected);
        Assert.Equal(5, everything.Injected);

        allocator.FaultInjection = null;
        Page four = Alloc(allocator, 4);
        Assert.Equal(6, allocator.GetStats().Failures);

        allocator.FreePages(kept);
        allocator.FreePages(three);
        allocator.FreePages(four);
        AssertClean(allocator);
    }

    [Fact]
    public void The_defaults_inject_nothing()
    {
        var faults = new FaultInjection();
        Assert.Equal(int.MaxValue, faults.FailOrderAtLeast);
        Assert.Equal(0, faults.FailEveryNth);
        using PageAllocator allocator = Leaks.NewAllocator(faults: faults);
        for (int i = 0; i < 50; i++)
        {
            allocator.FreePages(Alloc(allocator, i % 5));
        }

        Assert.Equal(0, faults.Injected);
        AssertClean(allocator);
    }
}
