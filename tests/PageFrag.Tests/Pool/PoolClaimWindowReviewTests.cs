using PageFrag.Pages;
using PageFrag.Pool;
using PageFrag.Tests.Infrastructure;
using static PageFrag.Tests.Pool.PoolTesting;

namespace PageFrag.Tests.Pool;

/// <summary>
/// Review of the release claim (session 8): a late double put's claim on a page that left its pool while a caller
/// holds a reference moves the generation for an instant; the caller's own, legitimate free must not be refused in
/// that instant (it would leave the page in use for good, a leak caused by someone else's misuse).
/// </summary>
public sealed class PoolClaimWindowReviewTests
{
    [Fact]
    public void A_holders_free_inside_a_late_puts_claim_window_is_not_refused_and_nothing_leaks()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        PagePool pool = NewPool(allocator);
        Assert.True(pool.TryAllocNetMem(out NetMem stale));
        Assert.True(stale.TryGetPage(out Page held));
        held.AddRef();
        ref PageDescriptor d = ref stale.Descriptor;

        pool.PutFullPage(stale, allowDirect: false); // a caller holds it: it leaves the pool at the handle's generation
        Assert.Null(d.Pool);

        // The late put's first step succeeds (count > 0, generation matches); the holder frees (on its own thread) before
        // its second step. Session 9: the free waits for the claim's outcome instead of being refused.
        Assert.True(PagePoolCore.TryClaimGeneration(ref d, stale.Generation));
        Exception? holderFree = null;
        var holder = new Thread(() => holderFree = Record.Exception(() => allocator.FreePages(held)));
        holder.Start();
        Assert.False(holder.Join(100), "the holder's free should wait while the late put's claim is pending");
        Assert.Throws<PageFragDoubleFreeException>(() => PagePoolCore.ConfirmClaim(ref stale.Descriptor, stale.Generation));
        Assert.True(holder.Join(TimeSpan.FromSeconds(10)));

