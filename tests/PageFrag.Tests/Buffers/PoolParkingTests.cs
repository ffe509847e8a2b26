using System.Buffers;
using System.Diagnostics;
using System.Runtime.CompilerServices;
using PageFrag.Buffers;
using PageFrag.Frag;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;
using static PageFrag.Tests.Buffers.BufferTestSupport;

namespace PageFrag.Tests.Buffers;

/// <summary>
/// Issue 14, aim 3: a buffer given back on the thread that rented it, while its fragment is on the cache's current page,
/// is parked with its fragment (still live) and handed to that thread's next rent of the same size. The pool's pages
/// refuse a free by address, so the owner's count is the only way to decide a return: a stale <c>Dispose</c> of an
/// earlier rent cannot reach the next one, a trim or the pool's <c>Dispose</c> gives every parked fragment back, and a
/// rent that moves the cache to a new page releases the parked fragments of the old one.
/// </summary>
public class PoolParkingTests
{
    private static unsafe nint AddressOf(IMemoryOwner<byte> owner)
    {
        using MemoryHandle pin = owner.Memory.Pin();
        return (nint)pin.Pointer;
    }

    [Fact]
    public void A_buffer_given_back_on_its_renting_thread_serves_the_next_rent_of_its_size_and_a_trim_gives_it_back()
    {
        using PageAllocator allocator = WarmAllocator();
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator }))
        {
            IMemoryOwner<byte> first = pool.Rent(4096);
            nint address = AddressOf(first);
            first.Memory.Span.Fill(7);
            first.Dispose();
            Assert.Throws<ObjectDisposedException>(() => first.Memory);
            PageFragMemoryPoolStats parked = pool.GetStats();
            Assert.Equal(32768, parked.PooledBytes); // the page's free space and the parked 4096 bytes
            Assert.Equal(0, parked.OutstandingBytes);

            IMemoryOwner<byte> again = pool.Rent(4096);
            Assert.Same(first, again);
            Assert.Equal(address, AddressOf(again));
            Assert.Equal(4096, again.Memory.Length);

            // Another size is carved from the page, not served by the parked buffer of another length.
            IMemoryOwner<byte> small = pool.Rent(256);
            Assert.NotEqual(address, AddressOf(small));
            Assert.Equal(256, small.Memory.Length);
            small.Dispose();
            again.Dispose();

            PageFragMemoryPoolStats stats = pool.GetStats();
            Assert.Equal(3, stats.Rents);
            Assert.Equal(3, stats.Returns);
            Assert.Equal(4096 + 4096 + 256, stats.RentedBytes);
            Assert.Equal(0, stats.OutstandingBytes);
            Assert.Equal(32768, stats.AllocatedBytes);

            Assert.Equal(32768, pool.Trim());
            Assert.Equal(0, allocator.PagesInUse);
            Assert.Equal(0, pool.GetStats().PooledBytes);
            Assert.Equal(0, ((FragmentMemoryOwner)first).Home.ParkedCount);

            // After the trim the pool carves afresh and still works.
            IMemoryOwner<byte> after = pool.Rent(4096);
            after.Memory.Span.Fill(1);
            after.Dispose();
        }

        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_rent_takes_the_parked_buffer_of_its_size_from_below_the_newest()
    {
        using PageAllocator allocator = WarmAllocator();
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator }))
        {
            IMemoryOwner<byte> a = pool.Rent(1024), b = pool.Rent(512), c = pool.Rent(256);
            nint addressA = AddressOf(a), addressB = AddressOf(b), addressC = AddressOf(c);
            a.Dispose();
            b.Dispose();
            c.Dispose();
            var slot = ((FragmentMemoryOwner)a).Home;
            Assert.Equal(3, slot.ParkedCount);

            IMemoryOwner<byte> again1 = pool.Rent(1024);
            IMemoryOwner<byte> again2 = pool.Rent(512);
            IMemoryOwner<byte> again3 = pool.Rent(256);
            Assert.Equal(addressA, AddressOf(again1));
            Assert.Equal(addressB, AddressOf(again2));
            Assert.Equal(addressC, AddressOf(again3));
            Assert.Equal(0, slot.ParkedCount);
            again1.Dispose();
            again2.Dispose();
            again3.Dispose();
            Assert.Equal(6, pool.GetStats().Returns);
        }

        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void At_most_eight_buffers_are_parked_per_thread_and_the_rest_go_back_to_the_cache()
    {
        using PageAllocator allocator = WarmAllocator();
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator }))
        {
            var owners = new List<IMemoryOwner<byte>>();
            for (int i = 0; i < 12; i++)
            {
                owners.Add(pool.Rent(64));
            }

            owners.ForEach(o => o.Dispose());
            var slot = ((FragmentMemoryOwner)owners[0]).Home;
            Assert.Equal(8, slot.ParkedCount);
            Assert.Equal(8 * 64, slot.ParkedBytes);
            PageFragMemoryPoolStats stats = pool.GetStats();
            Assert.Equal(12, stats.Returns);
            Assert.Equal(0, stats.OutstandingBytes);
            Assert.Equal(32768 - (12 * 64) + (8 * 64), stats.PooledBytes);
            Assert.Equal(32768 - (12 * 64) + (8 * 64), pool.Trim());
            Assert.Equal(0, slot.ParkedCount);
            Assert.Equal(0, allocator.PagesInUse);
        }

        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_rent_that_moves_the_cache_to_a_new_page_releases_the_buffers_parked_on_the_old_one()
    {
        using PageAllocator allocator = WarmAllocator(arenaSize: 256 * 1024);
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator }))
        {
            // Seven 4 KiB rents and a 2 KiB one; the 2 KiB one is given back and parked on the first page.
            var held = new List<IMemoryOwner<byte>>();
            for (int i = 0; i < 7; i++)
            {
                held.Add(pool.Rent(4096));
            }

            IMemoryOwner<byte> parked = pool.Rent(2048);
            parked.Dispose();
            var slot = ((FragmentMemoryOwner)parked).Home;
            Assert.Equal(1, slot.ParkedCount);

            // A 4 KiB rent no longer fits: the cache takes a second page, and the parked fragment leaves the first one.
            IMemoryOwner<byte> next = pool.Rent(4096);
            Assert.Equal(0, slot.ParkedCount);
            held.ForEach(o => o.Dispose());

            // Every fragment of the first page is back, so the page went back to the allocator: parking kept nothing of it.
            Assert.Equal(8, allocator.PagesInUse);
            next.Dispose();
            PageFragMemoryPoolStats stats = pool.GetStats();
            Assert.Equal(stats.Rents, stats.Returns);
            Assert.Equal(0, stats.OutstandingBytes);
            pool.Trim();
            Assert.Equal(0, allocator.PagesInUse);
        }

        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_refill_that_fails_releases_the_parked_buffers_and_the_pool_works_again_once_memory_is_back()
    {
        using PageAllocator allocator = WarmAllocator(arenaSize: 256 * 1024);
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator }))
        {
            var held = new List<IMemoryOwner<byte>>();
            for (int i = 0; i < 7; i++)
            {
                held.Add(pool.Rent(4096));
            }

            IMemoryOwner<byte> parked = pool.Rent(2048);
            parked.Dispose();
            var slot = ((FragmentMemoryOwner)parked).Home;
            Assert.Equal(1, slot.ParkedCount);

            // The next 8 KiB rent needs a new page and the allocator refuses every page: the cache let its page go, so
            // the parked fragment leaves too, and the rent fails with nothing else changed.
            allocator.FaultInjection = new FaultInjection { FailEveryNth = 1 };
            Assert.Throws<InsufficientMemoryException>(() => pool.Rent(8192)); // more than the parked buffer can grow to
            Assert.Equal(0, slot.ParkedCount);
            allocator.FaultInjection = null;

            held.ForEach(o => o.Dispose());
            Assert.Equal(0, allocator.PagesInUse);
            IMemoryOwner<byte> after = pool.Rent(4096);
            after.Memory.Span.Fill(2);
            after.Dispose();
            PageFragMemoryPoolStats stats = pool.GetStats();
            Assert.Equal(stats.Rents, stats.Returns);
            Assert.Equal(0, stats.OutstandingBytes);
            pool.Trim();
            Assert.Equal(0, allocator.PagesInUse);
        }

        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_slot_whose_rents_never_find_their_size_stops_parking_for_256_returns_then_tries_again()
    {
        using PageAllocator allocator = WarmAllocator();
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator }))
        {
            IMemoryOwner<byte> first = pool.Rent(64);
            var slot = ((FragmentMemoryOwner)first).Home;
            IMemoryOwner<byte> previous = pool.Rent(128);
            first.Dispose();
            Assert.Equal(1, slot.ParkedCount);

            // Sixteen rents in a row of sizes nothing parked has, while a later buffer is still out after every parked
            // one (so none can be resized in place): the slot gives its parked buffers back and stops parking.
            for (int i = 0; i < 16; i++)
            {
                Assert.NotEqual(0, slot.ParkedCount);
                IMemoryOwner<byte> next = pool.Rent(64 * (i + 3));
                previous.Dispose();
                previous = next;
            }

            Assert.Equal(0, slot.ParkedCount);

            // For 256 returns (the last one in the loop, this one and 254 more) nothing is parked; then the next return
            // parks again.
            previous.Dispose();
            Assert.Equal(0, slot.ParkedCount);
            for (int i = 0; i < 254; i++)
            {
                pool.Rent(64).Dispose();
                Assert.Equal(0, slot.ParkedCount);
            }

            pool.Rent(64).Dispose();
            Assert.Equal(1, slot.ParkedCount);
            PageFragMemoryPoolStats stats = pool.GetStats();
            Assert.Equal(stats.Rents, stats.Returns);
            Assert.Equal(0, stats.OutstandingBytes);
            pool.Trim();
            Assert.Equal(0, allocator.PagesInUse);
        }

        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_buffer_given_back_off_the_current_page_is_not_parked()
    {
        using PageAllocator allocator = WarmAllocator(arenaSize: 256 * 1024);
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator }))
        {
            IMemoryOwner<byte> old = pool.Rent(4096);
            var rest = new List<IMemoryOwner<byte>>();
            for (int i = 0; i < 8; i++)
            {
                rest.Add(pool.Rent(4096));
            }

            var slot = ((FragmentMemoryOwner)old).Home;
            old.Dispose();
            Assert.Equal(0, slot.ParkedCount);
            rest.ForEach(o => o.Dispose());
            Assert.Equal(1, slot.ParkedCount); // only the one on the current page
            pool.Trim();
            Assert.Equal(0, allocator.PagesInUse);
        }

        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_free_by_address_of_a_pool_buffer_is_refused_rented_or_parked_and_the_pool_is_unharmed()
    {
        using PageAllocator allocator = WarmAllocator();
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator }))
        {
            IMemoryOwner<byte> owner = pool.Rent(256);
            owner.Memory.Span.Fill(0x5A);
            nint address = AddressOf(owner);

            var rented = Assert.Throws<ArgumentException>(() => PageFragCache.Free(address));
            Assert.Equal("address", rented.ParamName);
            Assert.Contains("PageFragMemoryPool's page, which refuses a free by address", rented.Message);
            Assert.True(owner.Memory.Span.IndexOfAnyExcept((byte)0x5A) < 0, "the refused free changed the buffer");
            owner.Dispose();

            // The ex-renter frees by the address it kept: refused, the parked buffer stays the pool's.
            var parked = Assert.Throws<ArgumentException>(() => PageFragCache.Free(address));
            Assert.Contains("give the buffer back with its owner's Dispose", parked.Message);

            IMemoryOwner<byte> again = pool.Rent(256);
            Assert.Equal(address, AddressOf(again));
            again.Memory.Span.Fill(3);
            again.Dispose();
            PageFragMemoryPoolStats stats = pool.GetStats();
            Assert.Equal(2, stats.Returns);
            Assert.Equal(0, stats.OutstandingBytes);
        }

        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_page_that_refused_free_by_address_for_the_pool_accepts_it_again_once_a_plain_cache_carves_it()
    {
        // The refusal is a flag on the block's head that every hand-out resets: the pool's page stays a fragment
        // cache's page (the recycle slots need that), and once the block goes back to the allocator and a plain cache
        // carves it, a free by address of its fragments works as for any other cache page.
        using PageAllocator allocator = WarmAllocator();
        nint poolAddress;
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator }))
        {
            IMemoryOwner<byte> owner = pool.Rent(256);
            poolAddress = AddressOf(owner);
            Arena arena = ArenaRegistry.Find(poolAddress)!;
            ref PageDescriptor d = ref arena.Pages[arena.Pages[(int)((poolAddress - arena.BaseAddress) >> PageConstants.PageShift)].HeadIndex];
            Assert.True(d.FragmentCachePage);
            Assert.True((d.Flags & PageFlags.RefusesFreeByAddress) != 0);
            Assert.Throws<ArgumentException>(() => PageFragCache.Free(poolAddress));
            owner.Dispose();
        }

        allocator.DrainPerCpuLists();
        using (var cache = new PageFragCache(allocator))
        {
            // Carve the arena's blocks until the pool's start comes up, then free every fragment by its address.
            var addresses = new List<nint>();
            while (!addresses.Contains(poolAddress) && addresses.Count < 256 && cache.TryAlloc(256, out PageFragment fragment))
            {
                addresses.Add(fragment.Address);
            }

            Assert.Contains(poolAddress, addresses);
            foreach (nint address in addresses)
            {
                PageFragCache.Free(address);
            }
        }

        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_stalled_Dispose_of_an_earlier_rent_cannot_free_the_same_fragment_parked_and_rented_again()
    {
        using PageAllocator allocator = WarmAllocator();
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator }))
        {
            IMemoryOwner<byte> owner = pool.Rent(256);
            var raw = (FragmentMemoryOwner)owner;

            // A second Dispose of this rent reads the count and the fields, then stalls; meanwhile the renting thread
            // disposes (the buffer is parked) and rents the same owner and fragment again.
            var stale = raw.ReadForDispose();
            owner.Dispose();
            IMemoryOwner<byte> again = pool.Rent(256);
            Assert.Same(owner, again);
            Assert.Equal(stale.ArenaOffset, raw.ReadForDispose().ArenaOffset);
            Assert.Equal(stale.Generation, raw.ReadForDispose().Generation);
            again.Memory.Span.Fill(0x5A);

            // The stalled call resumes on another thread: the fragment is live with the same page generation and offset,
            // so only the owner's count (which moved on) can refuse it.
            Exception? thrown = null;
            var thread = new Thread(() =>
            {
                try
                {
                    raw.DisposeAfterStall(stale);
                }
                catch (Exception e)
                {
                    thrown = e;
                }
            });
            thread.Start();
            thread.Join();
            Assert.IsType<ObjectDisposedException>(thrown);

            // The new rent still holds its bytes: no other rent gets them, and its own Dispose gives them back once.
            IMemoryOwner<byte> other = pool.Rent(256);
            other.Memory.Span.Fill(1);
            Assert.True(again.Memory.Span.IndexOfAnyExcept((byte)0x5A) < 0, "the rented-again buffer was handed out twice");
            other.Dispose();
            again.Dispose();
            PageFragMemoryPoolStats stats = pool.GetStats();
            Assert.Equal(3, stats.Rents);
            Assert.Equal(stats.Rents, stats.Returns);
            Assert.Equal(0, stats.OutstandingBytes);
        }

        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void In_the_detection_mode_nothing_is_parked()
    {
        using var allocator = new PageAllocator(new PageAllocatorOptions { ArenaSize = 64 * 1024, DetectMisuse = true });
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator }))
        {
            IMemoryOwner<byte> owner = pool.Rent(256);
            nint address = AddressOf(owner);
            owner.Dispose();
            Assert.Equal(0, ((FragmentMemoryOwner)owner).Home.ParkedCount);
            IMemoryOwner<byte> next = pool.Rent(256);
            Assert.NotEqual(address, AddressOf(next));
            next.Dispose();
            pool.Trim();
        }

        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Disposing_the_pool_gives_back_every_parked_buffer_and_later_returns_on_the_renting_thread_park_nothing()
    {
        using PageAllocator allocator = WarmAllocator();
        IMemoryOwner<byte> late;
        PageFragMemoryPool.ThreadSlot slot;
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator }))
        {
            late = pool.Rent(1024);
            pool.Rent(512).Dispose();
            slot = ((FragmentMemoryOwner)late).Home;
            Assert.Equal(512, slot.ParkedBytes);
        }

        Assert.Equal(0, slot.ParkedCount);
        late.Dispose();
        Assert.Equal(0, slot.ParkedCount);
        Assert.Equal(0, allocator.PagesInUse);
        Leaks.AssertNone(allocator);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void RentFromParkedAndForget(PageFragMemoryPool pool)
    {
        pool.Rent(256).Dispose();
        IMemoryOwner<byte> forgotten = pool.Rent(256); // the parked owner, rented again and dropped
        forgotten.Memory.Span.Fill(9);
    }

    [Fact]
    public void A_buffer_rented_from_the_parked_ones_and_forgotten_comes_back_through_its_finalizer()
    {
        using PageAllocator allocator = WarmAllocator();
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator }))
        {
            RentFromParkedAndForget(pool);
            Assert.Equal(256, pool.GetStats().OutstandingBytes);
            for (int i = 0; i < 3 && pool.GetStats().ReclaimedBuffers == 0; i++)
            {
                GC.Collect();
                GC.WaitForPendingFinalizers();
            }

            PageFragMemoryPoolStats stats = pool.GetStats();
            Assert.Equal(1, stats.ReclaimedBuffers);
            Assert.Equal(0, stats.OutstandingBytes);
            Assert.Equal(stats.Rents, stats.Returns);
            pool.Trim();
            Assert.Equal(0, allocator.PagesInUse);
        }

        Leaks.AssertNone(allocator);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Racing_Dispose_of_a_buffer_on_its_renting_thread_and_another_never_hands_one_fragment_to_two_renters(bool otherSizesParked)
    {
        using PageAllocator allocator = WarmAllocator(arenaSize: 256 * 1024);
        using var barrier = new Barrier(2);
        var budget = Stopwatch.StartNew();
        IMemoryOwner<byte>? raced = null;
        int races = 0, lost = 0;
        bool stop = false;
        Exception? unexpected = null;
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator }))
        {
            var other = new Thread(() =>
            {
                while (true)
                {
                    barrier.SignalAndWait();
                    if (Volatile.Read(ref stop))
                    {
                        return;
                    }

                    try
                    {
                        raced!.Dispose();
                    }
                    catch (ObjectDisposedException)
                    {
                        Interlocked.Increment(ref lost);
                    }
                    catch (Exception e)
                    {
                        unexpected = e;
                    }

                    barrier.SignalAndWait();
                }
            }) { IsBackground = true };
            other.Start();

            var held = new IMemoryOwner<byte>[4];
            while (true)
            {
                if (otherSizesParked && races % 64 == 0)
                {
                    // Eight buffers of another size fill the parked list: the renting thread's Dispose then takes the
                    // full-list path (the fragment's release under the count), and the rents that miss make the slot
                    // back off and come back, so every return path meets the other thread's.
                    var others = new IMemoryOwner<byte>[8];
                    for (int i = 0; i < others.Length; i++)
                    {
                        others[i] = pool.Rent(64);
                    }

                    foreach (IMemoryOwner<byte> other8 in others)
                    {
                        other8.Dispose();
                    }
                }

                // Four rents held at once (the raced buffer, parked or not, among the candidates) must have four
                // different addresses and keep their bytes.
                for (int i = 0; i < held.Length; i++)
                {
                    held[i] = pool.Rent(256);
                    held[i].Memory.Span.Fill((byte)(i + 1));
                }

                for (int i = 0; i < held.Length; i++)
                {
                    Assert.True(held[i].Memory.Span.IndexOfAnyExcept((byte)(i + 1)) < 0, "one fragment was handed to two renters");
                    held[i].Dispose();
                }

                stop = (budget.Elapsed > TimeSpan.FromSeconds(1.5) && races >= 200) || budget.Elapsed > TimeSpan.FromSeconds(15);
                raced = stop ? null : pool.Rent(256);
                barrier.SignalAndWait();
                if (stop)
                {
                    break;
                }

                races++;
                try
                {
                    raced!.Dispose();
                }
                catch (ObjectDisposedException)
                {
                    Interlocked.Increment(ref lost);
                }

                barrier.SignalAndWait();
            }

            other.Join();
            Assert.Null(unexpected);
            Assert.True(races >= 200, $"only {races} races ran");

            // Exactly one Dispose of each race won (a loser throws, a late caller that found it given back does nothing).
            Assert.True(lost <= races, $"{lost} losers in {races} races");
            PageFragMemoryPoolStats stats = pool.GetStats();
            Assert.Equal(stats.Rents, stats.Returns);
            Assert.Equal(0, stats.OutstandingBytes);
            pool.Trim();
            Assert.Equal(0, allocator.PagesInUse);
        }

        Leaks.AssertNone(allocator);
    }
}
