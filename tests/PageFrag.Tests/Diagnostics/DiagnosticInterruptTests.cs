using System.Buffers;
using PageFrag.Buffers;
using PageFrag.Diagnostics;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;

namespace PageFrag.Tests.Diagnostics;

/// <summary>
/// The diagnostic pool's quarantine lock is taken after a buffer was marked returned, and by <c>Dispose</c> after the
/// pool was marked disposed: a <see cref="Thread.Interrupt"/> while waiting for it must not strand the buffers
/// (docs/interrupts.md).
/// </summary>
public class DiagnosticInterruptTests
{
    [Theory]
    [InlineData(0)] // straight back to the inner pool
    [InlineData(4)] // into the quarantine
    public void An_interrupt_while_a_buffers_Dispose_waits_for_the_quarantine_is_kept_and_the_buffer_is_not_stranded(int quarantine)
    {
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 1 << 20);
        var inner = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator });
        var pool = new DiagnosticMemoryPool(inner, new DiagnosticMemoryPoolOptions { QuarantineLength = quarantine });
        IMemoryOwner<byte> owner = pool.Rent(1000);

        Interrupts.Outcome outcome = Interrupts.WhileBlocked([pool.LockForTests], owner.Dispose);

        Interrupts.AssertCompletedAndKept(outcome);
        Assert.Equal(quarantine == 0 ? 0 : 1, pool.QuarantinedCount);
        pool.Verify();
        Assert.Equal(0, inner.GetStats().OutstandingBytes);
        pool.Dispose();
        inner.Dispose();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void An_interrupt_while_Dispose_waits_to_empty_the_quarantine_is_kept_and_every_buffer_goes_back()
    {
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 1 << 20);
        var inner = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator });
        var pool = new DiagnosticMemoryPool(inner, new DiagnosticMemoryPoolOptions { QuarantineLength = 8 });
        for (int i = 0; i < 5; i++)
        {
            pool.Rent(500 + i).Dispose();
        }

        Assert.Equal(5, pool.QuarantinedCount);
        Interrupts.Outcome outcome = Interrupts.WhileBlocked([pool.LockForTests], pool.Dispose);

        Interrupts.AssertCompletedAndKept(outcome);
        Assert.Equal(0, pool.QuarantinedCount);
        Assert.Equal(0, inner.GetStats().OutstandingBytes);
        inner.Dispose();
        Leaks.AssertNone(allocator);
    }
}
