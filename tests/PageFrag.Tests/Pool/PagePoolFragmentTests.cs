using PageFrag.Pages;
using PageFrag.Pool;
using PageFrag.Tests.Infrastructure;
using static PageFrag.Tests.Pool.PoolTesting;

namespace PageFrag.Tests.Pool;

public class PagePoolFragmentTests
{
    [Fact]
    public void Fragments_are_rounded_to_the_cache_line_and_carved_front_to_back_with_a_biased_count()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        PagePool pool = NewPool(allocator);
        Assert.True(pool.TryAllocFrag(100, out PagePoolBuffer a));
        Assert.True(pool.TryAllocFrag(1, out PagePoolBuffer b));
        Assert.True(pool.TryAllocFrag(64, out PagePoolBuffer c));
        Assert.Equal((0, 128, 192), (a.Offset, b.Offset, c.Offset));
        Assert.Equal((100, 1, 64), (a.Length, b.Length, c.Length));
        Assert.Equal((128, 64, 64), (a.TrueSize, b.TrueSize, c.TrueSize));
        Assert.True(a.IsFragment);
        Assert.Equal(a.NetMem, c.NetMem);
        Assert.Equal(0, a.Address % 64);
        Assert.Equal(256, pool.FragmentOffset);
        Assert.Equal(PagePool.BiasMax, a.NetMem.PpRefCount);

        a.Span.Fill(1);
        b.Span.Fill(2);
        c.Span.Fill(3);
        Assert.All(a.Span.ToArray(), x => Assert.Equal(1, x));

