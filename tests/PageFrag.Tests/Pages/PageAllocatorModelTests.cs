using CsCheck;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;
using static PageFrag.Tests.Pages.PageTestKit;

namespace PageFrag.Tests.Pages;

/// <summary>
/// Random operation sequences checked step by step against a model of what the allocator must hold.
/// </summary>
public class PageAllocatorModelTests
{
    private const int ArenaPages = 16;
    private const int MaxArenas = 4;
    private const int MaxPages = ArenaPages * MaxArenas;
    private const int ReservePages = 8;
    private const int Watermark = MaxPages - ReservePages;

    [Fact]
    public void Random_operation_sequences_keep_the_allocator_in_line_with_a_model()
    {
        Gen<(int Kind, int Order, int Pick)> op = Gen.Select(Gen.Int[0, 9], Gen.Int[0, 4], Gen.Int[0, 1000]);
        op.Array[1, 80].Sample(Run, iter: 300);
    }

    private static void Run((int Kind, int Order, int Pick)[] ops)
    {
        using PageAllocator allocator = Leaks.NewAllocator(SmallArena, maxBytes: MaxArenas * SmallArena, reserveBytes: ReservePages * 4096);
        var model = new Model();
        long stamp = 0;
        foreach ((int kind, int order, int pick) in ops)
        {
            switch (kind)
            {
                case <= 2:
                    Allocate(allocator, model, order, AllocFlags.None, ++stamp);
                    break;
                case 3:
                    Allocate(allocator, model, order, AllocFlags.MayUseReserve, ++stamp);
                    break;
                case 4:
                    Allocate(allocator, model, order, AllocFlags.Opportunistic, ++stamp);
                    break;
                case 5 or 6 when model.Held.Count > 0:
                    {
                        int i = pick % model.Held.Count;
                        Held h = model.Held[i];
                        allocator.FreePages(h.Page);
                        if (--h.Refs == 0)
                        {
                            model.Held.RemoveAt(i);
                            Assert.Equal(0, h.Page.RefCount);
                        }

                        break;
                    }

                case 7 when model.Held.Count > 0:
                    {
                        Held h = model.Held[pick % model.Held.Count];
                        h.Page.AddRef();
                        h.Refs++;
                        break;
                    }

                case 8:
                    allocator.DrainPerCpuLists();
                    Assert.Equal(0, allocator.GetStats().CachedPages);
                    break;
                case 9:
                    {
                        int before = allocator.GetStats().Arenas;
                        int released = allocator.Trim();
                        int arenasInUse = model.Held.Select(h => h.Page.Arena).Distinct().Count();

                        // After Trim's drain, an arena is entirely free exactly when no held block lies in it.
                        Assert.Equal(arenasInUse, before - released);
                        Assert.Equal(arenasInUse, allocator.GetStats().Arenas);
                        model.Trimmed += released;
                        break;
                    }
            }

            Check(allocator, model);
        }

        foreach (Held h in model.Held)
        {
            for (int r = 0; r < h.Refs; r++)
            {
                allocator.FreePages(h.Page);
            }
        }

        AssertClean(allocator);
    }

    private static void Allocate(PageAllocator allocator, Model model, int order, AllocFlags flags, long stamp)
    {
        int pages = 1 << order;
        int arenasBefore = allocator.GetStats().Arenas;
        bool reserve = flags == AllocFlags.MayUseReserve;
        int limit = reserve ? MaxPages : Watermark;

        bool ok = allocator.TryAllocPages(order, flags, out Page page);
        if (model.InUse + pages > limit)
        {
            Assert.False(ok, $"order {order} ({flags}) passed the limit with {model.InUse} pages in use");
        }
        else if (flags != AllocFlags.Opportunistic && (order == 0 || arenasBefore < MaxArenas))
        {
            // Within the limit, a single page is always found (after a drain) and a fresh arena fits any order.
            Assert.True(ok, $"order {order} ({flags}) failed with {model.InUse} pages in use and {arenasBefore} arenas");
        }

        if (flags == AllocFlags.Opportunistic)
        {
            // Only the very first arena of an allocator that has none may come from an opportunistic attempt.
            Assert.True(allocator.GetStats().Arenas <= Math.Max(arenasBefore, 1), "an opportunistic allocation grew the arenas");
        }

        if (!ok)
        {
            Assert.True(page.IsEmpty);
            model.Failures++;
            return;
        }

        Assert.Equal(order, page.Order);
        Assert.Equal(1, page.RefCount);
        bool fromReserve = reserve && model.InUse + pages > Watermark;
        Assert.Equal(fromReserve, page.IsPfMemalloc);
        foreach (Held other in model.Held)
        {
            Assert.True(
                page.Address + page.Length <= other.Page.Address || other.Page.Address + other.Page.Length <= page.Address,
                $"{page} overlaps the held {other.Page}");
        }

        Stamp(page, stamp);
        model.Held.Add(new Held(page, stamp));
        model.Allocations++;
        model.PfMemalloc += fromReserve ? 1 : 0;
    }

    private static void Check(PageAllocator allocator, Model model)
    {
        PageAllocatorStats stats = allocator.GetStats();
        Assert.True(stats.IsConsistent, stats.ToString());
        Assert.Equal(model.InUse, stats.PagesInUse);
        Assert.Equal(stats.Arenas * (long)ArenaPages, stats.TotalPages);
        Assert.True(stats.Arenas <= MaxArenas);
        Assert.Equal(model.Allocations, stats.Allocations);
        Assert.Equal(model.Failures, stats.Failures);
        Assert.Equal(model.PfMemalloc, stats.PfMemallocAllocations);
        Assert.Equal(model.Trimmed, stats.ArenasTrimmed);
        Assert.Equal(stats.FreePages, stats.FreeBlocksPerOrder.Select((n, o) => (long)n << o).Sum());

        foreach (Held h in model.Held)
        {
            Assert.True(HasStamp(h.Page, h.Stamp), $"{h.Page} lost its contents");
            Assert.Equal(h.Refs, h.Page.RefCount);
            Assert.True(PageAllocator.TryGetPage(h.Page.Address + h.Page.Length - 1, out Page found));
            Assert.Equal(h.Page, found);
        }
    }

    private sealed class Model
    {
        public List<Held> Held { get; } = [];

        public long InUse => Held.Sum(h => (long)h.Page.Length / 4096);

        public long Allocations { get; set; }

        public long Failures { get; set; }

        public long PfMemalloc { get; set; }

        public long Trimmed { get; set; }
    }

    private sealed class Held(Page page, long stamp)
    {
        public Page Page { get; } = page;

        public long Stamp { get; } = stamp;

        public int Refs { get; set; } = 1;
    }
}
