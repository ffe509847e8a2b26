using System.Buffers;
using System.Collections.Concurrent;
using System.Diagnostics.Tracing;
using System.IO.Pipelines;
using System.Runtime.CompilerServices;
using PageFrag.Buffers;
using PageFrag.Frag;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;
using static PageFrag.Tests.Buffers.BufferTestSupport;

namespace PageFrag.Tests.Buffers;

/// <summary>Tests that force full collections and watch finalizers run alone, so that other tests' objects stay out.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class FinalizerReclaim
{
    public const string Name = "Finalizer reclaim";
}

/// <summary>
/// Issue 12 items 1 and 2 (Buffers): the garbage collector is the last owner. Rented owners, chains and
/// pools that become unreachable without <c>Dispose</c> give their memory back when collected and are
/// reported through the <c>PageFrag</c> event source; pools share <see cref="PageAllocator.Shared"/>.
/// </summary>
[Collection(FinalizerReclaim.Name)]
public class LeakReclaimTests
{
    /// <summary>Collects the <c>LeakReclaimed</c> events of the PageFrag event source.</summary>
    private sealed class LeakListener : EventListener
    {
        public readonly ConcurrentQueue<(string Kind, long Count, long Bytes, string Stack)> Events = new();

        protected override void OnEventSourceCreated(EventSource source)
        {
            if (source.Name == "PageFrag")
            {
                EnableEvents(source, EventLevel.Verbose);
            }
        }

        protected override void OnEventWritten(EventWrittenEventArgs e)
        {
            if (e.EventId == 1 && e.Payload is { Count: 4 } p)
            {
                Events.Enqueue(((string)p[0]!, (long)p[1]!, (long)p[2]!, (string)p[3]!));
            }
        }

        public (string Kind, long Count, long Bytes, string Stack)[] Of(string kind) => Events.Where(e => e.Kind == kind).ToArray();
    }

    private static void CollectEverything()
    {
        for (int i = 0; i < 3; i++)
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
        }
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void RentAndForget(PageFragMemoryPool pool, int count, int size)
    {
        for (int i = 0; i < count; i++)
        {
            pool.Rent(size).Memory.Span[0] = 1;
        }
    }

