using System.Buffers;
using PageFrag.Buffers;
using PageFrag.Frag;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;
using static PageFrag.Tests.Buffers.BufferTestSupport;

namespace PageFrag.Tests.Buffers;

/// <summary>
/// Session 9's attacker's review of <see cref="PageFragMemoryPool"/>'s buffer parking (issue 14): ways for a second
/// party to free or keep a pool buffer's memory behind its owner's back, windows in which two returns of one owner could
/// both give memory back, and the page epoch's moves.
/// </summary>
public class ParkingReviewTests
{
    private static unsafe nint AddressOf(IMemoryOwner<byte> owner)
    {
        using MemoryHandle pin = owner.Memory.Pin();
        return (nint)pin.Pointer;
    }

    private static PageFragMemoryPool NewPool(PageAllocator allocator, int maxBufferSize = PageFragMemoryPoolOptions.DefaultMaxBufferSize) =>
        new(new PageFragMemoryPoolOptions { Allocator = allocator, MaxBufferSize = maxBufferSize });

    // ------------------------------------------------------------------ a pool buffer's page reached by address

    [Fact]
    public void A_dedicated_block_rented_from_the_pool_cannot_be_freed_through_its_page_found_by_address()
    {
        using PageAllocator allocator = WarmAllocator(arenaSize: 256 * 1024);
        using (PageFragMemoryPool pool = NewPool(allocator, maxBufferSize: 64 * 1024))
        {
            IMemoryOwner<byte> owner = pool.Rent(64 * 1024); // above the cache's 32 KiB: a block of its own
            owner.Memory.Span.Fill(5);
            long inUse = allocator.PagesInUse;
            Assert.True(PageAllocator.TryGetPage(AddressOf(owner), out Page page));

            // The block is the owner's: freeing it here would give memory the renter still uses to the next allocation.
            InvalidOperationException e = Assert.Throws<InvalidOperationException>(() => allocator.FreePages(page));
            Assert.Contains("return it through its owner", e.Message);
            Assert.Equal(inUse, allocator.PagesInUse);

            // Nothing else can be given the renter's bytes: a second block is elsewhere, and the first keeps its bytes.
            IMemoryOwner<byte> second = pool.Rent(64 * 1024);
            Assert.NotEqual(AddressOf(owner), AddressOf(second));
            second.Memory.Span.Fill(6);
            Assert.True(owner.Memory.Span.IndexOfAnyExcept((byte)5) < 0);
            second.Dispose();
            owner.Dispose();
            Assert.Equal(pool.GetStats().Rents, pool.GetStats().Returns);
        }

        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_reference_taken_on_a_pool_block_is_the_only_one_FreePages_drops_and_the_block_outlives_the_owner_until_it_goes()
    {
        using PageAllocator allocator = WarmAllocator(arenaSize: 256 * 1024);
        using (PageFragMemoryPool pool = NewPool(allocator, maxBufferSize: 64 * 1024))
        {
            IMemoryOwner<byte> owner = pool.Rent(64 * 1024);
            Assert.True(PageAllocator.TryGetPage(AddressOf(owner), out Page page));
            page.AddRef();
            allocator.FreePages(page); // the reference AddRef took
            Assert.Throws<InvalidOperationException>(() => allocator.FreePages(page));
            Assert.Equal(16, allocator.PagesInUse);

            // A reference kept past the owner's Dispose keeps the block until the caller drops it.
            page.AddRef();
            owner.Dispose();
            Assert.Equal(16, allocator.PagesInUse);
            allocator.FreePages(page);
            Assert.Equal(0, allocator.PagesInUse);
        }

        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_fragment_page_of_the_pool_found_by_address_refuses_FreePages_rented_or_parked()
    {
        using PageAllocator allocator = WarmAllocator();
        using (PageFragMemoryPool pool = NewPool(allocator))
        {
            IMemoryOwner<byte> owner = pool.Rent(256);
            nint address = AddressOf(owner);
            Assert.True(PageAllocator.TryGetPage(address, out Page page));
            Assert.Throws<InvalidOperationException>(() => allocator.FreePages(page));
            owner.Dispose(); // parked with its live fragment
            Assert.Equal(1, ((FragmentMemoryOwner)owner).Home.ParkedCount);
            Assert.Throws<InvalidOperationException>(() => allocator.FreePages(page));
            Assert.Throws<ArgumentException>(() => PageFragCache.Free(address));

            IMemoryOwner<byte> again = pool.Rent(256);
            Assert.Same(owner, again);
            again.Memory.Span.Fill(3);
            again.Dispose();
            pool.Trim();
        }

        Leaks.AssertNone(allocator);
    }

    // ------------------------------------------------------------------ a Dispose elsewhere against the renting thread's full-list path

    // Holds a fragment's state byte in Releasing, as a stale release in progress does (PageFragCache.Release's first
    // half): every release of the fragment waits until PutBack.
    private readonly struct HeldByte
    {
        private readonly byte[] _states;
        private readonly int _granule;
        private readonly byte _live;

        public HeldByte(PageFragment fragment)
        {
            _states = fragment.Arena!.FragStates;
            _granule = Arena.StateIndex(_states, fragment.ArenaOffset);
            _live = Arena.LiveTag(fragment.Generation, fragment.ArenaOffset);
            Assert.True(Arena.TryBeginRelease(_states, _granule, _live), "the fragment is not live");
        }

        public void PutBack() => Arena.EndRelease(_states, _granule, _live);
    }

    private static void WaitFor(Func<bool> condition, string what, int milliseconds = 10_000)
    {
        if (!SpinWait.SpinUntil(condition, milliseconds))
        {
            Assert.Fail("timed out waiting for " + what);
        }
    }

    /// <summary>
    /// The renting thread's return with a full parked list decides on the fragment's release and advances the count only
    /// after it; a <c>Dispose</c> on another thread decides on the count. When the renting thread's re-read of the count
    /// comes before the other's swap, both go on: the renting thread releases the fragment, stashes the owner and may rent
    /// it again (a new fragment) before the other thread reads the owner's fragment. The other thread then freed the new
    /// renter's fragment and stashed the rented owner (before the fix: it read the fragment after its decision). Here the
    /// renting thread's release waits on a held state byte (a stale release in progress) and the other thread stalls after
    /// its decision (the test hook), so the interleaving is exact.
    /// </summary>
    [Fact]
    public void A_Dispose_elsewhere_that_wins_the_count_while_the_renting_thread_releases_the_fragment_never_frees_the_next_rent()
    {
        using PageAllocator allocator = WarmAllocator();
        using (PageFragMemoryPool pool = NewPool(allocator))
        {
            IMemoryOwner<byte>? victim = null;
            IMemoryOwner<byte>? rentedAgain = null;
            Exception? homeFailure = null, finalDispose = null, otherOutcome = null;
            using var ready = new ManualResetEventSlim();
            using var go = new ManualResetEventSlim();
            using var rerented = new ManualResetEventSlim();
            using var otherDone = new ManualResetEventSlim();
            using var decided = new ManualResetEventSlim();
            using var resume = new ManualResetEventSlim();
            var home = new Thread(() =>
            {
                try
                {
                    // Eight buffers parked (the list is full), then the victim, all on the cache's current page.
                    var parked = new IMemoryOwner<byte>[8];
                    for (int i = 0; i < parked.Length; i++)
                    {
                        parked[i] = pool.Rent(256);
                    }

                    victim = pool.Rent(256);
                    foreach (IMemoryOwner<byte> p in parked)
                    {
                        p.Dispose();
                    }

                    ready.Set();
                    go.Wait();
                    victim.Dispose(); // the full-list path: waits on the held byte after its re-read of the count

                    // Another size: not served by the parked buffers, so the stash's newest owner (the victim) comes back.
                    rentedAgain = pool.Rent(512);
                    rentedAgain.Memory.Span.Fill(0x5A);
                    rerented.Set();
                    otherDone.Wait();
                    Assert.True(rentedAgain.Memory.Span.IndexOfAnyExcept((byte)0x5A) < 0, "the new renter's bytes changed");
                    try
                    {
                        rentedAgain.Dispose();
                    }
                    catch (Exception e)
                    {
                        finalDispose = e;
                    }
                }
                catch (Exception e)
                {
                    homeFailure = e;
                    ready.Set();
                    rerented.Set();
                }
            });

            home.Start();
            Assert.True(ready.Wait(10_000));
            Assert.Null(homeFailure);
            var owner = (FragmentMemoryOwner)victim!;
            Assert.Equal(8, owner.Home.ParkedCount);
            var held = new HeldByte(owner.ParkedFragment);
            Thread? other = null;
            try
            {
                FragmentMemoryOwner.AfterDecideForTests = o =>
                {
                    if (ReferenceEquals(o, owner))
                    {
                        decided.Set();
                        resume.Wait(10_000);
                    }
                };

                go.Set();

                // The renting thread is inside its return (busy), past the count's re-read, waiting on the byte.
                WaitFor(() => Volatile.Read(ref owner.Home.Busy) != 0, "the renting thread's return");
                Thread.Sleep(100);
                other = new Thread(() =>
                {
                    try
                    {
                        owner.Dispose();
                    }
                    catch (Exception e)
                    {
                        otherOutcome = e;
                    }
                });
                other.Start();
                Assert.True(decided.Wait(10_000), "the other thread's Dispose did not win the count");

                // The renting thread's release goes through; it stashes the victim and rents it again (another fragment).
                held.PutBack();
                Assert.True(rerented.Wait(10_000));
                Assert.Null(homeFailure);
                Assert.Same(victim, rentedAgain);
            }
            finally
            {
                resume.Set();
                other?.Join();
                FragmentMemoryOwner.AfterDecideForTests = null;
                otherDone.Set();
                home.Join();
            }

            Assert.Null(homeFailure);

            // Exactly one of the two returns gave the victim's buffer back: the renting thread's (it released the fragment).
            Assert.IsType<ObjectDisposedException>(otherOutcome);
            Assert.Null(finalDispose);
            PageFragMemoryPoolStats stats = pool.GetStats();
            Assert.Equal(stats.Rents, stats.Returns);
            Assert.Equal(0, stats.OutstandingBytes);
            pool.Trim();
            Assert.Equal(0, allocator.PagesInUse);
        }

        Leaks.AssertNone(allocator);
    }

    // ------------------------------------------------------------------ the page epoch

    /// <summary>
    /// A refill that throws after the cache let its page go (here the allocator was disposed: <c>TryAllocBlock</c> throws
    /// <see cref="ObjectDisposedException"/> once the cache has left its page; a thread interrupt or an out-of-memory
    /// while growing an arena do the same) left the page epoch where it was: a buffer of the old page given back on the
    /// renting thread was then parked, keeping a page the cache no longer holds, and served the next rent from it.
    /// </summary>
    [Fact]
    public void A_refill_that_throws_after_the_cache_left_its_page_moves_the_epoch_so_nothing_of_the_old_page_is_parked()
    {
        PageAllocator allocator = WarmAllocator();
        var pool = NewPool(allocator);
        IMemoryOwner<byte> earlier = pool.Rent(256);
        var owner = (FragmentMemoryOwner)earlier;
        Assert.Equal(32768, allocator.PagesInUse * 4096);
        allocator.Dispose();

        // The page has no room for 32 KiB: the cache leaves it, then the allocator refuses a new one by throwing.
        Assert.Throws<ObjectDisposedException>(() => pool.Rent(32768));
        Assert.Equal(0, owner.Home.Cache.CurrentPageSize);

        earlier.Dispose();
        Assert.Equal(0, owner.Home.ParkedCount);
        Assert.Equal(0, pool.GetStats().OutstandingBytes);
        pool.Dispose();
    }
}
