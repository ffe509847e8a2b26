using System.Runtime.CompilerServices;
using PageFrag.Pages;
using static PageFrag.Tests.Pages.PageTestKit;

namespace PageFrag.Tests.Pages;

public class ZeroAllocationTests
{
    private const int Iterations = 5000;

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(3)]
    [InlineData(4)]
    public void Allocating_and_freeing_a_block_in_a_warm_loop_allocates_nothing_on_the_GC_heap(int order)
    {
        // One arena at most: a thread moved to another CPU must refill by draining, never by growing an arena.
        using PageAllocator allocator = OneArena();
        int rounds = 0;
        AssertSteadyStateAllocatesNothing(() =>
        {
            Loop(allocator, order, Iterations);
            rounds++;
        });

        Assert.Equal((long)rounds * Iterations, allocator.GetStats().Allocations);
        AssertClean(allocator);
    }

    [Fact]
    public void Reference_counting_and_address_lookups_allocate_nothing()
    {
        using PageAllocator allocator = OneArena();
        Page page = Alloc(allocator, 3);
        AssertSteadyStateAllocatesNothing(() => RefLoop(allocator, page, Iterations));
        Assert.Equal(1, page.RefCount);
        allocator.FreePages(page);
        AssertClean(allocator);
    }

    [Fact]
    public void Failing_at_the_limit_and_by_injected_fault_allocates_nothing()
    {
        using PageAllocator allocator = OneArena();
        Page whole = Alloc(allocator, 4);
        var faults = new FaultInjection { FailEveryNth = 1 };
        AssertSteadyStateAllocatesNothing(() => FailLoop(allocator, faults, Iterations));
        allocator.FaultInjection = null;
        allocator.FreePages(whole);
        AssertClean(allocator);
    }

    // Fully optimised from the start, so that the loops themselves do not move through the tiers.
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Loop(PageAllocator allocator, int order, int count)
    {
        for (int i = 0; i < count; i++)
        {
            if (!allocator.TryAllocPages(order, AllocFlags.None, out Page page))
            {
                throw new InvalidOperationException("allocation failed");
            }

            page.Span[0] = (byte)i;
            allocator.FreePages(page);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void RefLoop(PageAllocator allocator, Page page, int count)
    {
        for (int i = 0; i < count; i++)
        {
            page.AddRef();
            if (!PageAllocator.TryGetPage(page.Address + 9000, out Page found) || found != page)
            {
                throw new InvalidOperationException("lookup failed");
            }

            allocator.FreePages(found);
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void FailLoop(PageAllocator allocator, FaultInjection faults, int count)
    {
        for (int i = 0; i < count; i++)
        {
            // Alternately the limit (16 pages in use already) and the injected fault refuse the block.
            allocator.FaultInjection = (i & 1) == 0 ? null : faults;
            if (allocator.TryAllocPages(i % 5, AllocFlags.None, out _))
            {
                throw new InvalidOperationException("allocation succeeded");
            }
        }
    }
}
