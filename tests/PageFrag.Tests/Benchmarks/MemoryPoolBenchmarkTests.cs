using PageFrag.Benchmarks;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;

namespace PageFrag.Tests.Benchmarks;

/// <summary>The MemoryPool suite gives the same answer with both pools and leaks nothing.</summary>
public class MemoryPoolBenchmarkTests
{
    [Theory]
    [InlineData(256)]
    [InlineData(4096)]
    public void Both_pools_and_the_bare_cache_give_the_same_sums_and_PageFrag_gives_every_page_back(int size)
    {
        using PageAllocator allocator = Leaks.NewAllocator(1 << 20);
        var bench = new MemoryPoolBenchmarks { Size = size, Allocator = allocator };
        bench.GlobalSetup();
        long expected = Stamp.Expected(MemoryPoolBenchmarks.Operations, size);
        for (int i = 0; i < 3; i++)
        {
            Assert.Equal(expected, bench.SharedRentDispose());
            Assert.Equal(expected, bench.PageFragRentDispose());
            Assert.Equal(expected, bench.CacheAllocFreeLocal());
            Assert.Equal(expected, bench.SharedMemorySpan());
            Assert.Equal(expected, bench.PageFragMemorySpan());
        }

        bench.GlobalCleanup();
        Leaks.AssertNone(allocator);
    }
}
