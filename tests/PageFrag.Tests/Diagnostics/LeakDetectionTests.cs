using System.Buffers;
using System.Collections.Concurrent;
using System.Runtime.CompilerServices;
using PageFrag.Buffers;
using PageFrag.Diagnostics;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;
using static PageFrag.Tests.Buffers.BufferTestSupport;

namespace PageFrag.Tests.Diagnostics;

public class LeakDetectionTests
{
    private static DiagnosticMemoryPool Create(PageAllocator allocator, DiagnosticMemoryPoolOptions options) =>
        new(new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator }), options);

    [Fact]
    public void A_buffer_still_rented_is_listed_with_the_stack_trace_of_its_rent()
    {
        using PageAllocator allocator = WarmAllocator();
        DiagnosticMemoryPool pool = Create(allocator, new DiagnosticMemoryPoolOptions { LeakDetection = LeakDetectionLevel.Paranoid });
        IMemoryOwner<byte> owner = RentHere(pool);
        LeakReport report = Assert.Single(pool.GetOutstanding());
        Assert.Equal(128, report.Length);
        Assert.False(report.Collected);
        Assert.Contains(nameof(RentHere), report.RentedAt);
        Assert.DoesNotContain("DiagnosticMemoryPool.Rent", report.RentedAt);

        owner.Dispose();
        Assert.Empty(pool.GetOutstanding());
        pool.Dispose();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_buffer_collected_without_Dispose_is_reported_with_where_it_came_from_and_can_be_reclaimed()
    {
        using PageAllocator allocator = WarmAllocator();
        var reported = new ConcurrentQueue<LeakReport>();
        DiagnosticMemoryPool pool = Create(allocator, new DiagnosticMemoryPoolOptions
        {
            LeakDetection = LeakDetectionLevel.Paranoid,
            LeakDetected = reported.Enqueue,
            ReclaimLeakedBuffers = true,
        });
        var inner = (PageFragMemoryPool)pool.Inner;

        LeakOne(pool);
        GC.Collect();
        GC.WaitForPendingFinalizers();

        LeakReport report = Assert.Single(reported);
        Assert.True(report.Collected);
        Assert.Contains(nameof(LeakOne), report.RentedAt);
        Assert.StartsWith("LEAK: a buffer was garbage collected without being disposed (128 bytes). Rented at:", report.ToString());
        Assert.Equal(report, Assert.Single(pool.GetLeaks()));
        Assert.Empty(pool.GetOutstanding());
        Assert.Equal(0, inner.GetStats().OutstandingBuffers);

        pool.Dispose();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Sampled_detection_tracks_one_rent_in_the_sampling_interval()
    {
        using PageAllocator allocator = WarmAllocator();
        DiagnosticMemoryPool pool = Create(allocator, new DiagnosticMemoryPoolOptions { LeakDetection = LeakDetectionLevel.Sampled, SamplingInterval = 4 });
        var owners = Enumerable.Range(0, 10).Select(_ => pool.Rent(100)).ToList();
        Assert.Equal(2, pool.GetOutstanding().Count);
        owners.ForEach(o => o.Dispose());
        Assert.Empty(pool.GetOutstanding());
        pool.Dispose();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Without_leak_detection_nothing_is_tracked()
    {
        using PageAllocator allocator = WarmAllocator();
        DiagnosticMemoryPool pool = Create(allocator, new DiagnosticMemoryPoolOptions());
        using (pool.Rent(100))
        {
            Assert.Empty(pool.GetOutstanding());
        }

        pool.Dispose();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_write_after_free_report_says_where_the_buffer_was_rented()
    {
        using PageAllocator allocator = WarmAllocator();
        DiagnosticMemoryPool pool = Create(allocator, new DiagnosticMemoryPoolOptions { LeakDetection = LeakDetectionLevel.Paranoid });
        IMemoryOwner<byte> owner = RentHere(pool);
        Memory<byte> kept = owner.Memory;
        owner.Dispose();
        kept.Span[3] = 1;
        var e = Assert.Throws<UseAfterFreeException>(() => pool.Verify());
        Assert.StartsWith("A 128-byte buffer was written after it was given back: byte 3 is 0x01 instead of the poison 0x6B. Rented at:", e.Message);
        Assert.Contains(nameof(RentHere), e.Message);
        pool.Dispose();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Bad_leak_options_are_rejected()
    {
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => new DiagnosticMemoryPool(MemoryPool<byte>.Shared, new DiagnosticMemoryPoolOptions { SamplingInterval = 0 }));
        Assert.Equal("SamplingInterval", e.ParamName);
        Assert.StartsWith("SamplingInterval must be at least 1.", e.Message);
        e = Assert.Throws<ArgumentOutOfRangeException>(() => new DiagnosticMemoryPool(MemoryPool<byte>.Shared, new DiagnosticMemoryPoolOptions { LeakDetection = (LeakDetectionLevel)7 }));
        Assert.Equal("LeakDetection", e.ParamName);
        Assert.StartsWith("Unknown leak detection level.", e.Message);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static IMemoryOwner<byte> RentHere(MemoryPool<byte> pool) => pool.Rent(100);

    // Not inlined, so that no reference to the owner survives in the caller's frame.
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void LeakOne(MemoryPool<byte> pool) => pool.Rent(100).Memory.Span.Fill(1);
}
