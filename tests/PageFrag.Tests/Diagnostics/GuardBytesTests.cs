using System.Buffers;
using System.Runtime.InteropServices;
using PageFrag.Buffers;
using PageFrag.Diagnostics;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;
using static PageFrag.Tests.Buffers.BufferTestSupport;

namespace PageFrag.Tests.Diagnostics;

/// <summary>
/// Issue 11 item 13: a renter that writes past <c>seg.Count</c> of the shared arena array lands in a
/// neighbour's buffer. The guard mode of <see cref="DiagnosticMemoryPool"/> catches it at <c>Dispose</c>.
/// </summary>
public class GuardBytesTests
{
    private static (DiagnosticMemoryPool Pool, PageFragMemoryPool Inner) Create(PageAllocator allocator, int guard = 64) =>
        Create(allocator, new DiagnosticMemoryPoolOptions { GuardBytes = guard, QuarantineLength = 0 });

    private static (DiagnosticMemoryPool Pool, PageFragMemoryPool Inner) Create(PageAllocator allocator, DiagnosticMemoryPoolOptions options)
    {
        var inner = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator });
        return (new DiagnosticMemoryPool(inner, options), inner);
    }

    [Fact]
    public void Without_a_guard_an_overrun_through_the_shared_array_corrupts_the_neighbour()
    {
        using PageAllocator allocator = WarmAllocator();
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator }))
        {
            using IMemoryOwner<byte> a = pool.Rent(64);
            using IMemoryOwner<byte> b = pool.Rent(64);
            b.Memory.Span.Clear();
            Assert.True(MemoryMarshal.TryGetArray<byte>(a.Memory, out ArraySegment<byte> seg));
            Assert.True(seg.Array!.Length >= 64 * 1024, "the segment's array is the whole arena");
            seg.Array[seg.Offset + seg.Count] = 0xEE; // one byte too far
            Assert.Equal(0xEE, b.Memory.Span[0]);
        }

        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void An_overrun_into_the_guard_throws_BufferOverrunException_at_Dispose_and_the_buffer_is_still_returned()
    {
        using PageAllocator allocator = WarmAllocator();
        (DiagnosticMemoryPool pool, PageFragMemoryPool inner) = Create(allocator);
        IMemoryOwner<byte> owner = pool.Rent(100);
        Assert.Equal(128, owner.Memory.Length); // 100 + 64 rounded to 192 by the inner pool, less the guard
        Assert.True(MemoryMarshal.TryGetArray<byte>(owner.Memory, out ArraySegment<byte> seg));
        seg.Array![seg.Offset + seg.Count + 3] = 0x41;

        var e = Assert.Throws<BufferOverrunException>(() => owner.Dispose());
        Assert.IsAssignableFrom<InvalidOperationException>(e);
        Assert.StartsWith("A 128-byte buffer was written past its end: byte 131 (guard byte 3) is 0x41 instead of the guard pattern 0xFD.", e.Message);
        Assert.Equal(1, inner.GetStats().Returns);
        Assert.Throws<ObjectDisposedException>(() => owner.Dispose());

        // The pool is intact.
        using (IMemoryOwner<byte> next = pool.Rent(100))
        {
            next.Memory.Span.Fill(7);
        }

        pool.Dispose();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Buffers_written_within_their_length_pass_the_guard_check()
    {
        using PageAllocator allocator = WarmAllocator();
        (DiagnosticMemoryPool pool, PageFragMemoryPool inner) = Create(allocator, new DiagnosticMemoryPoolOptions { GuardBytes = 32, GuardPattern = 0x00, QuarantineLength = 4 });
        foreach (int size in new[] { -1, 0, 1, 63, 4000, pool.MaxBufferSize })
        {
            IMemoryOwner<byte> owner = pool.Rent(size);
            Assert.True(owner.Memory.Length >= size);
            owner.Memory.Span.Fill(0xFF);
            owner.Dispose();
        }

        Assert.Equal(32768 - 32, pool.MaxBufferSize);
        pool.Dispose();
        Assert.Equal(6, inner.GetStats().Returns);
        Leaks.AssertNone(allocator);
    }

    [Theory]
    [InlineData(32768 - 63)]
    [InlineData(int.MaxValue)]
    public void A_rent_that_leaves_no_room_for_the_guard_is_refused(int size)
    {
        using PageAllocator allocator = WarmAllocator();
        (DiagnosticMemoryPool pool, PageFragMemoryPool inner) = Create(allocator);
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => pool.Rent(size));
        Assert.Equal("minBufferSize", e.ParamName);
        Assert.Contains("MaxBufferSize (32704, the inner pool's less 64 guard bytes)", e.Message);
        Assert.Equal(0, inner.GetStats().Rents);
        pool.Dispose();
        Leaks.AssertNone(allocator);
    }

    [Theory]
    [InlineData(-1)]
    [InlineData(4097)]
    public void GuardBytes_out_of_range_is_refused(int guard)
    {
        using PageAllocator allocator = WarmAllocator();
        var inner = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator });
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => new DiagnosticMemoryPool(inner, new DiagnosticMemoryPoolOptions { GuardBytes = guard }));
        Assert.Equal("GuardBytes", e.ParamName);
        Assert.Contains("GuardBytes must be between 0 and 4096.", e.Message);
        inner.Dispose();
        Leaks.AssertNone(allocator);
    }
}
