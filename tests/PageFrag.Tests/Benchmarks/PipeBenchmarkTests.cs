using PageFrag.Benchmarks;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;

namespace PageFrag.Tests.Benchmarks;

/// <summary>The pipe suite runs as BenchmarkDotNet would, gives its checksum with both pools and leaks nothing.</summary>
public class PipeBenchmarkTests
{
    [Theory]
    [InlineData(1024)]
    [InlineData(65536)]
    public void Both_pools_move_every_byte_and_PageFrag_gives_every_page_back(int messageSize)
    {
        using PageAllocator allocator = Leaks.NewAllocator(1 << 20);
        var bench = new PipeBenchmarks { MessageSize = messageSize, Allocator = allocator };
        bench.GlobalSetup();

        for (int i = 0; i < 3; i++)
        {
            Assert.Equal(bench.ExpectedChecksum, bench.SharedPool());
            Assert.Equal(bench.ExpectedChecksum, bench.PageFragPool());
        }

        // The pipe rented its segments from PageFrag and gave back all but the one it writes into next.
        Assert.True(bench.Pool.GetStats().Rents >= 3L * PipeBenchmarks.Messages * messageSize / 32768);
        Assert.InRange(bench.Pool.GetStats().OutstandingBuffers, 0, 1);
        bench.GlobalCleanup();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void The_PageFrag_burst_allocates_nothing_on_the_GC_heap_once_warm()
    {
        using PageAllocator allocator = Leaks.NewAllocator(1 << 20);
        var bench = new PipeBenchmarks { MessageSize = 65536, Allocator = allocator };
        bench.GlobalSetup();
        bench.PageFragPool();
        ZeroAlloc.AssertSteadyState(() => bench.PageFragPool());
        bench.GlobalCleanup();
        Leaks.AssertNone(allocator);
    }
}
