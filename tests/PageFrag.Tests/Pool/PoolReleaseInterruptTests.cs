using PageFrag.Pages;
using PageFrag.Pool;
using PageFrag.Tests.Infrastructure;
using static PageFrag.Tests.Pool.PoolTesting;

namespace PageFrag.Tests.Pool;

/// <summary>
/// The page pool's release and admission wait for locks in the middle of a change: Dispose after it claimed the owner's
/// side, after it decided to wait for the owner, the last page back when it frees the pool, an admission with its page
/// taken. A <see cref="Thread.Interrupt"/> during such a wait must not leave the change half-done (docs/interrupts.md).
/// </summary>
public class PoolReleaseInterruptTests
{
    [Fact]
    public void An_interrupt_while_the_owners_Dispose_waits_for_the_release_lock_is_kept_and_the_cache_goes_back()
    {
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 1 << 20);
        PagePool pool = NewPool(allocator);
        var pages = new List<NetMem>();
        for (int i = 0; i < 20; i++)
        {
            Assert.True(pool.TryAllocNetMem(out NetMem m));
            pages.Add(m);
        }

        pages.ForEach(pool.RecycleDirect);
        Assert.True(pool.CachedPages > 0);

        // The interrupted thread becomes the owner, so its Dispose gives the owner's side (the cache) back at once.
        Interrupts.Outcome outcome = Interrupts.WhileBlocked([pool.Core.ReleaseLockForTests], () =>
        {
            pool.SetOwnerThread();
            pool.Dispose();
        });

        Interrupts.AssertCompletedAndKept(outcome);
        Assert.Equal(0, pool.CachedPages);
        Assert.True(pool.IsReleased, "the pool kept its cache's pages");
        allocator.DrainPerCpuLists();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void An_interrupt_while_a_Dispose_on_another_thread_waits_to_register_its_retry_is_kept_and_the_pool_is_watched()
    {
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 1 << 20);
        PagePool pool = NewPool(allocator, retry: TimeSpan.FromMilliseconds(20));
        Assert.True(pool.TryAllocNetMem(out NetMem m));
        pool.RecycleDirect(m);

        // This thread (the owner) is alive, so a Dispose on another thread leaves the owner's side and registers the
        // pool with the retry worker; it waits here for the worker's lock.
        Interrupts.Outcome outcome = Interrupts.WhileBlocked([PoolReleaseWorker.GateForTests], pool.Dispose);

        Interrupts.AssertCompletedAndKept(outcome);

        // The owner gives its side back; the pool is freed and leaves the worker.
        Assert.Equal(0, pool.RetryRelease());
        Assert.True(pool.IsReleased);
        allocator.DrainPerCpuLists();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void An_interrupt_while_a_Dispose_on_another_thread_waits_for_the_release_lock_is_kept()
    {
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 1 << 20);
        PagePool pool = NewPool(allocator, retry: TimeSpan.FromMilliseconds(20));
        Assert.True(pool.TryAllocNetMem(out NetMem m));
        pool.RecycleDirect(m);

        Interrupts.Outcome outcome = Interrupts.WhileBlocked([pool.Core.ReleaseLockForTests], pool.Dispose);

        Interrupts.AssertCompletedAndKept(outcome);
        Assert.Equal(0, pool.RetryRelease());
        Assert.True(pool.IsReleased);
        allocator.DrainPerCpuLists();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void An_interrupt_while_the_last_page_back_frees_the_pool_is_kept_and_the_put_completes()
    {
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 1 << 20);
        PagePool pool = NewPool(allocator);
        Assert.True(pool.TryAllocNetMem(out NetMem held));
        pool.Dispose();
        Assert.False(pool.IsReleased);

        // The put of the last page in flight frees the pool, and takes it off the retry worker's list on the way.
        Interrupts.Outcome outcome = Interrupts.WhileBlocked([PoolReleaseWorker.GateForTests], () => pool.PutFullPage(held, false));

        Interrupts.AssertCompletedAndKept(outcome);
        Assert.True(pool.IsReleased);
        allocator.DrainPerCpuLists();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void An_interrupt_while_an_admission_waits_for_the_list_of_areas_is_kept_and_the_page_is_the_pools()
    {
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 1 << 20);
        PagePool pool = NewPool(allocator);
        NetMem page = default;

        // The interrupted thread becomes the owner; its first allocation admits pages of a new area.
        Interrupts.Outcome outcome = Interrupts.WhileBlocked([pool.Core.KnownAreasLockForTests], Monitor.Enter, Monitor.Exit, () =>
        {
            pool.SetOwnerThread();
            Assert.True(pool.TryAllocNetMem(out page));
        });

        Interrupts.AssertCompletedAndKept(outcome);
        pool.SetOwnerThread();
        pool.RecycleDirect(page);
        DisposeAndAssertNoLeak(pool, allocator);
    }
}
