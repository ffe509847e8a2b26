using PageFrag.Frag;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;
using static PageFrag.Tests.Pages.PageTestKit;

namespace PageFrag.Tests.Pages;

/// <summary>
/// <see cref="Arena.StateIndex"/>: every granule of an arena has its own state byte, and the bytes of page starts
/// (where fragments of 4 KiB and more start) share a dense table instead of one state page per 8 arena pages.
/// </summary>
public class StateLayoutTests
{
    [Theory]
    [InlineData(4 * 1024)]
    [InlineData(12 * 1024)]
    [InlineData(32 * 1024)]
    [InlineData(1 << 30)]
    public void The_state_array_is_whole_4_byte_words_so_the_net8_swap_of_its_last_byte_stays_inside(int arenaBytes)
    {
        int length = Arena.StatesLength(arenaBytes);
        Assert.Equal(0, length % 4);
        int granules = arenaBytes >> Arena.MarkShift;
        int blocks = (arenaBytes + 32767) / 32768;
        Assert.Equal(granules + (blocks << Arena.DenseStrideShift), length);

        // The dense bytes of the first and the last 2 KiB of the arena lie in words that end inside the array, past
        // the main table.
        byte[] states = new byte[length];
        foreach (int g in (int[])[0, granules - (1 << Arena.DenseGranuleShift)])
        {
            int index = Arena.GranuleStateIndex(states, g);
            Assert.True((index & ~3) + 3 < length, $"granule {g}: state byte {index} of {length}");
            Assert.True(index >= granules, "a dense granule's byte is past the main table");
        }
    }

    [Theory]
    [InlineData(32 * 1024)]
    [InlineData(256 * 1024)]
    [InlineData(4 * 1024 * 1024)]
    public void Every_granule_has_its_own_state_byte_and_each_block_s_2_KiB_starts_share_one_line_of_their_own(int arenaBytes)
    {
        byte[] states = new byte[Arena.StatesLength(arenaBytes)];
        int granules = arenaBytes >> Arena.MarkShift;
        int dense = 1 << Arena.DenseGranuleShift;
        var seen = new bool[states.Length];
        for (int g = 0; g < granules; g++)
        {
            int index = Arena.GranuleStateIndex(states, g);
            Assert.InRange(index, 0, states.Length - 1);
            Assert.False(seen[index], $"granule {g} shares state byte {index}");
            seen[index] = true;
            Assert.Equal(index, Arena.StateIndex(states, g << Arena.MarkShift));
            Assert.Equal(index, Arena.StateIndex(states, (g << Arena.MarkShift) + 7));
            if (g % dense == 0)
            {
                // Block b's 16 bytes from Length - 128 (b + 1), in order: 112 bytes apart from the next block's, so
                // no 64-byte line holds two blocks' bytes.
                int block = g / 4096;
                Assert.Equal(states.Length - 128 * (block + 1) + (g / dense) % 16, index);
            }
        }

        // Unused: exactly the main table's bytes of dense granules, and 112 of every 128 dense bytes.
        for (int i = 0; i < states.Length; i++)
        {
            bool used = i < granules ? i % dense != 0 : (states.Length - 1 - i) % 128 >= 112;
            Assert.True(used == seen[i], $"byte {i}: used {seen[i]}, expected {used}");
        }
    }

    [Fact]
    public void The_states_of_a_page_of_2_KiB_fragments_are_16_bytes_of_one_line()
    {
        using PageAllocator allocator = Leaks.NewAllocator(256 * 1024);
        using var cache = new PageFragCache(allocator);
        var fragments = new List<PageFragment>();
        for (int i = 0; i < 16; i++)
        {
            Assert.True(cache.TryAlloc(2048, out PageFragment f));
            fragments.Add(f);
        }

        byte[] states = fragments[0].NonEmpty.FragStates;
        var indexes = fragments.Select(f => Arena.StateIndex(states, f.ArenaOffset)).ToArray();
        Assert.Equal(15, indexes.Max() - indexes.Min());
        Assert.All(indexes, i => Assert.NotEqual(0, states[i]));
        foreach (PageFragment f in fragments)
        {
            PageFragCache.Free(f);
        }

        // Freed while the cache still holds the page (marks, counted when it leaves), then the page is left.
        cache.Drain();
        Assert.All(indexes, i => Assert.Equal(0, states[i]));
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Page_sized_fragments_write_only_the_dense_table_and_free_cleanly()
    {
        const int ArenaBytes = 1 << 20;
        using PageAllocator allocator = Leaks.NewAllocator(ArenaBytes, maxBytes: ArenaBytes);
        var fragments = new List<PageFragment>();
        using (var cache = new PageFragCache(allocator))
        {
            while (fragments.Count < 128 && cache.TryAlloc(PageConstants.PageSize, out PageFragment f))
            {
                fragments.Add(f);
            }

            Assert.Equal(128, fragments.Count);
            Arena arena = fragments[0].NonEmpty;
            int main = Arena.StatesLength(ArenaBytes) - (ArenaBytes >> 15 << Arena.DenseStrideShift);
            Assert.True(arena.FragStates.AsSpan(0, main).IndexOfAnyExcept((byte)0) < 0, "no main-table byte written");
            Assert.Equal(128, arena.FragStates.AsSpan(main).Length - arena.FragStates.AsSpan(main).Count((byte)0));

            // Freed by another thread while the cache still holds the last page: the marks in the dense table are
            // counted when the cache leaves the page.
            var t = new Thread(() =>
            {
                foreach (PageFragment f in fragments)
                {
                    PageFragCache.Free(f);
                }
            });
            t.Start();
            t.Join();
            Assert.Throws<PageFragDoubleFreeException>(() => PageFragCache.Free(fragments[^1]));
            cache.Drain();
        }

        Arena a = fragments[0].NonEmpty;
        Assert.True(Arena.NoLiveFragments(a.FragStates, 0, a.ByteLength));
        Assert.True(a.FragStates.AsSpan().IndexOfAnyExcept((byte)0) < 0, "every state byte is 0 again");
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_free_by_an_address_inside_a_page_start_granule_is_refused_and_the_fragment_stays_live()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        using (var cache = new PageFragCache(allocator))
        {
            Assert.True(cache.TryAlloc(PageConstants.PageSize, out PageFragment f));
            Assert.Equal(0, f.ArenaOffset & (PageConstants.PageSize - 1));
            for (int i = 1; i < Arena.MarkGranule; i++)
            {
                Assert.Throws<ArgumentException>(() => PageFragCache.Free(f.Address + i));
            }

            PageFragCache.Free(f.Address);
            Assert.Throws<PageFragDoubleFreeException>(() => PageFragCache.Free(f));
        }

        Leaks.AssertNone(allocator);
    }
}
