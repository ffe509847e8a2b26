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
/// A writer's disposed chains give their fragments back to the writer, which writes its next chains into them
/// with no cache call and no page from the allocator; across threads, after the writer's Dispose, and against
/// frees behind the writer's back, every fragment is freed exactly once and nobody else's bytes are written.
/// </summary>
public class FragBufferWriterReuseTests
{
    private static int[] Sizes(int count, int seed)
    {
        var random = new Random(seed);
        int[] sizes = new int[count];
        for (int i = 0; i < sizes.Length; i++)
        {
            sizes[i] = random.Next(10, 301);
        }

        return sizes;
    }

    private static long Write(FragBufferWriter writer, int[] sizes)
    {
        long position = 0;
        foreach (int size in sizes)
        {
            Fill(writer.GetSpan(size)[..size], position);
            writer.Advance(size);
            position += size;
        }

        return position;
    }

    private static long Refills(PageFragCache cache) => cache.PagesAllocated + cache.PagesReused;

    [Fact]
    public void Chains_disposed_before_the_next_write_give_their_fragments_back_and_the_writer_takes_no_new_page()
    {
        using PageAllocator allocator = WarmAllocator(arenaSize: 1 << 20);
        var cache = new PageFragCache(allocator);
        int[] sizes = Sizes(3000, seed: 7);
        using (var writer = new FragBufferWriter(cache))
        {
            int segments = 0;
            long refills = 0;
            long pagesInUse = 0;
            for (int round = 0; round < 5; round++)
            {
                long length = Write(writer, sizes);
                using FragmentChain chain = writer.Detach();
                AssertPattern(chain.Sequence, length);
                if (round == 0)
                {
                    segments = chain.SegmentCount;
                    refills = Refills(cache);
                    pagesInUse = allocator.PagesInUse;
                    Assert.InRange(segments, 10, 20);
                }
                else
                {
                    // The same messages land in the same fragments: no page taken, none given back.
                    Assert.Equal(segments, chain.SegmentCount);
                    Assert.Equal(refills, Refills(cache));
                    Assert.Equal(pagesInUse, allocator.PagesInUse);
                }
            }
        }

        cache.Drain();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_chain_disposed_on_another_thread_gives_its_fragments_back_through_the_writers_stash()
    {
        using PageAllocator allocator = WarmAllocator(arenaSize: 1 << 20);
        var cache = new PageFragCache(allocator);
        int[] sizes = Sizes(1000, seed: 8);
        using (var writer = new FragBufferWriter(cache))
        {
            long refills = 0;
            for (int round = 0; round < 4; round++)
            {
                long length = Write(writer, sizes);
                FragmentChain chain = writer.Detach();
                var thread = new Thread(() =>
                {
                    AssertPattern(chain.Sequence, length);
                    chain.Dispose();
                });
                thread.Start();
                thread.Join();
                if (round == 0)
                {
                    refills = Refills(cache);
                }

                Assert.Equal(refills, Refills(cache));
            }
        }

        cache.Drain();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Fragments_the_next_chain_does_not_need_are_freed_at_its_Detach()
    {
        using PageAllocator allocator = WarmAllocator(arenaSize: 1 << 20);
        var cache = new PageFragCache(allocator);
        using (var writer = new FragBufferWriter(cache))
        {
            Write(writer, Sizes(2000, seed: 9));
            writer.Detach().Dispose();
            long kept = allocator.PagesInUse;
            Assert.True(kept >= 8 * 8, $"{kept} pages in use after a chain of about 300 KiB came back");

            Write(writer, Sizes(10, seed: 10));
            using FragmentChain small = writer.Detach();

            // One kept fragment (a 32 KiB page) serves the small chain; the cache's page stays; the rest is freed.
            Assert.Equal(1, small.SegmentCount);
            Assert.True(allocator.PagesInUse <= 3 * 8, $"{allocator.PagesInUse} pages in use after the small chain's Detach");
        }

        cache.Drain();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_chain_disposed_after_its_writer_frees_its_own_fragments()
    {
        using PageAllocator allocator = WarmAllocator(arenaSize: 1 << 20);
        var cache = new PageFragCache(allocator);
        var writer = new FragBufferWriter(cache);
        Write(writer, Sizes(500, seed: 11));
        writer.Detach().Dispose();
        long length = Write(writer, Sizes(500, seed: 11));
        FragmentChain chain = writer.Detach();
        writer.Dispose();
        cache.Drain();

        // The writer's Dispose freed nothing the chain holds: it is still intact and is freed by its own Dispose.
        AssertPattern(chain.Sequence, length);
        Assert.NotEqual(0, allocator.PagesInUse);
        chain.Dispose();
        chain.Dispose();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_chain_disposed_while_its_writer_is_disposed_on_another_thread_frees_each_fragment_once()
    {
        using PageAllocator allocator = WarmAllocator(arenaSize: 1 << 20);
        var cache = new PageFragCache(allocator);
        FragmentChain? chain = null;
        using var gate = new RaceGate(() => chain!.Dispose());
        var clock = Stopwatch.StartNew();
        int races = 0;
        while ((clock.ElapsedMilliseconds < 1000 || races < 50) && clock.ElapsedMilliseconds < 10_000 && gate.Failure is null)
        {
            var writer = new FragBufferWriter(cache);

            // One chain already waits in the stash with its fragments, so the writer's Dispose has some to free
            // while the other chain comes back.
            Write(writer, Sizes(40, seed: races));
            writer.Detach().Dispose();

            // The racing chain has a hundred segments (another allocation between writes ends each one), so that
            // its Dispose looks at the writer's state well before it puts itself in the stash; the writer's
            // Dispose starts a little later each round, to sweep that window.
            for (int i = 0; i < 100; i++)
            {
                writer.GetSpan(100)[..100].Fill(1);
                writer.Advance(100);
                Assert.True(cache.TryAlloc(8, out PageFragment gap));
                gap.Free();
            }

            chain = writer.Detach();
            int delay = races % 64 * 16;
            gate.Race(() =>
            {
                Thread.SpinWait(delay);
                writer.Dispose();
            });
            races++;
        }

        Assert.Null(gate.Failure);
        gate.Dispose();
        cache.Drain();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public unsafe void A_kept_fragment_freed_by_address_behind_the_writers_back_is_never_written_into()
    {
        using PageAllocator allocator = WarmAllocator(arenaSize: 1 << 20);
        var cache = new PageFragCache(allocator);
        using (var writer = new FragBufferWriter(cache))
        {
            writer.GetSpan(3000);
            writer.Advance(3000);
            FragmentChain chain = writer.Detach();
            nint address;
            using (MemoryHandle pin = chain.Sequence.First.Pin())
            {
                address = (nint)pin.Pointer;
            }

            chain.Dispose();

            // Someone frees the kept bytes by address (a broken rule elsewhere): they may go to another owner as
            // soon as the page is left, so the writer must not write into them.
            PageFragCache.Free(address);
            var e = Assert.Throws<PageFragDoubleFreeException>(() => writer.GetSpan(100));
            Assert.StartsWith("A fragment that a disposed chain gave back to its writer was freed by someone else", e.Message);

            // The writer is intact: it takes new memory, elsewhere than the freed bytes.
            Span<byte> span = writer.GetSpan(100);
            writer.Advance(100);
            Assert.Equal(100, writer.WrittenCount);
            fixed (byte* p = span)
            {
                Assert.NotEqual(address, (nint)p);
            }
        }

        cache.Drain();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public unsafe void A_fragment_freed_behind_a_disposed_chains_back_is_reported_by_the_writers_Dispose_and_nothing_leaks()
    {
        using PageAllocator allocator = WarmAllocator(arenaSize: 1 << 20);
        var cache = new PageFragCache(allocator);
        var writer = new FragBufferWriter(cache);
        writer.GetSpan(3000);
        writer.Advance(3000);
        FragmentChain chain = writer.Detach();
        using (MemoryHandle pin = chain.Sequence.First.Pin())
        {
            PageFragCache.Free((nint)pin.Pointer);
        }

        // The chain goes back to its writer without looking at its pages; the writer's Dispose frees what it kept
        // and reports the fragment that someone else had freed.
        chain.Dispose();
        var e = Assert.Throws<PageFragDoubleFreeException>(writer.Dispose);
        Assert.StartsWith("The fragment was already freed", e.Message);
        writer.Dispose();
        cache.Drain();
        Leaks.AssertNone(allocator);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void DropWriterWithAChainInItsStash(PageFragCache cache)
    {
        var writer = new FragBufferWriter(cache);
        Write(writer, Sizes(300, seed: 12));
        writer.Detach().Dispose();
        GC.KeepAlive(writer);
    }

    [Fact]
    public void A_writer_dropped_with_kept_fragments_gives_them_back_when_collected()
    {
        using PageAllocator allocator = WarmAllocator(arenaSize: 1 << 20);
        var cache = new PageFragCache(allocator);
        DropWriterWithAChainInItsStash(cache);
        cache.Drain();
        Assert.NotEqual(0, allocator.PagesInUse);
        for (int i = 0; i < 3; i++)
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
        }

        Leaks.AssertNone(allocator);
    }
}
