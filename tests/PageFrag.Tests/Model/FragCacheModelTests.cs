using CsCheck;
using PageFrag.Frag;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;

namespace PageFrag.Tests.Model;

/// <summary>
/// Random sequences of every cache operation, run against the real cache and against a small reference
/// model of the kernel's semantics (page identity, offset, bias, page refcounts, reuse, order-0 fallback).
/// After every step the observable state must agree; CsCheck shrinks a failure to a minimal sequence.
/// </summary>
public class FragCacheModelTests
{
    private const int Bias = 32768;

    private abstract record Op;

    private sealed record Alloc(int Size, int Align) : Op;

    private sealed record PrepareCommit(int MinSize, int Align, int UsedPercent, bool Coalesce) : Op;

    private sealed record Probe(int MinSize) : Op;

    private sealed record FreeOne(int Pick, int How) : Op;

    private sealed record AbortLast : Op;

    private sealed record DrainCache : Op;

    private static readonly Gen<int> s_size = Gen.Frequency(
        (6, Gen.Int[1, 300]),
        (3, Gen.Int[300, 4096]),
        (1, Gen.Int[4097, 32768]));

    private static readonly Gen<int> s_align = Gen.Frequency((4, Gen.Const(1)), (1, Gen.OneOf(Gen.Const(8), Gen.Const(64), Gen.Const(4096))));

    private static readonly Gen<Op> s_op = Gen.Frequency(
        (30, Gen.Select(s_size, s_align, (s, a) => (Op)new Alloc(s, a))),
        (12, Gen.Select(s_size, s_align, Gen.Int[1, 100], Gen.Bool, (s, a, u, c) => (Op)new PrepareCommit(s, a, u, c))),
        (4, s_size.Select(s => (Op)new Probe(s))),
        (35, Gen.Select(Gen.Int[0, 1000], Gen.Int[0, 2], (p, h) => (Op)new FreeOne(p, h))),
        (5, Gen.Const((Op)new AbortLast())),
        (2, Gen.Const((Op)new DrainCache())));

    /// <summary>The reference model: just the kernel's rules, no memory.</summary>
    private sealed class Model
    {
        public readonly Dictionary<int, int> PageRefs = [];
        public readonly List<(int Page, int Offset, int Length, int TrueSize)> Live = [];
        public int Page = -1;
        public int Size;
        public int Offset;
        public int CacheBias;
        public int NextPage;
        public long Allocated;
        public long Reused;
        public int OrderZeroPageSize = 32768;

        /// <summary>Where the next fragment of <paramref name="size"/> would go, refilling like the kernel.</summary>
        public bool Reserve(int size, int align, out int offset)
        {
            offset = (Offset + align - 1) & ~(align - 1);
            if (Page >= 0 && offset + size <= Size)
            {
                return true;
            }

            if (Page >= 0)
            {
                if (size > 4096 && Size == 4096)
                {
                    return false;
                }

                PageRefs[Page] -= CacheBias;
                if (PageRefs[Page] == 0)
                {
                    PageRefs[Page] = Bias + 1;
                    CacheBias = Bias + 1;
                    Offset = 0;
                    offset = 0;
                    Reused++;
                    return true;
                }

                Page = -1;
            }

            Page = NextPage++;
            Size = OrderZeroPageSize;
            PageRefs[Page] = 1 + Bias;
            CacheBias = Bias + 1;
            Offset = 0;
            offset = 0;
            Allocated++;
            return size <= Size;
        }

        public (int Offset, int TrueSize) Take(int offset, int used)
        {
            int trueSize = offset + used - Offset;
            CacheBias--;
            Offset = offset + used;
            return (offset, trueSize);
        }

        public void Put(int page, int n)
        {
            PageRefs[page] -= n;
            if (PageRefs[page] == 0)
            {
                PageRefs.Remove(page);
            }
        }
    }

    [Fact]
    public void The_cache_agrees_with_the_reference_model_on_random_operation_sequences() =>
        s_op.Array[1, 120].Sample(ops => Run(ops, orderZeroOnly: false), iter: 1500);

    [Fact]
    public void The_cache_agrees_with_the_reference_model_when_only_order_zero_pages_are_available() =>
        s_op.Array[1, 120].Sample(ops => Run(ops, orderZeroOnly: true), iter: 700);

