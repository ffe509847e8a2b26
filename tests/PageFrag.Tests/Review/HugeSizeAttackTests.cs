using System.Buffers;
using PageFrag.Buffers;
using PageFrag.Frag;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;

namespace PageFrag.Tests.Review;

/// <summary>
/// Review of session 5: sizes near <see cref="int.MaxValue"/> and negative ones at a writer that holds fragments
/// handed back by its disposed chains, and at a pool: a clear exception or a failed request, and nothing leaked.
/// </summary>
public class HugeSizeAttackTests
{
    [Fact]
    public void A_writer_with_kept_fragments_refuses_huge_and_negative_hints_and_leaks_nothing()
    {
        using PageAllocator allocator = Leaks.NewAllocator(1 << 20, maxBytes: 4 << 20);
        var cache = new PageFragCache(allocator);
        var writer = new FragBufferWriter(cache);
        for (int i = 0; i < 4; i++)
        {
            writer.GetSpan(3000).Fill(7);
            writer.Advance(3000);
            writer.Detach().Dispose(); // kept for the writer
        }

        foreach (int hint in new[] { int.MaxValue, int.MaxValue - 1, Array.MaxLength, Array.MaxLength + 1, 1 << 30 })
        {
            Exception? e = Record.Exception(() => writer.GetSpan(hint));
            Assert.True(e is null or OutOfMemoryException or ArgumentOutOfRangeException or InsufficientMemoryException,
                $"GetSpan({hint}) threw {e}");
        }

        Assert.ThrowsAny<ArgumentException>(() => writer.GetSpan(-1));
        Assert.ThrowsAny<ArgumentException>(() => writer.Advance(-1));
        Assert.ThrowsAny<Exception>(() => writer.Advance(int.MaxValue));

        // Still usable afterwards, with the kept fragments.
        writer.GetSpan(100).Fill(9);
        writer.Advance(100);
        using (FragmentChain chain = writer.Detach())
        {
            Assert.Equal(100, chain.Length);
        }

        writer.Dispose();
        cache.Dispose();
        allocator.Trim();
        allocator.DrainPerCpuLists();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_pool_refuses_huge_and_negative_sizes_and_leaks_nothing()
    {
        using PageAllocator allocator = Leaks.NewAllocator(1 << 20);
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator }))
        {
            foreach (int size in new[] { int.MaxValue, int.MaxValue - 1, Array.MaxLength, 1 << 30 })
            {
                Exception? e = Record.Exception(() => pool.Rent(size).Dispose());
                Assert.True(e is null or ArgumentOutOfRangeException or OutOfMemoryException, $"Rent({size}) threw {e}");
            }

            Assert.ThrowsAny<ArgumentException>(() => pool.Rent(-2));
            IMemoryOwner<byte> ok = pool.Rent(10);
            ok.Dispose();
            ok.Dispose();
            Assert.Equal(0, pool.GetStats().OutstandingBytes);
        }

        allocator.Trim();
        allocator.DrainPerCpuLists();
        Leaks.AssertNone(allocator);
    }
}
