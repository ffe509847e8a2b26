using System.Runtime.InteropServices;
using PageFrag.Pages;
using PageFrag.Pool;
using PageFrag.Providers;
using PageFrag.Tests.Frag;
using PageFrag.Tests.Infrastructure;
using static PageFrag.Tests.Pool.PoolTesting;

namespace PageFrag.Tests.Pool;

/// <summary>
/// The rows of <c>docs/bad-input.md</c> for the page pool that the older bad-input tests did not pin down to the
/// message: every invalid option, and the handle and count checks of the put paths. Each checks the exception's
/// type, parameter and message, that nothing changed, that the pool still works, and that no page leaked.
/// </summary>
public class PagePoolCatalogueBadInputTests
{
    public static TheoryData<string, string, string> BadOptions() => new()
    {
        { "order 11", "Order", "Order must be between 0 and the allocator's MaxOrder (4)." },
        { "pool size 0", "PoolSize", "PoolSize must be between 1 and 32768." },
        { "pool size 32769", "PoolSize", "PoolSize must be between 1 and 32768." },
        { "node -2", "Node", "Node must be -1 (no preference) or a node number." },
        { "unknown flags", "Flags", "Unknown page pool flags." },
        { "negative offset", "MaxLen", "Offset and MaxLen must be non-negative and Offset + MaxLen at most the page size (4096)." },
        { "offset + max len past the page", "MaxLen", "Offset and MaxLen must be non-negative and Offset + MaxLen at most the page size (4096)." },
        { "sync without map", "Flags", "DmaSyncForDevice requires DmaMap: only mapped pages can be synced." },
        { "sync without max len", "MaxLen", "DmaSyncForDevice requires MaxLen > 0 (the bytes synced per recycle)." },
        { "unknown alloc flags", "AllocFlags", "Unknown allocation flags." },
        { "zero retry period", "ReleaseRetryPeriod", "ReleaseRetryPeriod must be positive and below 24 days." },
        { "retry period of 30 days", "ReleaseRetryPeriod", "ReleaseRetryPeriod must be positive and below 24 days." },
        { "zero warning interval", "StallWarningInterval", "StallWarningInterval must be positive." },
    };

    [Theory]
    [MemberData(nameof(BadOptions))]
    public void Every_invalid_option_is_rejected_by_the_constructor_with_its_name_and_the_rule(string bad, string param, string message)
    {
        // 64 KiB arenas: MaxOrder 4.
        using PageAllocator allocator = Leaks.NewAllocator();
        PagePoolOptions options = bad switch
        {
            "order 11" => new() { Allocator = allocator, Order = 11 },
            "pool size 0" => new() { Allocator = allocator, PoolSize = 0 },
            "pool size 32769" => new() { Allocator = allocator, PoolSize = 32769 },
            "node -2" => new() { Allocator = allocator, Node = -2 },
            "unknown flags" => new() { Allocator = allocator, Flags = (PagePoolFlags)8 },
            "negative offset" => new() { Allocator = allocator, Offset = -1 },
            "offset + max len past the page" => new() { Allocator = allocator, Offset = 100, MaxLen = 4000 },
            "sync without map" => new() { Allocator = allocator, Flags = PagePoolFlags.DmaSyncForDevice, MaxLen = 100 },
            "sync without max len" => new() { Allocator = allocator, Flags = PagePoolFlags.DmaMap | PagePoolFlags.DmaSyncForDevice },
            "unknown alloc flags" => new() { Allocator = allocator, AllocFlags = (AllocFlags)8 },
            "zero retry period" => new() { Allocator = allocator, ReleaseRetryPeriod = TimeSpan.Zero },
            "retry period of 30 days" => new() { Allocator = allocator, ReleaseRetryPeriod = TimeSpan.FromDays(30) },
            _ => new() { Allocator = allocator, StallWarningInterval = TimeSpan.Zero },
        };

        ArgumentException e = Assert.ThrowsAny<ArgumentException>(() => new PagePool(options));
        Assert.Equal(param, e.ParamName);
        Assert.StartsWith(message, e.Message, StringComparison.Ordinal);
        Assert.Equal(bad == "sync without map" ? typeof(ArgumentException) : typeof(ArgumentOutOfRangeException), e.GetType());

        // Nothing was taken, and a pool with good options works on the same allocator.
        Assert.Equal(0, allocator.PagesInUse);
        PagePool pool = NewPool(allocator);
        Assert.True(pool.TryAlloc(100, out PagePoolBuffer b));
        b.Free();
        DisposeAndAssertNoLeak(pool, allocator);
    }