    private static void Run(Op[] ops, bool orderZeroOnly)
    {
        using var allocator = new PageAllocator(new PageAllocatorOptions
        {
            // One 4 MiB arena holds 128 order-3 pages, more than a sequence can keep in flight, so the
            // opportunistic order-3 attempt never fails for lack of memory and the model need not model the buddy.
            ArenaSize = 4 << 20,
            FaultInjection = orderZeroOnly ? new FaultInjection { FailOrderAtLeast = 3 } : null,
        });
        var cache = new PageFragCache(allocator);
        var model = new Model { OrderZeroPageSize = orderZeroOnly ? 4096 : 32768 };
        var live = new List<PageFragment>();
        var pageOf = new Dictionary<int, Page>();
        PageFragment last = default;

        foreach (Op op in ops)
        {
            switch (op)
            {
                case Alloc a:
                {
                    bool expected = model.Reserve(a.Size, a.Align, out int offset);
                    bool actual = cache.TryAlloc(a.Size, a.Align, out PageFragment f);
                    Assert.Equal(expected, actual);
                    if (actual)
                    {
                        (int o, int t) = model.Take(offset, a.Size);
                        Accept(f, o, a.Size, t);
                    }

                    break;
                }

                case PrepareCommit p:
                {
                    bool expected = model.Reserve(p.MinSize, p.Align, out int offset);
                    bool actual = cache.TryPrepare(p.MinSize, p.Align, out PreparedFragment prep);
                    Assert.Equal(expected, actual);
                    if (!actual)
                    {
                        break;
                    }

                    Assert.Equal(offset, prep.Offset);
                    Assert.Equal(model.Size - offset, prep.Size);
                    Assert.True(cache.TryProbe(p.MinSize, p.Align, out PreparedFragment probed));
                    Assert.Equal(prep.Address, probed.Address);
                    Assert.Equal(prep.Size, probed.Size);
                    int used = Math.Max(1, (int)((long)prep.Size * p.UsedPercent / 100));
                    bool canCoalesce = p.Coalesce && !last.IsEmpty && live.Contains(last) &&
                        last.Page == prep.Page && last.Address + last.Length == prep.Address;
                    if (canCoalesce)
                    {
                        int index = live.IndexOf(last);
                        int added = cache.CommitNoRef(prep, used, ref last);
                        Assert.Equal(used, added);
                        live[index] = last;
                        var m = model.Live[index];
                        model.Live[index] = (m.Page, m.Offset, m.Length + used, m.TrueSize + used);
                        model.Offset += used;
                    }
                    else
                    {
                        PageFragment f = cache.Commit(prep, used);
                        (int o, int t) = model.Take(offset, used);
                        Accept(f, o, used, t);
                    }

                    break;
                }

                case Probe pr:
                {
                    int offset = model.Offset;
                    bool expected = model.Page >= 0 && offset + pr.MinSize <= model.Size;
                    Assert.Equal(expected, cache.TryProbe(pr.MinSize, out PreparedFragment probed));
                    if (expected)
                    {
                        Assert.Equal(model.Size - offset, probed.Size);
                    }

                    break;
                }

                case FreeOne fr when live.Count > 0:
                {
                    int i = fr.Pick % live.Count;
                    PageFragment f = live[i];
                    switch (fr.How)
                    {
                        case 0:
                            PageFragCache.Free(f.Address);
                            break;
                        case 1:
                            f.Free();
                            break;
                        default:
                            cache.FreeLocal(f);
                            break;
                    }

                    if (fr.How == 2 && model.Live[i].Page == model.Page)
                    {
                        // The owner's free of a fragment on the current page goes back to the bias.
                        model.CacheBias++;
                    }
                    else
                    {
                        model.Put(model.Live[i].Page, 1);
                    }
                    live.RemoveAt(i);
                    model.Live.RemoveAt(i);
                    break;
                }

                case AbortLast when !last.IsEmpty && live.Count > 0 && live[^1] == last && model.Page == model.Live[^1].Page &&
                                    model.Live[^1].Offset + model.Live[^1].Length == model.Offset:
                {
                    cache.Abort(last);
                    model.CacheBias++;
                    model.Offset -= model.Live[^1].TrueSize;
                    live.RemoveAt(live.Count - 1);
                    model.Live.RemoveAt(model.Live.Count - 1);
                    last = default;
                    break;
                }

                case DrainCache:
                {
                    cache.Drain();
                    if (model.Page >= 0)
                    {
                        model.Put(model.Page, model.CacheBias);
                        model.Page = -1;
                        model.Offset = 0;
                    }

                    break;
                }
            }

            // After every step: the observable state agrees with the model.
            Assert.Equal(model.Offset, cache.Offset);
            Assert.Equal(model.Page >= 0 ? model.CacheBias : 0, cache.Bias);
            Assert.Equal(model.Page >= 0 ? model.Size : 0, cache.CurrentPageSize);
            Assert.Equal(model.Allocated, cache.PagesAllocated);
            Assert.Equal(model.Reused, cache.PagesReused);
            if (model.Page >= 0)
            {
                pageOf[model.Page] = cache.CurrentPage;
                Assert.Equal(model.PageRefs[model.Page], cache.CurrentPage.RefCount);
            }

            foreach ((int page, int refs) in model.PageRefs)
            {
                if (pageOf.TryGetValue(page, out Page real))
                {
                    Assert.Equal(refs, real.RefCount);
                }
            }

            Assert.Equal(model.PageRefs.Count, allocator.PagesInUse / (orderZeroOnly ? 1 : 8));
        }

        foreach (PageFragment f in live)
        {
            f.Free();
        }

        cache.Drain();
        Leaks.AssertNone(allocator);

        void Accept(PageFragment f, int offset, int length, int trueSize)
        {
            Assert.Equal(offset, f.PageOffset);
            Assert.Equal(length, f.Length);
            Assert.Equal(trueSize, f.TrueSize);
            Assert.Equal(model.Page >= 0 ? model.Size : 0, cache.CurrentPageSize);
            live.Add(f);
            model.Live.Add((model.Page, offset, length, trueSize));
            model.PageRefs[model.Page] += 0; // the page reference of a fragment is part of the bias already
            last = f;
        }
    }
}
