using System.Buffers;
using PageFrag.Buffers;
using PageFrag.Frag;
using PageFrag.Pages;
using PageFrag.Pool;
using PageFrag.Tests.Infrastructure;
using PageFrag.Tests.Pool;

namespace PageFrag.Tests.Frag;

/// <summary>
/// Session 7: the size and alignment grid of every allocation entry point, against docs/bad-input.md and the XML
/// docs. Each point either works, or fails with the documented exception (type, parameter name, the bad value),
/// and then the cache, writer or pool still allocates and frees; each test ends with no page leaked.
/// </summary>
public class EntryPointGridTests7
{
    private const int Page = 4096;
    private const int Big = PageFragCache.MaxFragmentSize;

    private static readonly int[] s_sizes =
        [-1, 0, 1, 7, 8, Page - 1, Page, Page + 1, Big - 1, Big, Big + 1, int.MaxValue, int.MinValue, -Big];

    private static readonly int[] s_alignments = [0, 1, 3, 8, 4096, 8192, -1, -4096, int.MinValue, int.MaxValue];

    private static bool ValidSize(int size) => size >= 1 && size <= Big;

    private static bool ValidAlignment(int alignment) => alignment >= 1 && alignment <= Page && (alignment & (alignment - 1)) == 0;

    public static TheoryData<string> CacheApis() =>
        new() { "TryAlloc", "TryRefill", "TryPrepare", "TryProbe" };

    [Theory]
    [MemberData(nameof(CacheApis))]
    public void Every_size_and_alignment_of_a_cache_entry_point_works_or_throws_the_documented_exception_and_the_cache_stays_usable(string api)
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        string sizeParam = api is "TryPrepare" or "TryProbe" ? "minSize" : "size";

        foreach (int size in s_sizes)
        {
            // The overload without an alignment.
            Check(cache, api, size, null, sizeParam);
            foreach (int alignment in s_alignments)
            {
                Check(cache, api, size, alignment, sizeParam);
            }
        }

