using System.Buffers;
using System.Collections.Concurrent;
using System.Diagnostics.Tracing;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using PageFrag.Buffers;
using PageFrag.Frag;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;

namespace PageFrag.Tests.Buffers;

/// <summary>
/// A <see cref="Memory{T}"/> (or a slice of it, or a <see cref="ReadOnlySequence{T}"/> of a chain) keeps
/// its owner reachable: the finalizer safety net never hands memory that someone still holds to the next
/// renter, and once the memory is dropped too, the collector does reclaim it.
/// </summary>
[Collection(FinalizerReclaim.Name)]
public class MemoryKeepsOwnerTests
{
    private const byte Kept = 0xA5;
    private const byte Other = 0x5A;

    /// <summary>Collects the <c>LeakReclaimed</c> events of the PageFrag event source.</summary>
    private sealed class LeakListener : EventListener
    {
        public readonly ConcurrentQueue<string> Kinds = new();

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
                Kinds.Enqueue((string)p[0]!);
            }
        }

        public int Count(string kind) => Kinds.Count(k => k == kind);
    }

    private static void CollectEverything()
    {
        for (int i = 0; i < 4; i++)
        {
            GC.Collect();
            GC.WaitForPendingFinalizers();
        }
    }

    private static PageAllocator NewAllocator(bool detectMisuse) =>
        new(new PageAllocatorOptions { ArenaSize = 256 * 1024, DetectMisuse = detectMisuse });

    /// <summary>Rents and keeps only the owners' memory (or a slice of it): no owner reference survives the call.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static Memory<byte>[] RentKeepingOnlyMemory(PageFragMemoryPool pool, bool slice)
    {
        int[] sizes = [100, 1000, 4096, 20000, 40000];
        var kept = new Memory<byte>[sizes.Length];
        for (int i = 0; i < sizes.Length; i++)
        {
            Memory<byte> memory = pool.Rent(sizes[i]).Memory;
            kept[i] = slice ? memory.Slice(10, sizes[i] - 20) : memory;
            kept[i].Span.Fill(Kept);
        }

        return kept;
    }

    /// <summary>
    /// Rents buffers until every page the allocator owned is in use again, writing <see cref="Other"/>
    /// into them: memory reclaimed from under a holder would be overwritten here.
    /// </summary>
    private static List<IMemoryOwner<byte>> RentEverythingAndScribble(PageFragMemoryPool pool, int bytes)
    {
        var owners = new List<IMemoryOwner<byte>>();
        for (int done = 0; done < bytes; done += 1024)
        {
            IMemoryOwner<byte> owner = pool.Rent(1024);
            owner.Memory.Span.Fill(Other);
            owners.Add(owner);
        }

        return owners;
    }

    private static void AssertAll(ReadOnlySpan<byte> bytes, byte value)
    {
        int bad = bytes.IndexOfAnyExcept(value);
        Assert.True(bad < 0, $"byte {bad} of memory still held was overwritten by another renter");
    }

    /// <summary>
    /// Holds only the memory while everything is collected and the allocator's pages are all rented again;
    /// returns having dropped it (in its own frame, so that no stack slot of the test keeps it afterwards).
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void HoldOnlyMemoryThroughCollectionsAndRents(PageFragMemoryPool pool, LeakListener listener, bool slice)
    {
        Memory<byte>[] kept = RentKeepingOnlyMemory(pool, slice);
        pool.Trim(); // the caches' pages are referenced by the kept buffers alone
        CollectEverything();

        List<IMemoryOwner<byte>> others = RentEverythingAndScribble(pool, 2 * 256 * 1024);
        foreach (Memory<byte> memory in kept)
        {
            AssertAll(memory.Span, Kept);
        }

        others.ForEach(o => o.Dispose());
        Assert.Equal(0, pool.GetStats().ReclaimedBuffers);
        Assert.Equal(0, listener.Count("MemoryOwner"));
        Assert.Equal(kept.Length, pool.GetStats().OutstandingBuffers);
    }

    /// <summary>As <see cref="HoldOnlyMemoryThroughCollectionsAndRents"/>, for a chain's sequence.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void HoldOnlySequenceThroughCollectionsAndRents(PageAllocator allocator, PageFragMemoryPool pool, LeakListener listener, bool large)
    {
        ReadOnlySequence<byte> kept = WriteKeepingOnlySequence(allocator, large);
        Assert.Equal(20 * (large ? 9000 : 3000), kept.Length);
        Assert.True(allocator.GetStats().PagesInUse > 0);
        CollectEverything();

        List<IMemoryOwner<byte>> others = RentEverythingAndScribble(pool, 2 * 256 * 1024);
        foreach (ReadOnlyMemory<byte> memory in kept)
        {
            AssertAll(memory.Span, Kept);
        }

        others.ForEach(o => o.Dispose());
        Assert.Equal(0, listener.Count(nameof(FragmentChain)));
        pool.Trim();
    }

    [Theory]
    [InlineData(false, false)]
    [InlineData(false, true)]
    [InlineData(true, false)]
    [InlineData(true, true)]
    public void A_kept_Memory_keeps_its_owner_rented_until_it_is_dropped(bool detectMisuse, bool slice)
    {
        CollectEverything(); // earlier tests' garbage is finalized before the listener counts
        using var listener = new LeakListener();
        using PageAllocator allocator = NewAllocator(detectMisuse);
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator, MaxBufferSize = 65536 }))
        {
            HoldOnlyMemoryThroughCollectionsAndRents(pool, listener, slice);

            // Dropped for good now (the frame that held them is gone): the collector reclaims every one.
            CollectEverything();
            Assert.Equal(5, pool.GetStats().ReclaimedBuffers);
            Assert.Equal(5, listener.Count("MemoryOwner"));
            Assert.Equal(0, pool.GetStats().OutstandingBuffers);
        }

        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void The_array_of_a_kept_Memory_is_still_reachable_through_TryGetArray_and_Pin()
    {
        using PageAllocator allocator = NewAllocator(detectMisuse: false);
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator }))
        {
            using IMemoryOwner<byte> owner = pool.Rent(300);
            Memory<byte> memory = owner.Memory;
            Memory<byte> slice = memory[5..20];
            slice.Span.Fill(7);

            Assert.True(MemoryMarshal.TryGetArray<byte>(slice, out ArraySegment<byte> segment));
            Assert.Equal(15, segment.Count);
            Assert.All(segment, b => Assert.Equal(7, b));
            Assert.True(MemoryMarshal.TryGetArray<byte>(memory, out ArraySegment<byte> whole));
            Assert.Same(whole.Array, segment.Array);
            Assert.Equal(whole.Offset + 5, segment.Offset);

            unsafe
            {
                using MemoryHandle handle = slice.Pin();
                Assert.Equal(7, *(byte*)handle.Pointer);
                fixed (byte* p = memory.Span)
                {
                    Assert.Equal((nint)(p + 5), (nint)handle.Pointer);
                }
            }
        }

        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Memory_after_Dispose_throws_ObjectDisposedException_as_the_BCL_owner_does()
    {
        using PageAllocator allocator = NewAllocator(detectMisuse: false);
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator }))
        {
            IMemoryOwner<byte> owner = pool.Rent(300);
            Memory<byte> stale = owner.Memory;
            owner.Dispose();
            Assert.Throws<ObjectDisposedException>(() => owner.Memory);

            // A memory taken before Dispose is the caller's bug; until the object is rented again it is refused.
            Assert.Throws<ObjectDisposedException>(() => stale.Span.Length);
            Assert.Throws<ObjectDisposedException>(() => stale.Pin());
            Assert.Throws<ObjectDisposedException>(() => MemoryMarshal.TryGetArray<byte>(stale, out _));
            owner.Dispose(); // still harmless
            Assert.Equal(0, pool.GetStats().OutstandingBuffers);
        }

        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Pinning_outside_the_buffer_through_the_MemoryManager_throws_and_changes_nothing()
    {
        using PageAllocator allocator = NewAllocator(detectMisuse: false);
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator }))
        {
            using IMemoryOwner<byte> owner = pool.Rent(100);
            var manager = Assert.IsAssignableFrom<MemoryManager<byte>>(owner);
            Assert.Throws<ArgumentOutOfRangeException>(() => manager.Pin(-1));
            Assert.Throws<ArgumentOutOfRangeException>(() => manager.Pin(owner.Memory.Length + 1));
            using (manager.Pin(owner.Memory.Length))
            {
            }

            owner.Memory.Span.Fill(3);
            Assert.Equal(1, pool.GetStats().OutstandingBuffers);
        }

        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_stale_sequence_of_a_disposed_chain_is_refused_until_the_chain_is_reused()
    {
        using PageAllocator allocator = NewAllocator(detectMisuse: false);
        var cache = new PageFragCache(allocator);
        var chain = new FragmentChain();
        Assert.True(cache.TryAlloc(500, out PageFragment fragment));
        chain.Append(fragment);
        ReadOnlySequence<byte> stale = chain.Sequence;
        Assert.True(MemoryMarshal.TryGetArray(stale.First, out ArraySegment<byte> segment));
        Assert.Equal(500, segment.Count);
        chain.Dispose();
        Assert.Throws<ObjectDisposedException>(() => stale.FirstSpan.Length);
        cache.Drain();
        Leaks.AssertNone(allocator);
    }

    /// <summary>Writes a multi-page chain, keeps only its sequence, and drains the cache so the chain alone holds the pages.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static ReadOnlySequence<byte> WriteKeepingOnlySequence(PageAllocator allocator, bool large)
    {
        var cache = new PageFragCache(allocator);
        using var writer = new FragBufferWriter(cache);
        for (int i = 0; i < 20; i++)
        {
            int n = large ? 9000 : 3000;
            writer.GetSpan(n)[..n].Fill(Kept);
            writer.Advance(n);
        }

        ReadOnlySequence<byte> sequence = writer.Detach().Sequence;
        cache.Drain();
        return sequence;
    }

    [Theory]
    [InlineData(false, false)]
    [InlineData(false, true)]
    [InlineData(true, false)]
    public void A_kept_sequence_of_a_detached_chain_keeps_the_chain_until_it_is_dropped(bool detectMisuse, bool large)
    {
        CollectEverything();
        using var listener = new LeakListener();
        using PageAllocator allocator = NewAllocator(detectMisuse);
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator }))
        {
            HoldOnlySequenceThroughCollectionsAndRents(allocator, pool, listener, large);
            CollectEverything();
            Assert.Equal(1, listener.Count(nameof(FragmentChain)));
        }

        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_kept_single_segment_sequence_keeps_its_chain_too()
    {
        CollectEverything();
        using var listener = new LeakListener();
        using PageAllocator allocator = NewAllocator(detectMisuse: false);
        ReadOnlySequence<byte> kept = KeepOneSegment(allocator);
        Assert.True(kept.IsSingleSegment);
        CollectEverything();
        Assert.Equal(0, listener.Count(nameof(FragmentChain)));
        Assert.True(allocator.GetStats().PagesInUse > 0);
        AssertAll(kept.FirstSpan, Kept);

        kept = default;
        CollectEverything();
        Assert.Equal(1, listener.Count(nameof(FragmentChain)));
        Leaks.AssertNone(allocator);
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    private static ReadOnlySequence<byte> KeepOneSegment(PageAllocator allocator)
    {
        var cache = new PageFragCache(allocator);
        var chain = new FragmentChain();
        Assert.True(cache.TryAlloc(500, out PageFragment fragment));
        fragment.Span.Fill(Kept);
        chain.Append(fragment);
        cache.Drain();
        return chain.Sequence;
    }
}
