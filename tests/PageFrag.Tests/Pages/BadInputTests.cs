using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;
using static PageFrag.Tests.Pages.PageTestKit;

namespace PageFrag.Tests.Pages;

public class BadInputTests
{
    private const string ArenaSizeMessage = "ArenaSize must be a power of two from 32768 (one order-3 block) to 1073741824 bytes.";
    private const string ReserveMessage = "ReserveBytes must be a non-negative multiple of 4096 below the effective memory limit.";

    [Theory]
    [InlineData(0)]
    [InlineData(-65536)]
    [InlineData(int.MinValue)]
    [InlineData(4096)]
    [InlineData(16384)]
    [InlineData(32767)]
    [InlineData(65535)]
    [InlineData(65536 + 4096)]
    [InlineData((1 << 30) + 4096)]
    [InlineData(int.MaxValue)]
    public void An_arena_size_that_is_not_a_power_of_two_from_32_KiB_to_1_GiB_is_rejected(int arenaSize)
    {
        ArgumentOutOfRangeException ex = Assert.Throws<ArgumentOutOfRangeException>(
            () => new PageAllocator(new PageAllocatorOptions { ArenaSize = arenaSize }));
        Assert.Equal("ArenaSize", ex.ParamName);
        Assert.Equal(arenaSize, ex.ActualValue);
        Assert.StartsWith(ArenaSizeMessage, ex.Message);
    }

    [Theory]
    [InlineData(32 * 1024, 3)]
    [InlineData(1 << 30, 18)]
    public void The_arena_size_bounds_themselves_are_accepted(int arenaSize, int maxOrder)
    {
        // No memory is taken until the first allocation, so even the 1 GiB bound is cheap to check.
        using var allocator = new PageAllocator(new PageAllocatorOptions { ArenaSize = arenaSize });
        Assert.Equal(maxOrder, allocator.MaxOrder);
        Assert.Equal(0, allocator.GetStats().Arenas);
    }

    [Theory]
    [InlineData(65535)]
    [InlineData(0)]
    [InlineData(-1)]
    [InlineData(long.MinValue)]
    public void A_memory_limit_below_one_arena_is_rejected(long maxBytes)
    {
        ArgumentOutOfRangeException ex = Assert.Throws<ArgumentOutOfRangeException>(
            () => new PageAllocator(new PageAllocatorOptions { ArenaSize = SmallArena, MaxBytes = maxBytes }));
        Assert.Equal("MaxBytes", ex.ParamName);
        Assert.Equal(maxBytes, ex.ActualValue);
        Assert.StartsWith("MaxBytes must be at least one arena (65536 bytes).", ex.Message);
    }

    [Theory]
    [InlineData(65536 + 1000, -4096)]
    [InlineData(65536 + 1000, -1)]
    [InlineData(65536 + 1000, 100)]
    [InlineData(65536 + 1000, 4097)]
    [InlineData(65536 + 1000, 65536)]
    [InlineData(2 * 65536, 2 * 65536)]
    [InlineData(2 * 65536, 3 * 65536)]
    [InlineData(long.MaxValue, -4096)]
    [InlineData(long.MaxValue, 2048)]
    public void A_reserve_that_is_negative_unaligned_or_not_below_the_effective_limit_is_rejected(long maxBytes, long reserveBytes)
    {
        ArgumentOutOfRangeException ex = Assert.Throws<ArgumentOutOfRangeException>(
            () => new PageAllocator(new PageAllocatorOptions { ArenaSize = SmallArena, MaxBytes = maxBytes, ReserveBytes = reserveBytes }));
        Assert.Equal("ReserveBytes", ex.ParamName);
        Assert.Equal(reserveBytes, ex.ActualValue);
        Assert.StartsWith(ReserveMessage, ex.Message);
    }

