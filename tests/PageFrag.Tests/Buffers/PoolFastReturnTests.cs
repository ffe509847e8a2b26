using System.Buffers;
using PageFrag.Buffers;
using PageFrag.Frag;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;
using static PageFrag.Tests.Buffers.BufferTestSupport;

namespace PageFrag.Tests.Buffers;

/// <summary>
/// <c>Dispose</c> on the renting thread takes an inlined path without exception handling (a fragment of the cache's
/// current page back to the cache, the owner onto the slot's stash); every other case takes the slow path with its
/// checks. These tests pin the cases where the two differ: a retired pool, a trim under way, a fragment off the current
/// page, and a lost release.
/// </summary>
public class PoolFastReturnTests
{
    [Fact]
    public void A_Dispose_on_the_renting_thread_after_the_pool_was_disposed_frees_the_memory_and_keeps_no_owner()
    {
        using PageAllocator allocator = WarmAllocator();
        IMemoryOwner<byte> late;
        PageFragMemoryPool.ThreadSlot slot;
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator }))
        {
            late = pool.Rent(256);
            late.Memory.Span.Fill(9);
            slot = ((FragmentMemoryOwner)late).Home;
            Assert.True(slot.IdleOwnerCount > 0);
        }

        // The retirement dropped the idle owners; the late return frees its fragment but stashes nothing in a retired pool.
        Assert.Equal(0, slot.IdleOwnerCount);
        late.Dispose();
        Assert.Equal(0, slot.IdleOwnerCount);
        Assert.Throws<ObjectDisposedException>(() => late.Memory);
        late.Dispose(); // a second Dispose after the return does nothing
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_pool_disposed_from_inside_its_own_busy_slot_takes_no_owner_back_on_that_thread_afterwards()
    {
        using PageAllocator allocator = WarmAllocator();
        var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator });
        IMemoryOwner<byte> late = pool.Rent(256);
        PageFragMemoryPool.ThreadSlot slot = ((FragmentMemoryOwner)late).Home;

        // What a listener called back during a rent would do: the retirement cannot wait for this very thread, so this
        // slot's cache keeps its page and its idle owners; the fast return must still stash nothing afterwards.
        Assert.True(slot.Enter());
        pool.Dispose();
        slot.Exit();
        int idle = slot.IdleOwnerCount;
        late.Dispose();
        Assert.Equal(idle, slot.IdleOwnerCount);
        Assert.Equal(1, pool.GetStats().Returns);

        // The owning thread may still drain its own cache (the pool's Dispose left it alone).
        Assert.True(slot.Enter());
        slot.TrimQuiesced(idleOnly: false);
        slot.Exit();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_Dispose_on_the_renting_thread_waits_while_a_trim_has_the_slot_quiesced()
    {
        using PageAllocator allocator = WarmAllocator();
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator }))
        {
            IMemoryOwner<byte> owner = pool.Rent(256);
            PageFragMemoryPool.ThreadSlot slot = ((FragmentMemoryOwner)owner).Home;

            // The flag a trim sets before it drains the slot's cache as its owner: the return must not touch the cache
            // until it is cleared.
            Volatile.Write(ref slot.Quiesce, 1);
            bool cleared = false;
            var trim = new Thread(() =>
            {
                Thread.Sleep(200);
                Volatile.Write(ref cleared, true);
                Volatile.Write(ref slot.Quiesce, 0);
            });
            trim.Start();
            owner.Dispose();
            Assert.True(Volatile.Read(ref cleared), "the return went ahead while the slot was quiesced");
            trim.Join();
            Assert.Equal(1, pool.GetStats().Returns);
        }

        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_Dispose_on_the_renting_thread_of_a_fragment_off_the_current_page_is_freed_and_the_owner_is_kept()
    {
        using PageAllocator allocator = WarmAllocator(arenaSize: 256 * 1024);
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator }))
        {
            // Eight 4 KiB rents fill the 32 KiB page; the ninth makes the cache take another, so the first eight are off
            // the current page when they come back.
            var owners = new List<IMemoryOwner<byte>>();
            for (int i = 0; i < 9; i++)
            {
                IMemoryOwner<byte> owner = pool.Rent(4096);
                owner.Memory.Span.Fill((byte)(i + 1));
                owners.Add(owner);
            }

            PageFragMemoryPool.ThreadSlot slot = ((FragmentMemoryOwner)owners[0]).Home;
            int idle = slot.IdleOwnerCount;
            foreach (IMemoryOwner<byte> owner in owners)
            {
                owner.Dispose();
            }

            // The ninth, on the current page, is parked with its fragment; the eight others are freed and stashed.
            Assert.Equal(idle + 8, slot.IdleOwnerCount);
            Assert.Equal(1, slot.ParkedCount);
            PageFragMemoryPoolStats stats = pool.GetStats();
            Assert.Equal(9, stats.Returns);
            Assert.Equal(0, stats.OutstandingBytes);
            pool.Trim();
            Assert.Equal(0, allocator.PagesInUse);
        }

        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_lost_decision_on_the_renting_thread_throws_changes_no_count_and_keeps_the_slot_usable()
    {
        using PageAllocator allocator = WarmAllocator();
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator }))
        {
            IMemoryOwner<byte> owner = pool.Rent(256);
            var raw = (FragmentMemoryOwner)owner;
            PageFragMemoryPool.ThreadSlot slot = raw.Home;

            // A Dispose on the renting thread read the rent, then another Dispose won, and the owner was rented again
            // with the same fragment (parked, then taken back): the stalled one resumes on the fast path and must lose.
            var stalled = raw.ReadForDispose();
            owner.Dispose();
            IMemoryOwner<byte> again = pool.Rent(256);
            Assert.Same(owner, again);
            again.Memory.Span.Fill(0x5A);
            int idle = slot.IdleOwnerCount;
            int parked = slot.ParkedCount;

            var e = Assert.Throws<ObjectDisposedException>(() => raw.DisposeAfterStall(stalled));
            Assert.Null(e.InnerException);
            Assert.Equal(idle, slot.IdleOwnerCount);
            Assert.Equal(parked, slot.ParkedCount);
            Assert.Equal(0, slot.Busy);
            Assert.Equal(1, pool.GetStats().Returns);
            Assert.True(again.Memory.Span.IndexOfAnyExcept((byte)0x5A) < 0, "the rent's bytes changed");
            again.Dispose();

            // The slot is not left busy: a trim does not wait, and rents and returns go on.
            pool.Trim();
            for (int i = 0; i < 100; i++)
            {
                IMemoryOwner<byte> next = pool.Rent(256);
                next.Memory.Span.Fill(1);
                next.Dispose();
            }

            Assert.Equal(102, pool.GetStats().Returns);
        }

        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Returns_on_the_renting_thread_while_another_thread_trims_and_reads_statistics_lose_nothing()
    {
        using PageAllocator allocator = WarmAllocator(arenaSize: 1 << 20);
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator }))
        {
            using var start = new Barrier(2);
            var deadline = DateTime.UtcNow.AddSeconds(1.5);
            long rounds = 0, trims = 0, corrupted = 0;
            var renter = new Thread(() =>
            {
                var window = new Queue<(IMemoryOwner<byte> Owner, byte Tag)>();
                start.SignalAndWait();
                for (int i = 0; DateTime.UtcNow < deadline || i < 1000; i++)
                {
                    byte tag = (byte)(1 + i % 250);
                    IMemoryOwner<byte> owner = pool.Rent(64 + (i * 97 % 4000));
                    owner.Memory.Span.Fill(tag);
                    window.Enqueue((owner, tag));
                    while (window.Count > (i % 3))
                    {
                        var (o, t) = window.Dequeue();
                        if (o.Memory.Span.ContainsAnyExcept(t))
                        {
                            corrupted++;
                        }

                        o.Dispose();
                    }

                    rounds++;
                }

                while (window.Count > 0)
                {
                    window.Dequeue().Owner.Dispose();
                }
            });
            renter.Start();
            start.SignalAndWait();
            while (renter.IsAlive)
            {
                pool.Trim(idleOnly: trims % 3 == 0);
                Assert.True(pool.GetStats().OutstandingBytes >= 0);
                trims++;
            }

            renter.Join();
            Assert.Equal(0, corrupted);
            Assert.True(trims > 10, $"only {trims} trims ran");
            PageFragMemoryPoolStats stats = pool.GetStats();
            Assert.Equal(rounds, stats.Rents);
            Assert.Equal(stats.Rents, stats.Returns);
            Assert.Equal(0, stats.OutstandingBytes);
            pool.Trim();
            Assert.Equal(0, allocator.PagesInUse);
        }

        Leaks.AssertNone(allocator);
    }
}
