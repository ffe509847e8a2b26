using PageFrag.Providers;

namespace PageFrag.Tests.Providers;

public class GenPoolTests
{
    [Fact]
    public void Ranges_are_carved_first_fit_in_units_and_freed_space_is_found_again()
    {
        var pool = new GenPool(minAllocShift: 12);
        var owner1 = new object();
        var owner2 = new object();
        pool.AddOwner(0, 8 * 4096, owner1);
        pool.AddOwner(1 << 20, 4 * 4096, owner2);
        Assert.Equal(12 * 4096, pool.Size);

        Assert.True(pool.TryAlloc(3 * 4096, out long a, out object? oa));
        Assert.Equal((0L, owner1), (a, oa));
        Assert.True(pool.TryAlloc(5000, out long b, out _)); // rounded up to two units
        Assert.Equal(3 * 4096, b);
        Assert.True(pool.TryAlloc(4 * 4096, out long c, out object? oc)); // only 3 left in the first range
        Assert.Equal((1L << 20, owner2), (c, oc));
        Assert.Equal(3 * 4096, pool.Available);

        Assert.Same(owner1, pool.Free(a, 3 * 4096));
        Assert.False(pool.TryAlloc(6 * 4096, out long d, out _)); // 0..2 and 5..7 free: no run of 6
        Assert.Equal(-1, d);
        Assert.False(pool.TryAlloc(7 * 4096, out _, out _));
        Assert.True(pool.TryAlloc(3 * 4096, out long e, out _));
        Assert.True(e is 0 or 5 * 4096);
    }

    [Fact]
    public void Single_units_fill_a_range_completely_across_bitmap_words()
    {
        var pool = new GenPool(minAllocShift: 0);
        pool.AddOwner(0, 200, null);
        var seen = new HashSet<long>();
        for (int i = 0; i < 200; i++)
        {
            Assert.True(pool.TryAlloc(1, out long addr, out _));
            Assert.True(seen.Add(addr));
        }

        Assert.False(pool.TryAlloc(1, out _, out _));
        pool.Free(130, 1);
        Assert.True(pool.TryAlloc(1, out long again, out _));
        Assert.Equal(130, again);
    }

    [Fact]
    public void Double_frees_unknown_addresses_and_overlapping_ranges_throw()
    {
        var pool = new GenPool(minAllocShift: 12);
        pool.AddOwner(0, 4 * 4096, null);
        Assert.True(pool.TryAlloc(4096, out long a, out _));
        pool.Free(a, 4096);
        ArgumentException twice = Assert.Throws<ArgumentException>(() => pool.Free(a, 4096));
        Assert.StartsWith("Part of the range is already free (double free).", twice.Message, StringComparison.Ordinal);
        Assert.Throws<ArgumentException>(() => pool.Free(1 << 30, 4096));
        Assert.Throws<ArgumentException>(() => pool.AddOwner(2 * 4096, 4 * 4096, null));
        Assert.Throws<ArgumentOutOfRangeException>(() => pool.AddOwner(1 << 20, 100, null));
        Assert.Equal(4 * 4096, pool.Available);
    }
}
