using System.Buffers;
using System.Collections.Concurrent;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using PageFrag.Buffers;
using PageFrag.Frag;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;
using static PageFrag.Tests.Buffers.BufferTestSupport;

namespace PageFrag.Tests.Buffers;

/// <summary>
/// Session 9's attacker review of the in-place resize of a parked buffer (<c>PageFragCache.TryResizeMostRecent</c>,
/// <c>FragmentMemoryOwner.TryResizeParked</c>, <c>ThreadSlot.TakeParked</c>): two owners of the same bytes, the
/// accounting, and the interplay with stale handles, other threads, blocks and the page's end.
/// </summary>
// The in-place resize these tests attacked was withdrawn the same evening (it was slower than no resize once made safe:
// bench/README.md, Session 9); the tests that do not depend on it stay, as guards for parking with mixed sizes.
public class ParkedResizeReviewTests
{
    private static unsafe nint AddressOf(IMemoryOwner<byte> owner)
    {
        using MemoryHandle pin = owner.Memory.Pin();
        return (nint)pin.Pointer;
    }

    private static bool Overlap(nint startA, int lengthA, nint startB, int lengthB) =>
        startA < startB + lengthB && startB < startA + lengthA;

    /// <summary>
    /// A <c>Memory</c> kept (misuse) from a 4 KiB rent, after the owner was parked and shrunk in place to 64 bytes for
    /// the next rent, and a neighbour was carved from the bytes the shrink gave back. <c>Span</c> is refused (the
    /// memory manager's span is shorter than the stale <c>Memory</c>), but <c>MemoryMarshal.TryGetArray</c> builds
    /// the segment from the owner's array and offset and the stale <c>Memory</c>'s own length, without comparing it
    /// with the owner's: the segment covers the neighbour, another renter's live bytes, through safe code (and so
    /// does every BCL API that goes through <c>TryGetArray</c>: <c>Stream.ReadAsync(Memory)</c>'s base, sockets).
    /// Before session 9 a rent of another size never took a parked owner, so the stale <c>Memory</c>'s owner stayed
    /// parked and <c>TryGetArray</c> threw <see cref="ObjectDisposedException"/> (bad-input.md's row for a kept
    /// <c>Memory</c>); now the same owner comes back at once, shorter, at the same address. The ABA case the pool
    /// documents ("reaches the new renter's buffer") is exceeded: it reaches a third renter's buffer.
    /// </summary>
    [Fact]
    public void A_stale_Memory_of_a_longer_rent_cannot_reach_a_neighbour_through_TryGetArray_after_an_in_place_shrink()
    {
        using PageAllocator allocator = WarmAllocator();
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator }))
        {
            IMemoryOwner<byte> big = pool.Rent(4096);
            Memory<byte> kept = big.Memory; // misuse: kept after Dispose
            big.Dispose();

            IMemoryOwner<byte> small = pool.Rent(64);
            IMemoryOwner<byte> neighbour = pool.Rent(64); // from the bytes the shrink gave back
            neighbour.Memory.Span.Fill(0x4E);

            bool reached = false;
            try
            {
                if (MemoryMarshal.TryGetArray<byte>(kept, out ArraySegment<byte> segment))
                {
                    segment.AsSpan().Fill(0xEE); // what Stream.ReadAsync's base or a socket receive would write
                    reached = neighbour.Memory.Span.IndexOfAnyExcept((byte)0x4E) >= 0;
                }
            }
            catch (ObjectDisposedException)
            {
                // The stale Memory is refused: what bad-input.md promises until the owner is rented again.
            }

            neighbour.Dispose();
            small.Dispose();
            pool.Trim();
            Assert.False(reached, "a stale Memory of an earlier, longer rent wrote over another renter's live buffer");
            Assert.Equal(0, allocator.PagesInUse);
        }

        Leaks.AssertNone(allocator);
    }

    /// <summary>
    /// The same hole without parking or resizing (before session 9 too): in the detection mode nothing is parked, so
    /// the 4 KiB owner goes onto the slot's stash, the next rent of 64 bytes takes it (the stash is last in, first out)
    /// with a new fragment, and the stale 4 KiB <c>Memory</c>'s <c>TryGetArray</c> covers that fragment and the one
    /// after it. Kept to show that the root is the owner's <c>TryGetArray</c>, which cannot know a <c>Memory</c>'s length.
    /// </summary>
    [Fact(Skip = "repro (pre-existing, session 8 and before): a stale Memory of a recycled owner reaches past the owner's new fragment through MemoryMarshal.TryGetArray")]
    public void A_stale_Memory_of_a_recycled_owner_cannot_reach_past_its_new_fragment_through_TryGetArray()
    {
        using var allocator = new PageAllocator(new PageAllocatorOptions { ArenaSize = 64 * 1024, DetectMisuse = true });
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator }))
        {
            IMemoryOwner<byte> big = pool.Rent(4096);
            Memory<byte> kept = big.Memory;
            big.Dispose();

            IMemoryOwner<byte> small = pool.Rent(64);
            Assert.Same(big, small);
            IMemoryOwner<byte> neighbour = pool.Rent(64);
            neighbour.Memory.Span.Fill(0x4E);

            bool reached = false;
            try
            {
                if (MemoryMarshal.TryGetArray<byte>(kept, out ArraySegment<byte> segment))
                {
                    segment.AsSpan().Fill(0xEE);
                    reached = neighbour.Memory.Span.IndexOfAnyExcept((byte)0x4E) >= 0;
                }
            }
            catch (ObjectDisposedException)
            {
            }

            neighbour.Dispose();
            small.Dispose();
            pool.Trim();
            Assert.False(reached, "a stale Memory of an earlier, longer rent wrote over another renter's live buffer");
            Assert.Equal(0, allocator.PagesInUse);
        }

        Leaks.AssertNone(allocator);
    }

    /// <summary>
    /// One thread, a few thousand seeded steps: rents of mixed sizes (64 B to 32 KiB, unrounded sizes, blocks above the
    /// fragment limit), returns on this thread or another, trims with buffers out. Every live buffer keeps a byte
    /// pattern of its own and lies inside one 32 KiB-aligned span of the arena; no two live buffers overlap; the
    /// statistics match the live buffers' true sizes after every step that reads them; nothing leaks.
    /// </summary>
    [Fact]
    public void Mixed_rents_and_returns_never_overlap_and_the_counters_match_the_live_buffers()
    {
        using PageAllocator allocator = WarmAllocator(arenaSize: 1 << 20);
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator, MaxBufferSize = 65536 }))
        {
            var random = new Random(9);
            var live = new List<(IMemoryOwner<byte> Owner, byte Tag, nint Start, int Length)>();
            byte nextTag = 1;
            for (int step = 0; step < 4000; step++)
            {
                int roll = random.Next(100);
                if (live.Count < 12 && roll < 55)
                {
                    int size = random.Next(100) switch
                    {
                        < 70 => 64 * random.Next(1, 65),
                        < 85 => random.Next(1, 4097),
                        < 93 => 4096 * random.Next(2, 9),
                        < 97 => PageFragCache.MaxFragmentSize,
                        _ => 40000,
                    };

                    IMemoryOwner<byte> owner = pool.Rent(size);
                    int length = owner.Memory.Length;
                    Assert.True(length >= size);
                    nint start = AddressOf(owner);
                    foreach (var other in live)
                    {
                        Assert.False(Overlap(start, length, other.Start, other.Length), $"step {step}: [{start:x}, +{length}) overlaps a live buffer [{other.Start:x}, +{other.Length})");
                    }

                    var read = ((FragmentMemoryOwner)owner).ReadForDispose();
                    if (read.Arena is not null)
                    {
                        // A fragment lies inside its page: pages are aligned to their size in the arena, and at most 32 KiB.
                        Assert.Equal(read.ArenaOffset / PageFragCache.MaxFragmentSize, (read.ArenaOffset + length - 1) / PageFragCache.MaxFragmentSize);
                        Assert.Equal(length, read.Length);
                        Assert.True(read.TrueSize >= length);
                    }

                    byte tag = nextTag;
                    nextTag = nextTag == 250 ? (byte)1 : (byte)(nextTag + 1);
                    owner.Memory.Span.Fill(tag);
                    live.Add((owner, tag, start, length));
                }
                else if (live.Count > 0 && roll < 95)
                {
                    int index = random.Next(live.Count);
                    var (owner, tag, _, _) = live[index];
                    live.RemoveAt(index);
                    Assert.True(owner.Memory.Span.IndexOfAnyExcept(tag) < 0, $"step {step}: a live buffer's bytes were changed by another renter");
                    if (random.Next(8) == 0)
                    {
                        var elsewhere = new Thread(owner.Dispose);
                        elsewhere.Start();
                        elsewhere.Join();
                    }
                    else
                    {
                        owner.Dispose();
                    }
                }
                else
                {
                    if (roll >= 98)
                    {
                        pool.Trim();
                    }

                    PageFragMemoryPoolStats stats = pool.GetStats();
                    Assert.Equal(live.Count, stats.OutstandingBuffers);
                    Assert.Equal(live.Sum(l => (long)((FragmentMemoryOwner)l.Owner).TrueSize), stats.OutstandingBytes);
                    foreach (var (owner, tag, _, _) in live)
                    {
                        Assert.True(owner.Memory.Span.IndexOfAnyExcept(tag) < 0, $"step {step}: a live buffer's bytes were changed by another renter");
                    }
                }
            }

            foreach (var (owner, tag, _, _) in live)
            {
                Assert.True(owner.Memory.Span.IndexOfAnyExcept(tag) < 0);
                owner.Dispose();
            }

            PageFragMemoryPoolStats end = pool.GetStats();
            Assert.Equal(end.Rents, end.Returns);
            Assert.Equal(0, end.OutstandingBytes);
            pool.Trim();
            Assert.Equal(0, allocator.PagesInUse);
        }

        Leaks.AssertNone(allocator);
    }

    /// <summary>
    /// A thread rents mixed sizes (its own returns park and resize), fills each buffer with a tag of its own and hands
    /// half of them to a second thread, which checks the tag and disposes them there; the first checks and disposes the
    /// rest. 1.5 s at most, started together. No buffer ever sees another's bytes, the counters add up, nothing leaks.
    /// </summary>
    [Fact]
    public void Buffers_of_mixed_sizes_disposed_on_another_thread_while_the_renting_thread_keeps_renting_are_never_shared()
    {
        using PageAllocator allocator = WarmAllocator(arenaSize: 1 << 20);
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator }))
        {
            var handed = new ConcurrentQueue<(IMemoryOwner<byte> Owner, byte Tag)>();
            using var barrier = new Barrier(2);
            var stop = DateTime.UtcNow;
            bool renterDone = false;
            Exception? failure = null;
            long rents = 0;

            var renter = new Thread(() =>
            {
                try
                {
                    barrier.SignalAndWait();
                    var until = DateTime.UtcNow.AddSeconds(1.5);
                    var random = new Random(91);
                    var mine = new List<(IMemoryOwner<byte> Owner, byte Tag)>();
                    byte tag = 1;
                    while (DateTime.UtcNow < until && failure is null)
                    {
                        for (int i = 0; i < 64; i++)
                        {
                            IMemoryOwner<byte> owner = pool.Rent(64 * random.Next(1, 65));
                            rents++;
                            owner.Memory.Span.Fill(tag);
                            if (random.Next(2) == 0 && handed.Count < 64)
                            {
                                handed.Enqueue((owner, tag));
                            }
                            else
                            {
                                mine.Add((owner, tag));
                            }

                            tag = tag == 250 ? (byte)1 : (byte)(tag + 1);
                            while (mine.Count > random.Next(4))
                            {
                                int at = random.Next(mine.Count);
                                var (o, t) = mine[at];
                                mine.RemoveAt(at);
                                if (o.Memory.Span.IndexOfAnyExcept(t) >= 0)
                                {
                                    throw new InvalidOperationException("a buffer kept by the renting thread was written by another renter");
                                }

                                o.Dispose();
                            }
                        }
                    }

                    foreach (var (o, t) in mine)
                    {
                        o.Dispose();
                    }
                }
                catch (Exception e)
                {
                    failure ??= e;
                }
                finally
                {
                    Volatile.Write(ref renterDone, true);
                }
            });

            var disposer = new Thread(() =>
            {
                try
                {
                    barrier.SignalAndWait();
                    while (true)
                    {
                        if (handed.TryDequeue(out var item))
                        {
                            if (item.Owner.Memory.Span.IndexOfAnyExcept(item.Tag) >= 0)
                            {
                                throw new InvalidOperationException("a buffer handed to another thread was written by another renter");
                            }

                            item.Owner.Dispose();
                        }
                        else if (Volatile.Read(ref renterDone))
                        {
                            if (handed.IsEmpty)
                            {
                                break;
                            }
                        }
                        else
                        {
                            Thread.Yield();
                        }
                    }
                }
                catch (Exception e)
                {
                    failure ??= e;
                }
            });

            renter.Start();
            disposer.Start();
            renter.Join();
            disposer.Join();
            while (handed.TryDequeue(out var rest))
            {
                rest.Owner.Dispose();
            }

            Assert.Null(failure);
            PageFragMemoryPoolStats stats = pool.GetStats();
            Assert.Equal(rents, stats.Rents);
            Assert.Equal(stats.Rents, stats.Returns);
            Assert.Equal(0, stats.OutstandingBytes);
            pool.Trim();
            Assert.Equal(0, allocator.PagesInUse);
        }

        Leaks.AssertNone(allocator);
    }
}