    [Fact]
    public void The_largest_reserve_below_the_effective_limit_is_accepted()
    {
        // MaxBytes rounds down to one arena (16 pages): a reserve of 15 pages leaves one ordinary page.
        using var allocator = new PageAllocator(new PageAllocatorOptions { ArenaSize = SmallArena, MaxBytes = SmallArena + 1000, ReserveBytes = 15 * 4096 });
        Page ordinary = Alloc(allocator, 0);
        AssertAllocFails(allocator, 0);
        Page reserve = Alloc(allocator, 0, AllocFlags.MayUseReserve);
        Assert.True(reserve.IsPfMemalloc);
        allocator.FreePages(ordinary);
        allocator.FreePages(reserve);
        AssertClean(allocator);
    }

    [Theory]
    [InlineData(-1)]
    [InlineData(int.MinValue)]
    public void A_negative_FailEveryNth_is_rejected(int n)
    {
        ArgumentOutOfRangeException ex = Assert.Throws<ArgumentOutOfRangeException>(() => new FaultInjection { FailEveryNth = n });
        Assert.Equal("FailEveryNth", ex.ParamName);
        Assert.Equal(n, ex.ActualValue);
        Assert.StartsWith("FailEveryNth must be 0 (never) or positive.", ex.Message);
    }

    [Theory]
    [InlineData(-1)]
    [InlineData(5)]
    [InlineData(int.MinValue)]
    [InlineData(int.MaxValue)]
    public void An_order_outside_0_to_MaxOrder_throws_and_the_allocator_still_works(int order)
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        PageAllocatorStats before = allocator.GetStats();
        ArgumentOutOfRangeException ex = Assert.Throws<ArgumentOutOfRangeException>(
            () => allocator.TryAllocPages(order, AllocFlags.None, out _));
        Assert.Equal("order", ex.ParamName);
        Assert.Equal(order, ex.ActualValue);
        Assert.StartsWith("order must be between 0 and 4 (log2 of the arena's page count).", ex.Message);

        // Bad input is not an allocation failure: nothing counted, no arena made.
        AssertUnchanged(before, allocator.GetStats());
        Assert.Equal(0, allocator.GetStats().Arenas);
        allocator.FreePages(Alloc(allocator, 4));
        AssertClean(allocator);
    }

    [Fact]
    public void Disposing_the_shared_allocator_throws_and_it_keeps_working()
    {
        InvalidOperationException ex = Assert.Throws<InvalidOperationException>(PageAllocator.Shared.Dispose);
        Assert.Equal("PageAllocator.Shared cannot be disposed.", ex.Message);

        // Only this test's own page is checked: other tests use the shared allocator in parallel.
        Page page = Alloc(PageAllocator.Shared, 0);
        Assert.Same(PageAllocator.Shared, page.Allocator);
        PageAllocator.Shared.FreePages(page);
    }

    [Fact]
    public void Allocating_after_Dispose_throws_ObjectDisposedException_and_other_calls_stay_safe()
    {
        PageAllocator allocator = Leaks.NewAllocator();
        allocator.FreePages(Alloc(allocator, 0));
        allocator.Dispose();
        allocator.Dispose();

        ObjectDisposedException ex = Assert.Throws<ObjectDisposedException>(() => allocator.TryAllocPages(0, AllocFlags.None, out _));
        Assert.Equal(nameof(PageAllocator), ex.ObjectName);
        Assert.Throws<ObjectDisposedException>(() => allocator.TryAllocPages(4, AllocFlags.Opportunistic, out _));

        Assert.Equal(0, allocator.Trim());
        allocator.DrainPerCpuLists();
        PageAllocatorStats stats = allocator.GetStats();
        Assert.Equal(0, stats.Arenas);
        Assert.Equal(0, stats.Failures);
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Disposing_drops_pages_parked_on_per_CPU_lists_so_the_stats_still_add_up()
    {
        PageAllocator allocator = Leaks.NewAllocator();
        Page held = Alloc(allocator, 0);
        allocator.FreePages(Alloc(allocator, 1));
        Assert.True(allocator.GetStats().CachedPages > 0);

        allocator.Dispose();
        PageAllocatorStats stats = allocator.GetStats();
        Assert.Equal(0, stats.TotalPages);
        Assert.Equal(0, stats.CachedPages);
        Assert.Equal(1, stats.PagesInUse);

        allocator.FreePages(held);
        Leaks.AssertNone(allocator);
    }
}