    [Fact]
    public void A_node_below_minus_one_is_rejected_and_the_preferred_node_stays()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        PagePool pool = NewPool(allocator);
        pool.SetNode(0);
        FragKit.Throws<ArgumentOutOfRangeException>(() => pool.SetNode(-2), "node", "The node must be -1 (the host's node) or a node number.");
        Assert.Equal(0, pool.Node);
        DisposeAndAssertNoLeak(pool, allocator);
    }

    [Fact]
    public void A_dma_sync_size_below_minus_one_is_rejected_by_every_put_and_the_page_keeps_its_reference()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        PagePool pool = NewPool(allocator);
        Assert.True(pool.TryAllocNetMem(out NetMem m));
        const string Rule = "dmaSyncSize must be -1 (all of MaxLen) or non-negative.";
        FragKit.Throws<ArgumentOutOfRangeException>(() => pool.PutPage(m, -2, allowDirect: true), "dmaSyncSize", Rule);
        FragKit.Throws<ArgumentOutOfRangeException>(() => pool.PutUnrefedNetMem(m, -2, allowDirect: true), "dmaSyncSize", Rule);
        Assert.Equal(1, m.PpRefCount);
        Assert.Equal(0, pool.GetStats().RecycleCached);

        pool.PutPage(m, -1, allowDirect: true);
        Assert.Equal(1, pool.GetStats().RecycleCached);
        DisposeAndAssertNoLeak(pool, allocator);
    }

    [Fact]
    public void A_fragment_count_above_two_to_the_62_is_rejected_and_the_page_stays_whole()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        PagePool pool = NewPool(allocator);
        Assert.True(pool.TryAllocNetMem(out NetMem m));
        FragKit.Throws<ArgumentOutOfRangeException>(() => pool.FragmentNetMem(m, (1L << 62) + 1), "count", "The count must be between 1 and 2^62.");
        FragKit.Throws<ArgumentOutOfRangeException>(() => pool.FragmentNetMem(m, -1), "count", "The count must be between 1 and 2^62.");
        FragKit.Throws<ArgumentOutOfRangeException>(() => pool.UnrefNetMem(m, -5), "count", "The count must be positive.");
        Assert.Equal(1, m.PpRefCount);
        pool.RecycleDirect(m);
        DisposeAndAssertNoLeak(pool, allocator);
    }

    [Fact]
    public void Empty_handles_are_rejected_by_every_pool_entry_point_with_the_parameter_named()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        PagePool pool = NewPool(allocator);
        const string Empty = "The handle is empty: it came from a failed or default allocation.";
        FragKit.Throws<ArgumentException>(() => pool.PutPage(default, -1, true), "netmem", Empty);
        FragKit.Throws<ArgumentException>(() => pool.PutFullPage(default, false), "netmem", Empty);
        FragKit.Throws<ArgumentException>(() => pool.RecycleDirect(default), "netmem", Empty);
        FragKit.Throws<ArgumentException>(() => pool.FragmentNetMem(default, 2), "netmem", Empty);
        FragKit.Throws<ArgumentException>(() => pool.UnrefNetMem(default, 1), "netmem", Empty);
        FragKit.Throws<ArgumentException>(() => pool.PutUnrefedNetMem(default, -1, true), "netmem", Empty);
        FragKit.Throws<ArgumentException>(() => pool.PutBuffer(default, true), "buffer", Empty);
        FragKit.Throws<ArgumentException>(() => PagePool.Free(default), "buffer", "The buffer is empty: it came from a failed or default allocation.");
        FragKit.Throws<InvalidOperationException>(() => _ = default(NetMem).Address, null, "The netmem is empty");
        FragKit.Throws<InvalidOperationException>(() => _ = default(PagePoolBuffer).Span.Length, null, "The netmem is empty");

        Assert.True(pool.TryAllocFrag(64, out PagePoolBuffer b));
        b.Free();
        DisposeAndAssertNoLeak(pool, allocator);
    }

    [Fact]
    public void A_page_that_is_not_a_pool_page_is_refused_by_the_pools_puts()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        PagePool pool = NewPool(allocator);
        Assert.True(pool.TryAllocNetMem(out NetMem m));
        pool.RecycleDirect(m);
        pool.Dispose();
        Assert.True(pool.IsReleased);

        // The page left the pool: any put of the old handle is a double put, told as such.
        PageFragDoubleFreeException e = FragKit.Throws<PageFragDoubleFreeException>(() => pool.UnrefNetMem(m, 1), null,
            "The memory (netmem) is not held by a page pool: it was already returned, or never came from one.");
        Assert.NotNull(e);
        FragKit.Throws<PageFragDoubleFreeException>(() => pool.FragmentNetMem(m, 2), null, "is not held by a page pool");
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void The_array_segment_of_a_buffer_in_native_memory_is_refused_and_its_span_still_works()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        nint native = NativeMemoryAllocate(8 * 4096);
        try
        {
            using (var region = new RegionMemoryProvider(native, 8 * 4096))
            {
                PagePool pool = NewPool(allocator, provider: region);
                Assert.True(pool.TryAlloc(100, out PagePoolBuffer b));
                FragKit.Throws<InvalidOperationException>(() => _ = b.ArraySegment, null, "The buffer's memory is not backed by an array.");
                b.Span.Fill(7);
                Assert.Equal(7, b.Memory.Span[99]);
                b.Free();
                pool.Dispose();
                Assert.True(pool.IsReleased);
            }

            Leaks.AssertNone(allocator);
        }
        finally
        {
            NativeMemoryFree(native);
        }
    }

    private static unsafe nint NativeMemoryAllocate(int bytes) => (nint)NativeMemory.AlignedAlloc((nuint)bytes, 4096);

    private static unsafe void NativeMemoryFree(nint pointer) => NativeMemory.AlignedFree((void*)pointer);
}
