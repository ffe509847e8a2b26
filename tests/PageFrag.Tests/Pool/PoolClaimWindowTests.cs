using PageFrag.Pages;
using PageFrag.Pool;
using PageFrag.Tests.Infrastructure;
using static PageFrag.Tests.Pool.PoolTesting;

namespace PageFrag.Tests.Pool;

/// <summary>
/// Session 8, trust: the window of a losing double put. A put's release decision is two steps
/// (<see cref="PagePoolCore.TryClaimGeneration"/>, then <see cref="PagePoolCore.ConfirmClaim"/>); these tests run
/// the steps of a late put apart, with the winner's whole release, the block's next owners and a caller's
/// reference in between, as a preempted thread would see them. A late put must never take a page that has left the
/// pool, and never write a generation it does not own.
/// </summary>
public class PoolClaimWindowTests
{
    [Fact]
    public void A_late_double_put_never_takes_the_page_once_another_pool_holds_it()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        PagePool first = NewPool(allocator);
        Assert.True(first.TryAllocNetMem(out NetMem stale));
        ref PageDescriptor d = ref stale.Descriptor;

        // The late put passed its handle check and its unref; then the winner's put gives the page back (the pool
        // is disposed, so the page leaves it) before the late put's claim.
        first.Dispose();
        first.PutFullPage(stale, allowDirect: false);
        Assert.True(first.IsReleased);
        Assert.Null(d.Pool);

        bool claimed = PagePoolCore.TryClaimGeneration(ref d, stale.Generation);

        // Another pool takes the block before the late put reads the pool field.
        PagePool second = NewPool(allocator);
        NetMem taken = TakeBlock(second, stale);
        int generation = d.Generation;

        // The late put must lose: it may not go on to recycle (or give back) the second pool's page.
        if (claimed)
        {
            Assert.Throws<PageFragDoubleFreeException>(() => PagePoolCore.ConfirmClaim(ref stale.Descriptor, stale.Generation));
        }

        Assert.Same(second.Core, d.Pool);
        Assert.Equal(generation, d.Generation);
        Assert.Equal(taken.Generation, d.Generation);