    [Fact]
    public void A_thousand_owners_never_disposed_are_given_back_and_reported_after_a_collection()
    {
        CollectEverything(); // earlier tests' garbage is finalized before the listener counts
        using var listener = new LeakListener();
        using PageAllocator allocator = WarmAllocator(arenaSize: 1 << 20);
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator, MaxBufferSize = 65536 }))
        {
            RentAndForget(pool, 1000, 100);
            RentAndForget(pool, 3, 40000);
            Assert.Equal(1003, pool.GetStats().OutstandingBuffers);
            Assert.True(allocator.GetStats().PagesInUse > 16);

            CollectEverything();

            PageFragMemoryPoolStats stats = pool.GetStats();
            Assert.Equal(0, stats.OutstandingBuffers);
            Assert.Equal(0, stats.OutstandingBytes);
            Assert.Equal(1003, stats.ReclaimedBuffers);
            var events = listener.Of("MemoryOwner");
            Assert.Equal(1003, events.Length);
            Assert.Equal(stats.RentedBytes, events.Sum(e => e.Bytes));
            Assert.All(events, e => Assert.Equal(1, e.Count));

            // The pool still works, and reuses what was reclaimed.
            using IMemoryOwner<byte> owner = pool.Rent(100);
            Assert.Equal(128, owner.Memory.Length);
        }

        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void In_the_detection_mode_a_leaked_owner_is_reported_with_its_rent_stack()
    {
        CollectEverything(); // earlier tests' garbage is finalized before the listener counts
        using var listener = new LeakListener();
        using var allocator = new PageAllocator(new PageAllocatorOptions { ArenaSize = 64 * 1024, DetectMisuse = true });
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator }))
        {
            RentAndForget(pool, 5, 100);
            CollectEverything();
            var events = listener.Of("MemoryOwner");
            Assert.Equal(5, events.Length);
            Assert.All(events, e => Assert.Contains(nameof(RentAndForget), e.Stack));
            Assert.Equal(0, pool.GetStats().OutstandingBuffers);
        }

        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Owners_leaked_past_the_end_of_their_allocator_are_finalized_without_harm()
    {
        CollectEverything();
        using var listener = new LeakListener();
        var allocator = new PageAllocator(new PageAllocatorOptions { ArenaSize = 64 * 1024 });
        var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator });
        RentAndForget(pool, 20, 100);
        pool.Dispose();
        allocator.Dispose();

        // The finalizers run against a disposed allocator: nothing may escape onto the finalizer thread.
        CollectEverything();
        Assert.Equal(20, listener.Of("MemoryOwner").Length);
    }

    [Fact]
    public void A_disposed_owner_is_never_reported_nor_returned_again_by_the_collector()
    {
        CollectEverything(); // earlier tests' garbage is finalized before the listener counts
        using var listener = new LeakListener();
        using PageAllocator allocator = WarmAllocator();
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator, OwnersPerCpu = 0 }))
        {
            // More than a CPU slot's stash keeps: the extra owner objects are dropped for the collector.
            var owners = Enumerable.Range(0, 600).Select(_ => pool.Rent(64)).ToList();
            owners.ForEach(o => o.Dispose());
            owners.Clear();
            CollectEverything();
            Assert.Empty(listener.Of("MemoryOwner"));
            PageFragMemoryPoolStats stats = pool.GetStats();
            Assert.Equal(600, stats.Returns);
            Assert.Equal(0, stats.ReclaimedBuffers);
        }

        Leaks.AssertNone(allocator);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void WriteAndForgetChains(PageFragCache cache, int count)
    {
        var writer = new FragBufferWriter(cache);
        for (int i = 0; i < count; i++)
        {
            writer.GetSpan(200)[..200].Fill((byte)i);
            writer.Advance(200);
            writer.GetSpan(6000)[..6000].Fill((byte)i);
            writer.Advance(6000);
            _ = writer.Detach();
        }

        var chain = new FragmentChain();
        Assert.True(cache.TryAlloc(64, out PageFragment f));
        chain.Append(f);
    }

    [Fact]
    public void Chains_never_disposed_free_their_buffers_when_collected_and_are_reported()
    {
        CollectEverything(); // earlier tests' garbage is finalized before the listener counts
        using var listener = new LeakListener();
        using PageAllocator allocator = WarmAllocator(arenaSize: 4 << 20);
        var cache = new PageFragCache(allocator);
        WriteAndForgetChains(cache, 100);
        cache.Drain();
        Assert.True(allocator.GetStats().PagesInUse > 100);

        CollectEverything();

        var events = listener.Of(nameof(FragmentChain));
        Assert.Equal(101, events.Length);
        Assert.Equal(1, events.Count(e => e.Bytes == 64));
        Assert.All(events, e => Assert.InRange(e.Count, 1, 2));
        Leaks.AssertNone(allocator);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void UseAndForgetPool(PageAllocator allocator)
    {
        var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator });
        pool.Rent(100).Dispose();
    }

    [Fact]
    public void A_pool_never_disposed_drains_its_caches_when_collected_and_is_reported()
    {
        CollectEverything(); // earlier tests' garbage is finalized before the listener counts
        using var listener = new LeakListener();
        using PageAllocator allocator = WarmAllocator();
        UseAndForgetPool(allocator);
        Assert.True(allocator.GetStats().PagesInUse > 0);

        CollectEverything();

        var report = Assert.Single(listener.Of(nameof(PageFragMemoryPool)));
        Assert.Equal(32768, report.Bytes); // the free space left in the cache's page and the parked 128-byte buffer
        Leaks.AssertNone(allocator);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static async Task UsePipesAndForgetThem(int count)
    {
        // One 2 KiB segment per pipe, so that its pool's cache keeps free space to give back even when the shared
        // allocator could only give it a 4 KiB page (a 4 KiB segment would fill such a page, and a pool with nothing
        // to drain has nothing to report).
        byte[] message = new byte[1500];
        for (int i = 0; i < count; i++)
        {
            var pipe = new Pipe(new PipeOptions(pool: new PageFragMemoryPool(), minimumSegmentSize: 2048));
            await pipe.Writer.WriteAsync(message);
            ReadResult read = await pipe.Reader.ReadAsync();
            Assert.Equal(message.Length, read.Buffer.Length);
            pipe.Reader.AdvanceTo(read.Buffer.GetPosition(500));

            // Left with 1000 unread bytes, a rented segment, and a pool whose cache holds a page with free space.
        }
    }

    [Fact]
    public async Task Two_hundred_pipes_with_a_pool_each_never_disposed_stay_within_a_few_MiB_after_a_collection()
    {
        CollectEverything(); // earlier tests' garbage is finalized before the listener counts
        using var listener = new LeakListener();

        // The shared allocator's first arena (4 MiB, kept for every later pool) is not what is measured.
        await UsePipesAndForgetThem(4);
        CollectEverything();
        long heapBefore = GC.GetGCMemoryInfo(GCKind.Any).HeapSizeBytes;
        long pagesBefore = PageAllocator.Shared.GetStats().PagesInUse;

        await UsePipesAndForgetThem(200);
        CollectEverything();

        long heapAfter = GC.GetGCMemoryInfo(GCKind.Any).HeapSizeBytes;
        long pagesAfter = PageAllocator.Shared.GetStats().PagesInUse;
        Assert.True(pagesAfter - pagesBefore <= 16, $"{pagesAfter - pagesBefore} more pages in use");
        Assert.True(heapAfter - heapBefore < 8L << 20, $"the heap grew by {(heapAfter - heapBefore) >> 10} KiB");
        Assert.True(listener.Of("MemoryOwner").Length >= 200);
        Assert.True(listener.Of(nameof(PageFragMemoryPool)).Length >= 200);
    }
}
