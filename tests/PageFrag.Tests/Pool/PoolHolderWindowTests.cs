using PageFrag.Pages;
using PageFrag.Pool;
using PageFrag.Tests.Infrastructure;
using static PageFrag.Tests.Pool.PoolTesting;

namespace PageFrag.Tests.Pool;

/// <summary>
/// Session 9, trust: callers who hold a pool page through <see cref="Page.AddRef"/> while the pool admits or releases
/// it. A put's release claim moves the page's generation for a few instructions; a caller's <c>FreePages</c> or
/// <c>AddRef</c> in that instant must wait for the claim's outcome, never be refused (a refused free leaves the page in
/// use for good). Real threads with a start gate; each race runs about 1.5 s and ends checking that nothing leaked.
/// </summary>
public class PoolHolderWindowTests
{
    private static readonly TimeSpan RaceBudget = TimeSpan.FromSeconds(1.5);

    // The claim's window is a few dozen instructions; the gate starts both sides within a few hundred nanoseconds. A
    // delay that sweeps 0 to 63 spin steps over the rounds moves the second side across the window.
    private static void Sweep(int round) => Thread.SpinWait(round & 63);

    [Fact]
    public void A_holders_free_racing_the_pools_own_last_put_is_never_refused_and_nothing_leaks()
    {
        // No misuse at all: the caller took its reference while it held the buffer, then frees it while the buffer's
        // put (the page's last pool reference) releases the page from the pool.
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 256 * 1024);
        PagePool pool = NewPool(allocator);
        NetMem shared = default;
        Page held = default;
        Exception? putFailure = null;
        int rounds = 0;
        using var stop = new CancellationTokenSource(RaceBudget);
        using (var gate = new RaceGate(() =>
        {
            Sweep(rounds);
            allocator.FreePages(held);
        }))
        {
            while ((!stop.IsCancellationRequested || rounds < 200) && rounds < 500_000 && gate.Failure is null && putFailure is null)
            {
                Assert.True(pool.TryAllocNetMem(out shared));
                Assert.True(shared.TryGetPage(out held));
                held.AddRef();
                gate.Race(() => putFailure = Record.Exception(() => pool.PutFullPage(shared, allowDirect: false)));
                rounds++;
            }

            gate.Dispose();
            Assert.Null(gate.Failure);
        }

        Assert.Null(putFailure);
        DisposeAndAssertNoLeak(pool, allocator);
    }

    [Fact]
    public void A_holders_free_racing_a_late_double_put_is_never_refused_and_exactly_one_put_wins()
    {
        // review8b's window with real threads: two puts of one handle (a double put, the misuse) and the free of a caller
        // who holds the page. The misuse may throw at its author; it must not make the holder's correct free fail.
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 256 * 1024);
        PagePool pool = NewPool(allocator);
        NetMem shared = default;
        Page held = default;
        int wins = 0;
        int rounds = 0;
        void Put()
        {
            try
            {
                pool.PutFullPage(shared, allowDirect: false);
                Interlocked.Increment(ref wins);
            }
            catch (PageFragDoubleFreeException)
            {
            }
            catch (ArgumentException)
            {
                // The page had already left the pool at this put's check: refused as well.
            }
        }

        using var stop = new CancellationTokenSource(RaceBudget);
        using (var holder = new RaceGate(() =>
        {
            Sweep(rounds);
            allocator.FreePages(held);
        }))
        using (var second = new RaceGate(Put))
        {
            while ((!stop.IsCancellationRequested || rounds < 200) && rounds < 500_000 && holder.Failure is null && second.Failure is null)
            {
                Assert.True(pool.TryAllocNetMem(out shared));
                Assert.True(shared.TryGetPage(out held));
                held.AddRef();
                wins = 0;
                holder.Race(() => second.Race(Put));
                Assert.Equal(1, wins);
                rounds++;
            }

            holder.Dispose();
            second.Dispose();
            Assert.Null(holder.Failure);
            Assert.Null(second.Failure);
        }

        DisposeAndAssertNoLeak(pool, allocator);
    }

    [Fact]
    public void A_holders_AddRef_racing_the_pools_last_put_is_never_refused_and_nothing_leaks()
    {
        // The holder takes a second reference while the buffer's put releases the page, then frees both.
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 256 * 1024);
        PagePool pool = NewPool(allocator);
        NetMem shared = default;
        Page held = default;
        Exception? putFailure = null;
        int rounds = 0;
        using var stop = new CancellationTokenSource(RaceBudget);
        using (var gate = new RaceGate(() =>
        {
            Sweep(rounds);
            held.AddRef();
        }))
        {
            while ((!stop.IsCancellationRequested || rounds < 200) && rounds < 500_000 && gate.Failure is null && putFailure is null)
            {
                Assert.True(pool.TryAllocNetMem(out shared));
                Assert.True(shared.TryGetPage(out held));
                held.AddRef();
                gate.Race(() => putFailure = Record.Exception(() => pool.PutFullPage(shared, allowDirect: false)));
                if (gate.Failure is null)
                {
                    allocator.FreePages(held);
                    allocator.FreePages(held);
                }

                rounds++;
            }

            gate.Dispose();
            Assert.Null(gate.Failure);
        }

        Assert.Null(putFailure);
        DisposeAndAssertNoLeak(pool, allocator);
    }

    [Fact]
    public void A_reference_taken_by_address_while_a_pool_admits_the_block_can_always_be_freed()
    {
        // A caller finds a block by address (an address it kept from the block's earlier use) and takes a reference
        // while a pool takes the block from the allocator. Whatever the order, a reference AddRef granted must be one
        // FreePages accepts through the same handle: the admission must not move the generation under it.
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 256 * 1024);
        PagePool pool = NewPool(allocator, order: 1, poolSize: 1);
        Assert.True(pool.TryAllocNetMem(out NetMem first));
        nint address = first.Address;
        pool.Dispose();
        pool.PutFullPage(first, allowDirect: false);
        Assert.True(pool.IsReleased);

        int rounds = 0;
        int sameBlock = 0;
        void TakeByAddress()
        {
            Sweep(rounds);
            for (int i = 0; i < 8; i++)
            {
                Assert.True(PageAllocator.TryGetPage(address, out Page page));
                try
                {
                    page.AddRef();
                }
                catch (InvalidOperationException)
                {
                    continue; // free, or the handle went stale before the reference: refused, nothing taken
                }

                allocator.FreePages(page); // must never be refused: the reference was granted through this handle
            }
        }

        using var stop = new CancellationTokenSource(RaceBudget);
        using (var gate = new RaceGate(TakeByAddress))
        {
            while ((!stop.IsCancellationRequested || rounds < 200) && rounds < 200_000 && gate.Failure is null)
            {
                // A pool per round: its first allocation takes a block from the allocator (the watched one, from the
                // per-CPU list, most of the time) and admits it; the put after Dispose gives it back.
                PagePool round = NewPool(allocator, order: 1, poolSize: 1);
                gate.Race(() =>
                {
                    Assert.True(round.TryAllocNetMem(out NetMem m));
                    if (m.Address == address)
                    {
                        sameBlock++;
                    }

                    round.Dispose();
                    round.PutFullPage(m, allowDirect: false);
                });
                Assert.True(round.IsReleased);
                rounds++;
            }

            gate.Dispose();
            Assert.Null(gate.Failure);
        }

        Assert.True(sameBlock > 0, "the pools never took the watched block again");
        Leaks.AssertNone(allocator);
    }
}
