using System.Buffers;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;

namespace PageFrag.Tests.Buffers;

/// <summary>Tests that measure allocations run alone, after the parallel ones, so that other tests' GCs stay out of the figures.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class AllocationMeasurements
{
    public const string Name = "Allocation measurements";
}

internal static class BufferTestSupport
{
    /// <summary>
    /// A private allocator whose first arena already exists. A fresh allocator cannot serve the fragment
    /// cache's opportunistic order-3 attempt (it never grows arenas), so the first page would be order 0.
    /// </summary>
    public static PageAllocator WarmAllocator(int arenaSize = 64 * 1024, long maxBytes = long.MaxValue, FaultInjection? faults = null)
    {
        PageAllocator allocator = Leaks.NewAllocator(arenaSize, maxBytes, faults: faults);
        Assert.True(allocator.TryAllocPages(0, AllocFlags.None, out Page page));
        allocator.FreePages(page);
        allocator.DrainPerCpuLists();
        return allocator;
    }

    /// <summary>Deterministic bytes: position-dependent, so a misplaced or reordered segment shows.</summary>
    public static void Fill(Span<byte> span, long start)
    {
        for (int i = 0; i < span.Length; i++)
        {
            span[i] = Pattern(start + i);
        }
    }

    /// <summary>
    /// Asserts that <paramref name="loop"/> (already warmed up by the caller) allocates nothing on the GC
    /// heap of this thread, in the best of three runs. A real allocation per operation shows in every run;
    /// the runtime can report a few KiB for a loop that allocates nothing when another thread's background
    /// GC lands during it (measured: a loop of only Thread.GetCurrentProcessorId and Lock.TryEnter/Exit
    /// beside a thread allocating pinned arrays), which one run in three does not survive.
    /// </summary>
    public static void AssertAllocatesNothing(Action loop)
    {
        long best = long.MaxValue;
        for (int attempt = 0; attempt < 3 && best != 0; attempt++)
        {
            long before = GC.GetAllocatedBytesForCurrentThread();
            loop();
            best = Math.Min(best, GC.GetAllocatedBytesForCurrentThread() - before);
        }

        Assert.Equal(0, best);
    }

    public static byte Pattern(long position) => (byte)((position * 31) ^ (position >> 8));

    public static void AssertPattern(in ReadOnlySequence<byte> sequence, long expectedLength)
    {
        Assert.Equal(expectedLength, sequence.Length);
        long position = 0;
        foreach (ReadOnlyMemory<byte> memory in sequence)
        {
            ReadOnlySpan<byte> span = memory.Span;
            for (int i = 0; i < span.Length; i++, position++)
            {
                if (span[i] != Pattern(position))
                {
                    Assert.Fail($"byte {position} is {span[i]}, expected {Pattern(position)}");
                }
            }
        }
    }
}
