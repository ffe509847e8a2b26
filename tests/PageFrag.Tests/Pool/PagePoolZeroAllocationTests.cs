using PageFrag.Pages;
using PageFrag.Pool;
using PageFrag.Tests.Infrastructure;
using static PageFrag.Tests.Pool.PoolTesting;

namespace PageFrag.Tests.Pool;

public class PagePoolZeroAllocationTests
{
    private const int Iterations = 20_000;

    [Fact]
    public void Alloc_and_direct_recycle_allocate_nothing_on_the_gc_heap()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        PagePool pool = NewPool(allocator);
        Assert.Equal(0, ZeroAlloc.MinAllocatedBytes(() => Loop(pool, Iterations)));
        DisposeAndAssertNoLeak(pool, allocator);

        static void Loop(PagePool pool, int n)
        {
            for (int i = 0; i < n; i++)
            {
                pool.TryAllocNetMem(out NetMem m);
                pool.RecycleDirect(m);
            }
        }
    }

    [Fact]
    public void Alloc_and_put_through_the_ring_allocate_nothing_on_the_gc_heap()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        PagePool pool = NewPool(allocator);
        Assert.Equal(0, ZeroAlloc.MinAllocatedBytes(() => Loop(pool, Iterations)));
        Assert.True(pool.GetStats().AllocRefill > 0, "the loop should cycle pages through the ring");
        DisposeAndAssertNoLeak(pool, allocator);

        static void Loop(PagePool pool, int n)
        {
            for (int i = 0; i < n; i++)
            {
                pool.TryAllocNetMem(out NetMem m);
                pool.PutFullPage(m, allowDirect: false);
            }
        }
    }

    [Fact]
    public void Fragment_alloc_and_free_allocate_nothing_on_the_gc_heap()
    {
        using PageAllocator allocator = Leaks.NewAllocator();
        PagePool pool = NewPool(allocator, flags: PagePoolFlags.DmaMap | PagePoolFlags.DmaSyncForDevice, maxLen: 2048);
        Assert.Equal(0, ZeroAlloc.MinAllocatedBytes(() => Loop(pool, Iterations)));
        DisposeAndAssertNoLeak(pool, allocator);

        static void Loop(PagePool pool, int n)
        {
            for (int i = 0; i < n; i++)
            {
                pool.TryAllocFrag(256, out PagePoolBuffer a);
                pool.TryAlloc(1500, out PagePoolBuffer b);
                pool.TryAlloc(3000, out PagePoolBuffer c);
                a.Span[0] = 1;
                a.Free();
                b.Free();
                c.Free();
            }
        }
    }
}
