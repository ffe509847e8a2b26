using System.Buffers;
using System.Collections.Concurrent;
using System.IO.Pipelines;
using System.Runtime.InteropServices;
using PageFrag.Buffers;
using PageFrag.Diagnostics;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;
using static PageFrag.Tests.Buffers.BufferTestSupport;

namespace PageFrag.Tests.Buffers;

/// <summary>
/// What every PageFrag memory pool promises, written once and run against each implementation and
/// option set (the subclasses below).
/// </summary>
public abstract class MemoryPoolContractTests
{
    /// <summary>A pool over <paramref name="allocator"/>; disposing it must give every page back.</summary>
    protected abstract MemoryPool<byte> CreatePool(PageAllocator allocator);

    protected virtual PageAllocator CreateAllocator() => WarmAllocator(arenaSize: 256 * 1024);

    [Fact]
    public void Rent_returns_at_least_the_requested_size_as_a_segment_of_an_array()
    {
        using PageAllocator allocator = CreateAllocator();
        MemoryPool<byte> pool = CreatePool(allocator);
        foreach (int size in new[] { -1, 0, 1, 63, 64, 65, 1000, 4096, 4097, 20_000, pool.MaxBufferSize }.Where(s => s <= pool.MaxBufferSize))
        {
            using IMemoryOwner<byte> owner = pool.Rent(size);
            Assert.True(owner.Memory.Length >= Math.Max(size, size == -1 ? 4096 : 0), $"Rent({size}) gave {owner.Memory.Length} bytes");
            Assert.True(MemoryMarshal.TryGetArray<byte>(owner.Memory, out ArraySegment<byte> segment));
            Assert.Equal(owner.Memory.Length, segment.Count);
            owner.Memory.Span.Fill(0x5A);
        }

        pool.Dispose();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Buffers_rented_together_never_overlap()
    {
        using PageAllocator allocator = CreateAllocator();
        MemoryPool<byte> pool = CreatePool(allocator);
        var owners = new List<IMemoryOwner<byte>>();
        for (int i = 0; i < 40; i++)
        {
            IMemoryOwner<byte> owner = pool.Rent(100 + 997 * (i % 9));
            owner.Memory.Span.Fill((byte)i);
            owners.Add(owner);
        }

        for (int i = 0; i < owners.Count; i++)
        {
            Assert.True(owners[i].Memory.Span.IndexOfAnyExcept((byte)i) < 0, $"buffer {i} was overwritten by another");
            owners[i].Dispose();
        }

        pool.Dispose();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Rent_above_MaxBufferSize_or_below_minus_one_throws_ArgumentOutOfRangeException_and_the_pool_still_works()
    {
        using PageAllocator allocator = CreateAllocator();
        MemoryPool<byte> pool = CreatePool(allocator);
        foreach (int bad in new[] { pool.MaxBufferSize + 1, int.MaxValue, -2, int.MinValue })
        {
            var e = Assert.Throws<ArgumentOutOfRangeException>(() => pool.Rent(bad));
            Assert.Equal("minBufferSize", e.ParamName);
            Assert.Equal(bad, e.ActualValue);
            Assert.StartsWith($"minBufferSize must be -1 (the default size) or between 0 and MaxBufferSize ({pool.MaxBufferSize}).", e.Message);
        }

        // MemoryPool<byte>.Shared throws the same type for the same mistakes.
        Assert.Throws<ArgumentOutOfRangeException>(() => MemoryPool<byte>.Shared.Rent(-2));

        using (IMemoryOwner<byte> owner = pool.Rent(100))
        {
            owner.Memory.Span.Fill(1);
        }

        pool.Dispose();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Memory_of_a_disposed_buffer_throws_ObjectDisposedException()
    {
        using PageAllocator allocator = CreateAllocator();
        MemoryPool<byte> pool = CreatePool(allocator);
        IMemoryOwner<byte> owner = pool.Rent(100);
        owner.Dispose();
        Assert.Throws<ObjectDisposedException>(() => owner.Memory);
        pool.Dispose();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Rent_after_the_pool_is_disposed_throws_ObjectDisposedException_and_late_returns_still_free()
    {
        using PageAllocator allocator = CreateAllocator();
        MemoryPool<byte> pool = CreatePool(allocator);
        IMemoryOwner<byte> late = pool.Rent(100);
        pool.Dispose();
        Assert.Throws<ObjectDisposedException>(() => pool.Rent(100));
        late.Memory.Span.Fill(3);
        late.Dispose();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public async Task A_pipe_using_the_pool_carries_messages_of_any_size_intact()
    {
        using PageAllocator allocator = CreateAllocator();
        MemoryPool<byte> pool = CreatePool(allocator);
        var pipe = new Pipe(new PipeOptions(pool: pool, pauseWriterThreshold: 256 * 1024, resumeWriterThreshold: 128 * 1024, useSynchronizationContext: false));
        var random = new Random(12345);
        int[] sizes = Enumerable.Range(0, 150).Select(_ => random.Next(0, 3) == 0 ? random.Next(4096, 60_000) : random.Next(1, 3000)).ToArray();

        Task writer = Task.Run(async () =>
        {
            for (int m = 0; m < sizes.Length; m++)
            {
                Span<byte> header = pipe.Writer.GetSpan(4);
                System.Buffers.Binary.BinaryPrimitives.WriteInt32LittleEndian(header, sizes[m]);
                pipe.Writer.Advance(4);
                int done = 0;
                while (done < sizes[m])
                {
                    Span<byte> span = pipe.Writer.GetSpan(1);
                    int n = Math.Min(span.Length, sizes[m] - done);
                    for (int i = 0; i < n; i++)
                    {
                        span[i] = (byte)(m + done + i);
                    }

                    pipe.Writer.Advance(n);
                    done += n;
                }

                if (m % 7 == 0)
                {
                    await pipe.Writer.FlushAsync();
                }
            }

            await pipe.Writer.CompleteAsync();
        });

        int received = 0;
        while (true)
        {
            ReadResult result = await pipe.Reader.ReadAsync();
            ReadOnlySequence<byte> buffer = result.Buffer;
            while (TryReadMessage(ref buffer, out ReadOnlySequence<byte> payload))
            {
                Assert.Equal(sizes[received], payload.Length);
                int offset = 0;
                foreach (ReadOnlyMemory<byte> memory in payload)
                {
                    ReadOnlySpan<byte> span = memory.Span;
                    for (int i = 0; i < span.Length; i++, offset++)
                    {
                        if (span[i] != (byte)(received + offset))
                        {
                            Assert.Fail($"message {received}, byte {offset} is wrong");
                        }
                    }
                }

                received++;
            }

            pipe.Reader.AdvanceTo(buffer.Start, buffer.End);
            if (result.IsCompleted)
            {
                break;
            }
        }

        await writer;
        await pipe.Reader.CompleteAsync();
        Assert.Equal(sizes.Length, received);
        pool.Dispose();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Buffers_rented_on_some_threads_and_disposed_on_others_all_come_back()
    {
        using PageAllocator allocator = CreateAllocator();
        MemoryPool<byte> pool = CreatePool(allocator);
        using var queue = new BlockingCollection<IMemoryOwner<byte>>(boundedCapacity: 64);
        const int PerRenter = 3000;
        var renters = Enumerable.Range(0, 2).Select(t => new Thread(() =>
        {
            for (int i = 0; i < PerRenter; i++)
            {
                IMemoryOwner<byte> owner = pool.Rent(1 + (i * 131 % 6000));
                owner.Memory.Span[0] = (byte)t;
                queue.Add(owner);
            }
        })).ToList();
        var disposers = Enumerable.Range(0, 2).Select(_ => new Thread(() =>
        {
            foreach (IMemoryOwner<byte> owner in queue.GetConsumingEnumerable())
            {
                owner.Dispose();
            }
        })).ToList();

        renters.ForEach(t => t.Start());
        disposers.ForEach(t => t.Start());
        renters.ForEach(t => t.Join());
        queue.CompleteAdding();
        disposers.ForEach(t => t.Join());

        pool.Dispose();
        Leaks.AssertNone(allocator);
    }

    private static bool TryReadMessage(ref ReadOnlySequence<byte> buffer, out ReadOnlySequence<byte> payload)
    {
        var reader = new SequenceReader<byte>(buffer);
        if (reader.TryReadLittleEndian(out int length) && reader.Remaining >= length)
        {
            payload = buffer.Slice(4, length);
            buffer = buffer.Slice(payload.End);
            return true;
        }

        payload = default;
        return false;
    }
}

public sealed class PageFragMemoryPoolContractTests : MemoryPoolContractTests
{
    protected override MemoryPool<byte> CreatePool(PageAllocator allocator) =>
        new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator });
}

/// <summary>Memory too fragmented for order-3 pages: the caches live on order-0 pages, large rents get blocks.</summary>
public sealed class PageFragMemoryPoolOnOrder0PagesContractTests : MemoryPoolContractTests
{
    protected override PageAllocator CreateAllocator() =>
        WarmAllocator(arenaSize: 256 * 1024, faults: new FaultInjection { FailOrderAtLeast = 3 });

    protected override MemoryPool<byte> CreatePool(PageAllocator allocator) =>
        new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator, MaxBufferSize = 8192, OwnersPerCpu = 0 });
}

public sealed class LargeBufferPageFragMemoryPoolContractTests : MemoryPoolContractTests
{
    protected override MemoryPool<byte> CreatePool(PageAllocator allocator) =>
        new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator, MaxBufferSize = 128 * 1024 });
}

public sealed class DiagnosticMemoryPoolContractTests : MemoryPoolContractTests
{
    protected override MemoryPool<byte> CreatePool(PageAllocator allocator) =>
        new DiagnosticMemoryPool(new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator }), new DiagnosticMemoryPoolOptions { QuarantineLength = 8 });
}
