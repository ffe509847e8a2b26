using PageFrag.Pages;
using PageFrag.Pool;
using PageFrag.Tests.Infrastructure;
using static PageFrag.Tests.Pool.PoolTesting;

namespace PageFrag.Tests.Pool;

/// <summary>Issue 11, items 1 and 2 for the page pool: size sums that overflow and racing double puts.</summary>
public class PagePoolHardeningTests
{
    [Fact]
    public void Two_gigabyte_fragments_of_a_1_GiB_page_never_land_outside_the_arena()
    {
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 1 << 30, maxBytes: 1L << 30);
        PagePool pool = NewPool(allocator, order: allocator.MaxOrder, poolSize: 1);
        Assert.True(pool.TryAllocFrag(1 << 30, out PagePoolBuffer a));
        Assert.Equal(0, a.Offset);
        Assert.Equal(1 << 30, pool.FragmentOffset);

        // The second carve needs a new 1 GiB page, which the allocator (1 GiB at most) cannot give: it must
        // fail, not place b at offset 1 GiB (offset + size wrapped to a negative int before the fix).
        bool second = pool.TryAllocFrag(1 << 30, out PagePoolBuffer b);
        Assert.True(pool.FragmentOffset >= 0, $"FragmentOffset {pool.FragmentOffset}");
        Assert.False(second);
        Assert.True(b.IsEmpty);

        a.Free();
        DisposeAndAssertNoLeak(pool, allocator);
    }

    [Fact]
    public void TryAlloc_of_a_whole_1_GiB_page_then_a_fragment_stays_inside_the_page()
    {
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 1 << 30, maxBytes: 1L << 30);
        PagePool pool = NewPool(allocator, order: allocator.MaxOrder, poolSize: 1);
        int half = 1 << 29;
        Assert.True(pool.TryAlloc(half, out PagePoolBuffer a));
        Assert.True(a.IsFragment);
        Assert.True(pool.TryAlloc(half, out PagePoolBuffer b));
        Assert.Equal(half, b.Offset);
        Assert.Equal(half, b.TrueSize);
        Assert.False(pool.TryAlloc(half, out PagePoolBuffer c));
        Assert.True(c.IsEmpty);
        Assert.True(pool.FragmentOffset >= 0);
        a.Free();
        b.Free();
        DisposeAndAssertNoLeak(pool, allocator);
    }

    [Theory]
    [InlineData(int.MaxValue)]
    [InlineData(int.MaxValue - 1)]
    [InlineData((1 << 30) + 1)]
    [InlineData(int.MinValue)]
    public void Sizes_near_int_MaxValue_throw_on_every_sized_entry_point_of_a_1_GiB_pool(int size)
    {
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 1 << 30, maxBytes: 1L << 30);
        PagePool pool = NewPool(allocator, order: allocator.MaxOrder, poolSize: 1);
        Assert.Equal("size", Assert.Throws<ArgumentOutOfRangeException>(() => pool.TryAllocFrag(size, out _)).ParamName);
        Assert.Equal("size", Assert.Throws<ArgumentOutOfRangeException>(() => pool.TryAlloc(size, out _)).ParamName);
        Assert.True(pool.TryAllocNetMem(out NetMem m));
        Assert.Throws<ArgumentOutOfRangeException>(() => pool.PutPage(m, int.MinValue, allowDirect: false));
        pool.PutPage(m, int.MaxValue, allowDirect: false);
        DisposeAndAssertNoLeak(pool, allocator);
    }

    private const int RaceRounds = 20_000;

    /// <summary>Two threads put the same whole page at once: exactly one wins, the other gets the double-free
    /// exception, and the page enters the ring once.</summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void A_racing_double_put_of_a_whole_page_lets_exactly_one_put_win(bool viaBuffer)
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        PagePool pool = NewPool(allocator, poolSize: 4);
        using var barrier = new Barrier(3);
        NetMem shared = default;
        PagePoolBuffer sharedBuffer = default;
        int wins = 0;
        int doubles = 0;
        int rounds = 0;
        var deadline = DateTime.UtcNow.AddSeconds(2);
        int stop = 0;

        void Racer()
        {
            while (true)
            {
                barrier.SignalAndWait();
                if (Volatile.Read(ref stop) != 0)
                {
                    return;
                }

                try
                {
                    if (viaBuffer)
                    {
                        sharedBuffer.Free();
                    }
                    else
                    {
                        pool.PutFullPage(shared, allowDirect: false);
                    }

                    Interlocked.Increment(ref wins);
                }
                catch (PageFragDoubleFreeException)
                {
                    Interlocked.Increment(ref doubles);
                }

                barrier.SignalAndWait();
            }
        }

        var t1 = new Thread(Racer);
        var t2 = new Thread(Racer);
        t1.Start();
        t2.Start();
        int bad = 0;
        // The test thread is the third participant: it sets up each round between the racers' two phases.
        for (; rounds < RaceRounds && DateTime.UtcNow < deadline; rounds++)
        {
            if (viaBuffer)
            {
                Assert.True(pool.TryAlloc(4000, out sharedBuffer));
                Assert.False(sharedBuffer.IsFragment);
            }
            else
            {
                Assert.True(pool.TryAllocNetMem(out shared));
            }

            int before = wins;
            barrier.SignalAndWait();
            barrier.SignalAndWait();
            if (wins - before != 1)
            {
                bad++;
            }
        }

        Volatile.Write(ref stop, 1);
        barrier.SignalAndWait();
        t1.Join();
        t2.Join();
        Assert.True(bad == 0, $"{bad} bad rounds of {rounds}: {wins} wins, {doubles} double-free exceptions");
        Assert.Equal(rounds, wins);
        Assert.Equal(rounds, doubles);
        DisposeAndAssertNoLeak(pool, allocator);
    }
}