        // The owner's free of a fragment of the page being carved goes back to the unused bias: no atomic,
        // the count is untouched until the page is drained. A free on another thread is an atomic decrement.
        b.Free();
        Assert.Equal(PagePool.BiasMax, a.NetMem.PpRefCount);
        OnOtherThread(() => a.Free());
        Assert.Equal(PagePool.BiasMax - 1, c.NetMem.PpRefCount);
        c.Free();
        DisposeAndAssertNoLeak(pool, allocator);
    }

    [Fact]
    public void Fragments_freed_by_the_owner_while_carving_let_the_full_page_be_reused_in_place()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        PagePool pool = NewPool(allocator);
        Assert.True(pool.TryAllocFrag(1000, out PagePoolBuffer first));
        NetMem page = first.NetMem;
        first.Free();
        for (int i = 0; i < 3; i++)
        {
            Assert.True(pool.TryAllocFrag(1000, out PagePoolBuffer f));
            Assert.Equal(page.Address, f.NetMem.Address);
            f.Free();
        }

        // The fifth 1024-byte piece does not fit: the drain finds every fragment free and reuses the page.
        Assert.True(pool.TryAllocFrag(1000, out PagePoolBuffer next));
        Assert.Equal(page.Address, next.NetMem.Address);
        Assert.Equal(0, next.Offset);
        Assert.Throws<PageFragDoubleFreeException>(() => first.Free());
        next.Free();
        DisposeAndAssertNoLeak(pool, allocator);
    }

    [Fact]
    public void A_full_fragment_page_whose_fragments_are_all_free_is_reused_in_place()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        PagePool pool = NewPool(allocator);
        var frags = new List<PagePoolBuffer>();
        for (int i = 0; i < 4096 / 256; i++)
        {
            Assert.True(pool.TryAllocFrag(256, out PagePoolBuffer f));
            frags.Add(f);
        }

        nint page = frags[0].NetMem.Address;
        frags.ForEach(f => f.Free());
        Assert.Equal(0, pool.GetStats().RecycleCached);

        Assert.True(pool.TryAllocFrag(256, out PagePoolBuffer next));
        Assert.Equal(page, next.NetMem.Address);
        Assert.Equal(0, next.Offset);
        PagePoolStats s = pool.GetStats();
        Assert.Equal(1, s.RecycleCached);
        Assert.Equal(1, s.AllocSlow);

        // The old handles belong to the previous use of the page.
        Assert.Throws<PageFragDoubleFreeException>(() => frags[3].Free());
        next.Free();
        DisposeAndAssertNoLeak(pool, allocator);
    }

    [Fact]
    public void A_full_fragment_page_with_fragments_out_is_recycled_by_the_last_fragment_freed()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        PagePool pool = NewPool(allocator);
        var frags = new List<PagePoolBuffer>();
        for (int i = 0; i < 2; i++)
        {
            Assert.True(pool.TryAllocFrag(2048, out PagePoolBuffer f));
            frags.Add(f);
        }

        Assert.True(pool.TryAllocFrag(2048, out PagePoolBuffer onNewPage));
        Assert.NotEqual(frags[0].NetMem.Address, onNewPage.NetMem.Address);

        // The pool gave up its bias: two references left, one per fragment.
        Assert.Equal(2, frags[0].NetMem.PpRefCount);
        OnOtherThread(() => frags[0].Free());
        Assert.Equal(0, pool.GetStats().RecycleRing);
        OnOtherThread(() => frags[1].Free());
        Assert.Equal(1, pool.GetStats().RecycleRing);

        // Back in the pool it is a mono-frag again.
        Assert.Equal(1, frags[0].NetMem.Descriptor.PpRefCount);
        onNewPage.Free();
        DisposeAndAssertNoLeak(pool, allocator);
    }

    [Fact]
    public void Alloc_gives_a_whole_page_when_twice_the_size_exceeds_the_page()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        PagePool pool = NewPool(allocator);
        Assert.True(pool.TryAlloc(2049, out PagePoolBuffer whole));
        Assert.False(whole.IsFragment);
        Assert.Equal((0, 2049, 4096), (whole.Offset, whole.Length, whole.TrueSize));
        Assert.Equal(1, whole.NetMem.PpRefCount);

        Assert.True(pool.TryAlloc(2048, out PagePoolBuffer half));
        Assert.True(half.IsFragment);
        Assert.Equal(2048, half.TrueSize);
        whole.Free();
        half.Free();
        DisposeAndAssertNoLeak(pool, allocator);
    }

    [Fact]
    public void Alloc_appends_the_unusable_tail_to_the_last_fragment_so_truesizes_add_up_to_the_page()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        PagePool pool = NewPool(allocator);
        Assert.True(pool.TryAlloc(1500, out PagePoolBuffer a));
        Assert.True(pool.TryAlloc(1500, out PagePoolBuffer b));
        Assert.Equal((0, 1536), (a.Offset, b.Offset));
        Assert.Equal(1536, a.TrueSize);
        Assert.Equal(4096 - 1536, b.TrueSize);
        Assert.Equal(1500, b.Length);
        Assert.Equal(4096, a.TrueSize + b.TrueSize);
        Assert.Equal(4096, pool.FragmentOffset);

        // The next one starts a new page.
        Assert.True(pool.TryAlloc(1500, out PagePoolBuffer c));
        Assert.NotEqual(a.NetMem.Address, c.NetMem.Address);
        a.Free();
        b.Free();
        c.Free();
        DisposeAndAssertNoLeak(pool, allocator);
    }

    [Fact]
    public void For_any_sequence_of_sizes_the_truesizes_of_a_page_never_exceed_it_and_a_closed_page_is_fully_charged()
    {
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 1 << 20);
        PagePool pool = NewPool(allocator);
        var rng = new Random(1234);
        var perPage = new Dictionary<nint, long>();
        var buffers = new List<PagePoolBuffer>();
        for (int i = 0; i < 3000; i++)
        {
            int size = rng.Next(1, 4097);
            Assert.True(pool.TryAlloc(size, out PagePoolBuffer buf));
            Assert.True(buf.TrueSize >= buf.Length);
            Assert.True(buf.Offset + buf.TrueSize <= 4096);
            nint key = buf.NetMem.Address;
            perPage[key] = perPage.GetValueOrDefault(key) + buf.TrueSize;
            buffers.Add(buf);
            if (buffers.Count > 64)
            {
                buffers[0].Free();
                buffers.RemoveAt(0);
            }
        }

        Assert.All(perPage.Values, total => Assert.True(total <= 4096 * 64L));
        buffers.ForEach(b => b.Free());
        DisposeAndAssertNoLeak(pool, allocator);
    }

    [Fact]
    public void A_page_that_was_a_fragment_page_is_a_mono_frag_when_allocated_whole()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        PagePool pool = NewPool(allocator);
        Assert.True(pool.TryAllocFrag(4096, out PagePoolBuffer f));
        Assert.Equal(4096, f.TrueSize);
        Assert.True(pool.TryAllocFrag(64, out PagePoolBuffer g)); // closes f's page; f still out
        f.Free(); // last user: recycled directly (we are the owner)
        Assert.Equal(1, pool.GetStats().RecycleCached);

        Assert.True(pool.TryAllocNetMem(out NetMem whole));
        Assert.Equal(f.NetMem.Address, whole.Address);
        Assert.Equal(1, whole.PpRefCount);
        pool.RecycleDirect(whole);
        g.Free();
        DisposeAndAssertNoLeak(pool, allocator);
    }

    [Fact]
    public void Fragments_of_a_high_order_pool_span_the_whole_block()
    {
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 1 << 20);
        PagePool pool = NewPool(allocator, order: 3);
        Assert.True(pool.TryAlloc(10000, out PagePoolBuffer a));
        Assert.True(pool.TryAlloc(10000, out PagePoolBuffer b));
        Assert.True(pool.TryAlloc(10000, out PagePoolBuffer c));
        Assert.Equal(a.NetMem, c.NetMem);
        Assert.Equal(32768 - 2 * 10048, c.TrueSize);
        Assert.Equal(32768, a.TrueSize + b.TrueSize + c.TrueSize);
        Assert.True(pool.TryAlloc(16385, out PagePoolBuffer whole));
        Assert.Equal(32768, whole.TrueSize);
        a.Free();
        b.Free();
        c.Free();
        whole.Free();
        DisposeAndAssertNoLeak(pool, allocator);
    }
}