        Assert.Null(holderFree);
        DisposeAndAssertNoLeak(pool, allocator);
    }

    [Fact]
    public void A_holders_free_inside_the_pools_own_last_put_claim_waits_for_the_page_to_leave_and_is_not_refused()
    {
        // No misuse: the buffer's own last put claims the page (generation one up, mark set) while a caller holds it;
        // the caller's free lands before the put lets the page leave the pool. Before session 9 it was refused
        // (the claim's generation did not match the caller's handle) and the page stayed in use for good.
        using PageAllocator allocator = Leaks.NewAllocator();
        PagePool pool = NewPool(allocator);
        Assert.True(pool.TryAllocNetMem(out NetMem netmem));
        Assert.True(netmem.TryGetPage(out Page held));
        held.AddRef();
        ref PageDescriptor d = ref netmem.Descriptor;

        // The put's steps, run apart: its unref reached zero, then its claim and confirmation.
        Assert.Equal(0, pool.Core.UnrefNetMem(netmem, 1));
        Assert.True(PagePoolCore.TryClaimGeneration(ref d, netmem.Generation));
        int count = PagePoolCore.ConfirmClaim(ref netmem.Descriptor, netmem.Generation);
        Assert.Equal(2, count);

        Exception? holderFree = null;
        var holder = new Thread(() => holderFree = Record.Exception(() => allocator.FreePages(held)));
        holder.Start();
        Assert.False(holder.Join(100), "the holder's free should wait while the put's claim is pending");
        pool.Core.ReturnClaimedPage(netmem, count);
        Assert.True(holder.Join(TimeSpan.FromSeconds(10)));

        Assert.Null(holderFree);
        Assert.Null(d.Pool);
        DisposeAndAssertNoLeak(pool, allocator);
    }

    [Fact]
    public void A_holders_AddRef_and_a_handle_made_inside_a_late_puts_claim_window_get_the_callers_generation()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        PagePool pool = NewPool(allocator);
        Assert.True(pool.TryAllocNetMem(out NetMem stale));
        Assert.True(stale.TryGetPage(out Page held));
        held.AddRef();
        ref PageDescriptor d = ref stale.Descriptor;
        pool.PutFullPage(stale, allowDirect: false);

        Assert.True(PagePoolCore.TryClaimGeneration(ref d, stale.Generation));
        Exception? failure = null;
        Page found = default;
        var holder = new Thread(() => failure = Record.Exception(() =>
        {
            held.AddRef();
            Assert.True(PageAllocator.TryGetPage(stale.Address, out found));
        }));
        holder.Start();
        Assert.False(holder.Join(100), "the holder's AddRef should wait while the late put's claim is pending");
        Assert.Throws<PageFragDoubleFreeException>(() => PagePoolCore.ConfirmClaim(ref stale.Descriptor, stale.Generation));
        Assert.True(holder.Join(TimeSpan.FromSeconds(10)));
        Assert.Null(failure);

        // The handle made by address has the holders' generation, and frees one of their two references.
        Assert.Equal(2, held.RefCount);
        allocator.FreePages(found);
        allocator.FreePages(held);
        Assert.Throws<PageFragDoubleFreeException>(() => allocator.FreePages(held));
        DisposeAndAssertNoLeak(pool, allocator);
    }

    [Fact]
    public void An_interrupt_of_a_holder_waiting_for_a_claim_is_kept_for_its_next_blocking_call_and_the_free_completes()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        PagePool pool = NewPool(allocator);
        Assert.True(pool.TryAllocNetMem(out NetMem stale));
        Assert.True(stale.TryGetPage(out Page held));
        held.AddRef();
        ref PageDescriptor d = ref stale.Descriptor;
        pool.PutFullPage(stale, allowDirect: false);

        Assert.True(PagePoolCore.TryClaimGeneration(ref d, stale.Generation));
        Exception? free = null;
        bool interruptKept = false;
        var holder = new Thread(() =>
        {
            free = Record.Exception(() => allocator.FreePages(held));
            try
            {
                Thread.Sleep(10_000);
            }
            catch (ThreadInterruptedException)
            {
                interruptKept = true;
            }
        });
        holder.Start();
        Assert.False(holder.Join(100));
        holder.Interrupt();
        Assert.False(holder.Join(100), "the interrupted free should still wait for the claim's outcome");
        Assert.Throws<PageFragDoubleFreeException>(() => PagePoolCore.ConfirmClaim(ref stale.Descriptor, stale.Generation));
        Assert.True(holder.Join(TimeSpan.FromSeconds(10)));

        Assert.Null(free);
        Assert.True(interruptKept, "the interrupt should be raised again at the thread's next blocking call");
        DisposeAndAssertNoLeak(pool, allocator);
    }

    [Fact]
    public void A_put_on_a_thread_with_a_pending_interrupt_ends_its_claim_and_keeps_the_interrupt()
    {
        // Nothing between a claim and its end blocks, so Thread.Interrupt cannot strike there: the mark always ends.
        using PageAllocator allocator = Leaks.NewAllocator();
        PagePool pool = NewPool(allocator);
        Assert.True(pool.TryAllocNetMem(out NetMem recycled));
        Assert.True(pool.TryAllocNetMem(out NetMem leaving));
        Assert.True(leaving.TryGetPage(out Page held));
        held.AddRef();
        bool interruptKept = false;
        Exception? failure = null;
        var putter = new Thread(() =>
        {
            Thread.CurrentThread.Interrupt();
            failure = Record.Exception(() =>
            {
                pool.PutFullPage(recycled, allowDirect: false);
                pool.PutFullPage(leaving, allowDirect: false);
            });
            try
            {
                Thread.Sleep(10_000);
            }
            catch (ThreadInterruptedException)
            {
                interruptKept = true;
            }
        });
        putter.Start();
        Assert.True(putter.Join(TimeSpan.FromSeconds(10)));
        Assert.Null(failure);
        Assert.True(interruptKept);
        Assert.True(Volatile.Read(ref recycled.Descriptor.RefCount) > 0, "the recycled page's claim mark should be gone");
        Assert.Equal(1, held.RefCount);
        allocator.FreePages(held);
        DisposeAndAssertNoLeak(pool, allocator);
    }
}