        // The second pool's page is intact: its own put recycles it, a second put of that handle throws.
        second.PutFullPage(taken, allowDirect: false);
        Assert.Throws<PageFragDoubleFreeException>(() => second.PutFullPage(taken, allowDirect: false));
        DisposeAndAssertNoLeak(second, allocator);
    }

    [Fact]
    public void A_late_double_put_does_not_change_the_generation_of_a_block_the_pool_gave_back()
    {
        // Case (a) of the session 7 note: a claim that moved the generation of a free block could be undone after
        // the allocator's plain generation write (read before the claim, written after it), leaving the block's
        // new owner with a handle one generation above its page. A late claim must not touch a block that left.
        using PageAllocator allocator = Leaks.NewAllocator();
        PagePool pool = NewPool(allocator);
        Assert.True(pool.TryAllocNetMem(out NetMem stale));
        ref PageDescriptor d = ref stale.Descriptor;
        pool.Dispose();
        pool.PutFullPage(stale, allowDirect: false);
        Assert.Equal(0, Volatile.Read(ref d.RefCount));
        int generation = d.Generation;

        Assert.False(PagePoolCore.TryClaimGeneration(ref d, stale.Generation));
        Assert.Equal(generation, d.Generation);

        // The block's next owner gets a generation above every earlier one, and its handle is good.
        Assert.True(allocator.TryAllocPages(0, AllocFlags.None, out Page page));
        Assert.Same(((HostPageArea)stale.Owner).Arena, page.Arena);
        Assert.Equal(stale.Index, page.Index);
        Assert.True(page.Generation > stale.Generation, $"the next owner's generation {page.Generation} should be above the pool's {stale.Generation}");

        allocator.FreePages(page);
        Assert.True(pool.IsReleased);
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_late_double_put_on_a_page_a_caller_still_holds_is_undone_and_the_callers_reference_stays_good()
    {
        // A page that leaves its pool while a caller holds a reference (Page.AddRef) keeps the pool's generation, so
        // that the caller's handle stays valid. A late put's claim on it succeeds for an instant: it must be undone
        // exactly, and the caller must then free its reference normally.
        using PageAllocator allocator = Leaks.NewAllocator();
        PagePool pool = NewPool(allocator);
        Assert.True(pool.TryAllocNetMem(out NetMem stale));
        Assert.True(stale.TryGetPage(out Page held));
        held.AddRef();
        ref PageDescriptor d = ref stale.Descriptor;

        pool.PutFullPage(stale, allowDirect: false); // not recyclable (a caller holds it): it leaves the pool
        Assert.Null(d.Pool);
        Assert.Equal(1, Volatile.Read(ref d.RefCount));
        Assert.Equal(stale.Generation, d.Generation);

        if (PagePoolCore.TryClaimGeneration(ref d, stale.Generation))
        {
            Assert.Throws<PageFragDoubleFreeException>(() => PagePoolCore.ConfirmClaim(ref stale.Descriptor, stale.Generation));
        }

        Assert.Equal(stale.Generation, d.Generation);
        Assert.Equal(1, Volatile.Read(ref d.RefCount));
        allocator.FreePages(held);
        Assert.Throws<PageFragDoubleFreeException>(() => pool.PutFullPage(stale, allowDirect: false));
        DisposeAndAssertNoLeak(pool, allocator);
    }

    [Fact]
    public void A_late_double_put_loses_when_the_page_went_through_a_caller_and_the_allocator_to_another_pool()
    {
        // The caller's reference kept the page at the pool's generation after it left; the caller frees it, the
        // block goes back to the allocator at that generation, and another pool takes it before the late put reads
        // the pool field.
        using PageAllocator allocator = Leaks.NewAllocator();
        PagePool first = NewPool(allocator);
        Assert.True(first.TryAllocNetMem(out NetMem stale));
        Assert.True(stale.TryGetPage(out Page held));
        held.AddRef();
        ref PageDescriptor d = ref stale.Descriptor;
        first.PutFullPage(stale, allowDirect: false);
        allocator.FreePages(held);
        Assert.Equal(0, Volatile.Read(ref d.RefCount));

        bool claimed = PagePoolCore.TryClaimGeneration(ref d, stale.Generation);
        PagePool second = NewPool(allocator);
        NetMem taken = TakeBlock(second, stale);
        if (claimed)
        {
            Assert.Throws<PageFragDoubleFreeException>(() => PagePoolCore.ConfirmClaim(ref stale.Descriptor, stale.Generation));
        }

        Assert.Same(second.Core, d.Pool);
        Assert.Equal(taken.Generation, d.Generation);
        second.PutFullPage(taken, allowDirect: false);
        first.Dispose();
        Assert.True(first.IsReleased);
        DisposeAndAssertNoLeak(second, allocator);
    }

    [Fact]
    public void Racing_double_puts_of_pages_that_leave_the_pool_let_exactly_one_win_and_leak_nothing()
    {
        // The same window with real threads: two puts of one handle on a pool whose pages leave it (a caller holds
        // each page, so none is recyclable), while a third thread keeps taking blocks through another pool.
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 256 * 1024);
        PagePool pool = NewPool(allocator);
        PagePool other = NewPool(allocator, poolSize: 16);
        NetMem shared = default;
        Page held = default;
        int wins = 0;
        int rounds = 0;
        using var stop = new CancellationTokenSource(TimeSpan.FromSeconds(1.5));
        Exception? churnFailure = null;
        var churn = new Thread(() =>
        {
            try
            {
                other.SetOwnerThread();
                while (!stop.IsCancellationRequested)
                {
                    if (other.TryAllocNetMem(out NetMem m))
                    {
                        other.PutFullPage(m, allowDirect: false);
                    }
                }
            }
            catch (Exception e)
            {
                churnFailure = e;
            }
        });

        int roundWins = 0;
        void Put()
        {
            try
            {
                pool.PutFullPage(shared, allowDirect: false);
                Interlocked.Increment(ref roundWins);
            }
            catch (PageFragDoubleFreeException)
            {
            }
            catch (ArgumentException)
            {
                // The page already left the pool before this put's check: a refused put too.
            }
        }

        churn.Start();
        using (var gate = new RaceGate(Put))
        {
            while (!stop.IsCancellationRequested || rounds < 200)
            {
                Assert.True(pool.TryAllocNetMem(out shared));
                Assert.True(shared.TryGetPage(out held));
                held.AddRef();
                roundWins = 0;
                gate.Race(Put);
                Assert.Equal(1, roundWins);
                allocator.FreePages(held);
                wins++;
                rounds++;
                if (rounds > 200_000)
                {
                    break;
                }
            }

            stop.Cancel();
            gate.Dispose();
            Assert.Null(gate.Failure);
        }

        churn.Join();
        Assert.Null(churnFailure);
        Assert.Equal(rounds, wins);
        other.Dispose();
        Assert.True(other.IsReleased);
        DisposeAndAssertNoLeak(pool, allocator);
    }

    /// <summary>Allocates from <paramref name="pool"/> until it hands out the block of <paramref name="old"/>; puts the others back.</summary>
    private static NetMem TakeBlock(PagePool pool, NetMem old)
    {
        var others = new List<NetMem>();
        try
        {
            for (int i = 0; i < 64; i++)
            {
                Assert.True(pool.TryAllocNetMem(out NetMem m));
                if (ReferenceEquals(m.Owner, old.Owner) && m.Index == old.Index)
                {
                    return m;
                }

                others.Add(m);
            }

            Assert.Fail("the pool never handed out the freed block");
            return default;
        }
        finally
        {
            foreach (NetMem m in others)
            {
                pool.PutFullPage(m, allowDirect: false);
            }
        }
    }
}
