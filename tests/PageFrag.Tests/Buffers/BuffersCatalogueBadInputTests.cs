using System.Buffers;
using PageFrag.Buffers;
using PageFrag.Frag;
using PageFrag.Pages;
using PageFrag.Tests.Frag;
using PageFrag.Tests.Infrastructure;
using static PageFrag.Tests.Buffers.BufferTestSupport;

namespace PageFrag.Tests.Buffers;

/// <summary>
/// The rows of <c>docs/bad-input.md</c> for the buffer adapters that the other tests do not cover: a writer
/// without a cache, an advance with no buffer requested, a rented buffer used after it was given back.
/// </summary>
public class BuffersCatalogueBadInputTests
{
    [Fact]
    public void A_writer_needs_a_cache()
    {
        FragKit.Throws<ArgumentNullException>(() => new FragBufferWriter(null!), "cache");
    }

    [Fact]
    public void Advancing_without_a_buffer_requested_throws_like_ArrayBufferWriter_and_the_writer_keeps_working()
    {
        using PageAllocator allocator = WarmAllocator();
        var cache = new PageFragCache(allocator);
        using (var writer = new FragBufferWriter(cache))
        {
            FragKit.Throws<InvalidOperationException>(() => writer.Advance(1), null, "Cannot advance past the end of the buffer, which has a size of 0.");
            Assert.Equal(0, writer.WrittenCount);
            Assert.Equal(0, allocator.PagesInUse);

            Fill(writer.GetSpan(5)[..5], 0);
            writer.Advance(5);
            AssertPattern(writer.WrittenSequence, 5);
        }

        cache.Drain();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_rented_buffer_given_back_refuses_its_memory_and_a_second_return_changes_nothing()
    {
        using PageAllocator allocator = WarmAllocator();
        using var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator });
        IMemoryOwner<byte> owner = pool.Rent(100);
        owner.Dispose();
        long returns = pool.GetStats().Returns;
        Assert.Equal("PageFragMemoryPool buffer", Assert.Throws<ObjectDisposedException>(() => owner.Memory).ObjectName);
        owner.Dispose();
        Assert.Equal(returns, pool.GetStats().Returns);
        Assert.Equal(0, pool.GetStats().OutstandingBytes);
        pool.Trim();
        Leaks.AssertNone(allocator);
    }
}