        FragKit.DrainAndAssertNoLeak(cache, allocator);
        cache.Dispose();
    }

    private static void Check(PageFragCache cache, string api, int size, int? alignment, string sizeParam)
    {
        string at = $"{api}({size}{(alignment is int a ? ", " + a : "")})";
        string? badParam = !ValidSize(size) ? sizeParam : alignment is int al && !ValidAlignment(al) ? "alignment" : null;

        // Probe needs a page with some room: it never refills.
        if (api == "TryProbe")
        {
            Assert.True(cache.TryAlloc(1, out PageFragment first), at);
            cache.FreeLocal(first);
        }

        int offset = cache.Offset;
        long pages = cache.PagesAllocated + cache.PagesReused;
        bool ok = false;
        PageFragment fragment = default;
        PreparedFragment prepared = default;
        Exception? e = Record.Exception(() =>
        {
            switch (api)
            {
                case "TryAlloc":
                    ok = alignment is int a1 ? cache.TryAlloc(size, a1, out fragment) : cache.TryAlloc(size, out fragment);
                    break;
                case "TryRefill":
                    ok = alignment is int a2 ? cache.TryRefill(size, a2, out fragment) : cache.TryRefill(size, out fragment);
                    break;
                case "TryPrepare":
                    ok = alignment is int a3 ? cache.TryPrepare(size, a3, out prepared) : cache.TryPrepare(size, out prepared);
                    break;
                default:
                    ok = alignment is int a4 ? cache.TryProbe(size, a4, out prepared) : cache.TryProbe(size, out prepared);
                    break;
            }
        });

        if (badParam is not null)
        {
            // The size is checked before the alignment; nothing moved, no page was taken.
            ArgumentOutOfRangeException bad = Assert.IsType<ArgumentOutOfRangeException>(e);
            Assert.True(badParam == bad.ParamName, $"{at}: parameter {bad.ParamName}, expected {badParam}");
            Assert.Equal(badParam == "alignment" ? alignment : size, (int?)bad.ActualValue);
            Assert.Contains(badParam == "alignment" ? "The alignment must be a power of two from 1 to 4096." : "The size must be between 1 and 32768 bytes.", bad.Message, StringComparison.Ordinal);
            Assert.Equal(offset, cache.Offset);
            Assert.Equal(pages, cache.PagesAllocated + cache.PagesReused);
            Assert.True(fragment.IsEmpty && prepared.IsEmpty, at);
        }
        else
        {
            Assert.True(e is null, $"{at} threw {e}");
            if (api == "TryProbe")
            {
                // A probe never refills: false when the page has no room, and then nothing moved.
                Assert.True(ok || prepared.IsEmpty, at);
            }
            else
            {
                Assert.True(ok, $"{at} failed with memory to spare");
            }

            int length = size;
            if (ok && fragment.IsEmpty)
            {
                length = 1;
                // A preparation: all the rest of the page, at the alignment asked for; committing a byte of it works.
                Assert.True(prepared.Size >= Math.Max(size, 8), at);
                Assert.Equal(0, prepared.Address % (alignment ?? 1));
                fragment = cache.Commit(prepared, 1);
            }

            if (!fragment.IsEmpty)
            {
                Assert.Equal(length, fragment.Length);
                Assert.Equal(0, fragment.Address % (alignment ?? 1));
                FragKit.Fill(fragment, size);
                Assert.True(FragKit.IsIntact(fragment, size), at);
                PageFragCache.Free(fragment.Address);
                Assert.Throws<PageFragDoubleFreeException>(() => PageFragCache.Free(fragment));
            }
        }

        FragKit.AssertStillWorks(cache);
    }

    public static TheoryData<string> CommitApis() =>
        new() { "Commit", "CommitNoRef", "CommitNoRefPrevious", "TryCommitNoRef" };

    [Theory]
    [MemberData(nameof(CommitApis))]
    public void Every_used_size_of_a_commit_works_or_throws_ArgumentOutOfRangeException_and_the_preparation_stays_usable(string api)
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        int[] usedSizes = [-1, 0, 1, 7, 8, Page - 1, Page, Page + 1, Big - 9, Big - 8, Big - 7, Big, Big + 1, int.MaxValue, int.MinValue];
        foreach (int used in usedSizes)
        {
            string at = $"{api}(usedSize {used})";

            // A fresh page with one 8-byte fragment on it (CommitNoRef extends it): the preparation is the other 32760 bytes.
            Assert.True(cache.TryAlloc(Big, out PageFragment whole), at);
            whole.Free();
            Assert.True(cache.TryAlloc(8, out PageFragment head), at);
            Assert.True(cache.TryPrepare(1, out PreparedFragment prepared), at);
            Assert.Equal(Big - 8, prepared.Size);
            bool valid = used >= 1 && used <= prepared.Size;

            PageFragment previous = head;
            PageFragment committed = default;
            Exception? e = Record.Exception(() =>
            {
                switch (api)
                {
                    case "Commit": committed = cache.Commit(prepared, used); break;
                    case "CommitNoRef": cache.CommitNoRef(prepared, used); break;
                    case "CommitNoRefPrevious": cache.CommitNoRef(prepared, used, ref previous); break;
                    default: Assert.True(cache.TryCommitNoRef(prepared, used, ref previous)); break;
                }
            });

            if (valid)
            {
                Assert.True(e is null, $"{at} threw {e}");
                Assert.Equal(8 + Math.Max(used, api == "Commit" ? 8 : used), cache.Offset);
                if (api is "CommitNoRefPrevious" or "TryCommitNoRef")
                {
                    Assert.Equal(8 + used, previous.Length);
                }
            }
            else
            {
                ArgumentOutOfRangeException bad = Assert.IsType<ArgumentOutOfRangeException>(e);
                Assert.Equal("usedSize", bad.ParamName);
                Assert.Equal(used, (int)bad.ActualValue!);
                Assert.Contains($"usedSize must be between 1 and the prepared size ({Big - 8}).", bad.Message, StringComparison.Ordinal);
                Assert.Equal(8, cache.Offset);
                Assert.Equal(8, previous.Length);

                // The preparation is still good.
                committed = cache.Commit(prepared, 16);
            }

            if (!committed.IsEmpty)
            {
                committed.Free();
            }

            // The head's reference covers bytes committed without one; freeing it gives the page's last reference back.
            previous.Free();
            FragKit.AssertStillWorks(cache);
        }

        FragKit.DrainAndAssertNoLeak(cache, allocator);
        cache.Dispose();
    }

    [Fact]
    public void Every_rent_size_works_or_throws_ArgumentOutOfRangeException_and_the_pool_stays_usable()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator });
        int[] sizes = [-1, -2, 0, 1, 7, 8, Page - 1, Page, Page + 1, Big - 1, Big, Big + 1, int.MaxValue, int.MinValue, -Big];
        foreach (int size in sizes)
        {
            string at = $"Rent({size})";
            IMemoryOwner<byte>? owner = null;
            Exception? e = Record.Exception(() => owner = pool.Rent(size));
            if (size is -1 or (>= 0 and <= Big))
            {
                Assert.True(e is null, $"{at} threw {e}");
                Assert.True(owner!.Memory.Length >= (size == -1 ? PageFragMemoryPool.DefaultBufferSize : size), at);
                owner.Memory.Span.Fill(0x3C);
                owner.Dispose();
            }
            else
            {
                ArgumentOutOfRangeException bad = Assert.IsType<ArgumentOutOfRangeException>(e);
                Assert.Equal("minBufferSize", bad.ParamName);
                Assert.Equal(size, (int)bad.ActualValue!);
                Assert.Contains($"minBufferSize must be -1 (the default size) or between 0 and MaxBufferSize ({Big}).", bad.Message, StringComparison.Ordinal);
            }

            pool.Rent(100).Dispose();
        }

        pool.Dispose();
        Leaks.AssertNone(allocator);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Every_size_hint_of_the_writer_works_or_throws_the_documented_exception_and_the_writer_stays_usable(bool span)
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        var writer = new FragBufferWriter(cache);
        int[] hints = [-1, 0, 1, 7, 8, Page - 1, Page, Page + 1, Big - 1, Big, Big + 1, Array.MaxLength + 1, int.MaxValue, int.MinValue, -Big];
        long written = 0;
        foreach (int hint in hints)
        {
            string at = $"{(span ? "GetSpan" : "GetMemory")}({hint})";
            int length = 0;
            Exception? e = Record.Exception(() => length = span ? writer.GetSpan(hint).Length : writer.GetMemory(hint).Length);
            if (hint < 0)
            {
                // As ArrayBufferWriter<T>: ArgumentException, not its subclass.
                ArgumentException bad = Assert.IsType<ArgumentException>(e);
                Assert.Equal("sizeHint", bad.ParamName);
                Assert.Contains($"sizeHint must be zero or positive, but was {hint}.", bad.Message, StringComparison.Ordinal);
            }
            else if (hint > FragBufferWriter.MaxSizeHint)
            {
                ArgumentOutOfRangeException bad = Assert.IsType<ArgumentOutOfRangeException>(e);
                Assert.Equal("sizeHint", bad.ParamName);
                Assert.Equal(hint, (int)bad.ActualValue!);
            }
            else
            {
                Assert.True(e is null, $"{at} threw {e}");
                Assert.True(length >= Math.Max(hint, 1), at);
                int count = Math.Max(hint, 1);
                (span ? writer.GetSpan(hint) : writer.GetMemory(hint).Span)[..count].Fill(0x42);
                writer.Advance(count);
                written += count;
            }

            // The writer still works after each call, bad or good.
            Assert.Equal(written, writer.WrittenCount);
            writer.GetSpan(3)[..3].Fill(0x43);
            writer.Advance(3);
            written += 3;
        }

        using (FragmentChain chain = writer.Detach())
        {
            Assert.Equal(written, chain.Length);
            foreach (ReadOnlyMemory<byte> segment in chain.Sequence)
            {
                Assert.False(segment.Span.ContainsAnyExcept((byte)0x42, (byte)0x43), "the written bytes changed");
            }
        }

        writer.Dispose();
        FragKit.DrainAndAssertNoLeak(cache, allocator);
        cache.Dispose();
    }

    [Fact]
    public void Every_advance_count_works_or_throws_the_documented_exception_and_the_writer_stays_usable()
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        var cache = new PageFragCache(allocator);
        var writer = new FragBufferWriter(cache);
        long written = 0;
        foreach (int count in (int[])[-1, 0, 1, 7, 8, Page, Big, Big + 1, int.MaxValue, int.MinValue])
        {
            int available = writer.GetSpan(100).Length;
            Exception? e = Record.Exception(() => writer.Advance(count));
            if (count < 0)
            {
                ArgumentException bad = Assert.IsType<ArgumentException>(e);
                Assert.Equal("count", bad.ParamName);
            }
            else if (count > available)
            {
                InvalidOperationException bad = Assert.IsType<InvalidOperationException>(e);
                Assert.Contains("Cannot advance past the end of the buffer", bad.Message, StringComparison.Ordinal);
            }
            else
            {
                Assert.True(e is null, $"Advance({count}) threw {e}");
                written += count;
            }

            Assert.Equal(written, writer.WrittenCount);
        }

        writer.Dispose();
        FragKit.DrainAndAssertNoLeak(cache, allocator);
        cache.Dispose();
    }

    [Theory]
    [InlineData(0)]
    [InlineData(3)]
    public void Every_size_of_a_page_pool_fragment_works_or_throws_ArgumentOutOfRangeException_and_the_pool_stays_usable(int order)
    {
        using PageAllocator allocator = FragKit.NewAllocator();
        PagePool pool = PoolTesting.NewPool(allocator, order: order);
        int pageSize = Page << order;
        int[] sizes = [-1, 0, 1, 7, 8, Page - 1, Page, Page + 1, Big - 1, Big, Big + 1, pageSize * 2, int.MaxValue, int.MinValue];
        foreach (bool whole in (bool[])[false, true])
        {
            foreach (int size in sizes)
            {
                string at = $"{(whole ? "TryAlloc" : "TryAllocFrag")}({size}) on order {order}";
                bool ok = false;
                PagePoolBuffer buffer = default;
                Exception? e = Record.Exception(() => ok = whole ? pool.TryAlloc(size, out buffer) : pool.TryAllocFrag(size, out buffer));
                if (size >= 1 && size <= pageSize)
                {
                    Assert.True(e is null, $"{at} threw {e}");
                    Assert.True(ok, at);
                    Assert.Equal(size, buffer.Length);
                    buffer.Span.Fill(0x51);
                    PagePool.Free(buffer);
                }
                else
                {
                    ArgumentOutOfRangeException bad = Assert.IsType<ArgumentOutOfRangeException>(e);
                    Assert.Equal("size", bad.ParamName);
                    Assert.Equal(size, (int)bad.ActualValue!);
                    Assert.Contains($"The size must be between 1 and the pool's page size ({pageSize} bytes).", bad.Message, StringComparison.Ordinal);
                    Assert.True(buffer.IsEmpty, at);
                }

                Assert.True(pool.TryAllocFrag(64, out PagePoolBuffer after), at);
                PagePool.Free(after);
            }
        }

        PoolTesting.DisposeAndAssertNoLeak(pool, allocator);
    }
}
