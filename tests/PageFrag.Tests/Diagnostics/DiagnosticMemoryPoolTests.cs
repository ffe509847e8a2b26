using System.Buffers;
using PageFrag.Buffers;
using PageFrag.Diagnostics;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;
using static PageFrag.Tests.Buffers.BufferTestSupport;

namespace PageFrag.Tests.Diagnostics;

public class DiagnosticMemoryPoolTests
{
    private static (DiagnosticMemoryPool Pool, PageFragMemoryPool Inner) Create(PageAllocator allocator, int quarantine = 4)
    {
        var inner = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator });
        return (new DiagnosticMemoryPool(inner, new DiagnosticMemoryPoolOptions { QuarantineLength = quarantine }), inner);
    }

    [Fact]
    public void A_second_Dispose_throws_ObjectDisposedException_and_the_buffer_is_returned_once()
    {
        using PageAllocator allocator = WarmAllocator();
        (DiagnosticMemoryPool pool, PageFragMemoryPool inner) = Create(allocator, quarantine: 0);
        IMemoryOwner<byte> owner = pool.Rent(100);
        owner.Dispose();
        var e = Assert.Throws<ObjectDisposedException>(() => owner.Dispose());
        Assert.IsAssignableFrom<InvalidOperationException>(e);
        Assert.StartsWith("The buffer was given back to the pool twice (Dispose called twice).", e.Message);
        Assert.Equal(1, inner.GetStats().Returns);

        // The next renter of the same memory is unaffected.
        IMemoryOwner<byte> next = pool.Rent(100);
        Assert.Throws<ObjectDisposedException>(() => owner.Dispose());
        next.Memory.Span.Fill(1);
        next.Dispose();
        pool.Dispose();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Memory_after_Dispose_throws_ObjectDisposedException()
    {
        using PageAllocator allocator = WarmAllocator();
        (DiagnosticMemoryPool pool, _) = Create(allocator);
        IMemoryOwner<byte> owner = pool.Rent(100);
        owner.Dispose();
        var e = Assert.Throws<ObjectDisposedException>(() => owner.Memory);
        Assert.StartsWith("The buffer was used after it was given back to the pool (Memory read after Dispose).", e.Message);
        pool.Dispose();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_given_back_buffer_is_poisoned_so_a_late_reader_sees_garbage()
    {
        using PageAllocator allocator = WarmAllocator();
        (DiagnosticMemoryPool pool, _) = Create(allocator);
        IMemoryOwner<byte> owner = pool.Rent(100);
        Memory<byte> kept = owner.Memory;
        kept.Span.Fill(1);
        owner.Dispose();
        Assert.True(kept.Span.IndexOfAnyExcept(DiagnosticMemoryPoolOptions.DefaultPoison) < 0);
        pool.Dispose();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_write_after_free_is_caught_when_the_buffer_leaves_the_quarantine()
    {
        using PageAllocator allocator = WarmAllocator();
        (DiagnosticMemoryPool pool, PageFragMemoryPool inner) = Create(allocator);
        IMemoryOwner<byte> owner = pool.Rent(100);
        Memory<byte> kept = owner.Memory;
        owner.Dispose();
        Assert.Equal(0, inner.GetStats().Returns);
        kept.Span[17] = 0x42;

        var e = Assert.Throws<UseAfterFreeException>(() => pool.Verify());
        Assert.Equal("A 128-byte buffer was written after it was given back: byte 17 is 0x42 instead of the poison 0x6B.", e.Message);
        Assert.Equal(1, inner.GetStats().Returns);

        // Reported once; the pool goes on working.
        pool.Verify();
        pool.Rent(10).Dispose();
        pool.Dispose();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void The_quarantine_holds_the_last_buffers_back_from_the_inner_pool()
    {
        using PageAllocator allocator = WarmAllocator();
        (DiagnosticMemoryPool pool, PageFragMemoryPool inner) = Create(allocator, quarantine: 2);
        for (int i = 0; i < 5; i++)
        {
            pool.Rent(100).Dispose();
        }

        Assert.Equal(2, pool.QuarantinedCount);
        Assert.Equal(3, inner.GetStats().Returns);
        pool.Dispose();
        Assert.Equal(5, inner.GetStats().Returns);
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Disposing_the_decorator_reports_a_pending_write_after_free_and_still_disposes_the_inner_pool()
    {
        using PageAllocator allocator = WarmAllocator();
        (DiagnosticMemoryPool pool, PageFragMemoryPool inner) = Create(allocator);
        IMemoryOwner<byte> owner = pool.Rent(100);
        Memory<byte> kept = owner.Memory;
        owner.Dispose();
        kept.Span[0] = 0;
        Assert.Throws<UseAfterFreeException>(() => pool.Dispose());
        Assert.Throws<ObjectDisposedException>(() => inner.Rent(1));
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Bad_options_are_rejected()
    {
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => new DiagnosticMemoryPool(MemoryPool<byte>.Shared, new DiagnosticMemoryPoolOptions { QuarantineLength = -1 }));
        Assert.Equal("QuarantineLength", e.ParamName);
        Assert.StartsWith("QuarantineLength must be between 0 and 65536.", e.Message);
        Assert.Equal("inner", Assert.Throws<ArgumentNullException>(() => new DiagnosticMemoryPool(null!)).ParamName);
    }
}
