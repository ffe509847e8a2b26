using PageFrag.Pages;
using PageFrag.Pool;
using PageFrag.Providers;
using PageFrag.Tests.Infrastructure;
using static PageFrag.Tests.Pool.PoolTesting;

namespace PageFrag.Tests.Providers;

/// <summary>
/// A region provider's lock is taken after a chunk's release was claimed, and when the freed pool unbinds: a
/// <see cref="Thread.Interrupt"/> while waiting for it must not lose the chunk or leave the pool bound (docs/interrupts.md).
/// </summary>
public class ProviderInterruptTests
{
    [Fact]
    public void An_interrupt_while_a_put_returns_a_chunk_to_its_region_is_kept_and_the_chunk_goes_back()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        byte[] region = new byte[16 * 4096];
        using RegionMemoryProvider provider = RegionMemoryProvider.FromArray(region);
        PagePool pool = NewPool(allocator, provider: provider, flags: PagePoolFlags.DmaMap);
        Assert.True(pool.TryAllocNetMem(out NetMem held));
        pool.Dispose();
        Assert.False(pool.IsReleased);

        // The put of the page in flight gives its chunk back to the region (and, the last one, frees the pool).
        Interrupts.Outcome outcome = Interrupts.WhileBlocked([provider.LockForTests], () => pool.PutFullPage(held, false));

        Interrupts.AssertCompletedAndKept(outcome);
        Assert.True(pool.IsReleased);
        Assert.Null(provider.BoundPool);
        Assert.Equal(16, provider.FreeChunks);
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void An_interrupt_while_a_freed_pool_unbinds_from_its_region_is_kept_and_the_region_can_be_disposed()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        byte[] region = new byte[16 * 4096];
        RegionMemoryProvider provider = RegionMemoryProvider.FromArray(region);
        PagePool pool = NewPool(allocator, provider: provider, flags: PagePoolFlags.DmaMap);

        // Nothing was allocated: the owner's Dispose frees the pool at once and unbinds it from the region.
        Interrupts.Outcome outcome = Interrupts.WhileBlocked([provider.LockForTests], () =>
        {
            pool.SetOwnerThread();
            pool.Dispose();
        });

        Interrupts.AssertCompletedAndKept(outcome);
        Assert.True(pool.IsReleased);
        Assert.Null(provider.BoundPool);
        provider.Dispose();
        Leaks.AssertNone(allocator);
    }
}
