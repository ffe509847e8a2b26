using CsCheck;
using PageFrag.Pages;
using PageFrag.Pool;
using PageFrag.Tests.Infrastructure;

namespace PageFrag.Tests.Model;

/// <summary>
/// Random sequences of page pool operations (whole pages, fragments, alloc by size with its truesize, puts
/// direct on the owner and through the ring from the owner or another thread, driver-managed fragmentation,
/// double puts, node changes, fault windows, destroy with pages in flight), run against the real pool and a
/// reference model of <c>pp_ref_count</c>, the owner's cache, the recycle ring, the fragment page, the
/// hold/release counts and every statistic. After every step the two must agree; CsCheck shrinks a failure
/// to a minimal sequence.
/// </summary>
/// <remarks>
/// Model pages are numbered as the pool takes them from the allocator and bound to the real page the first
/// time the real pool hands them out; a real page bound to two live model pages is a duplicate, one that
/// comes back under another model page was mixed up. Every buffer is stamped when handed out and checked
/// before it is put, so an overlap between live buffers shows as a broken stamp.
/// </remarks>
public class PagePoolModelTests
{
    private const long BiasMax = long.MaxValue >> 1;

    /// <summary>How the pool and its allocator are set up.</summary>
    /// <param name="Order">The pool's page order.</param>
    /// <param name="PoolSize">The recycle ring's size (a power of two here, so it is also its capacity).</param>
    /// <param name="LimitPages">The allocator's limit in pages, or 0 for none.</param>
    /// <param name="ReservePages">Pages at the top of the limit that only the pool's MayUseReserve allocations get (pfmemalloc).</param>
    private sealed record Setup(int Order, int PoolSize, int LimitPages, int ReservePages)
    {
        public int PageSize => 4096 << Order;

        public int PagesPerPage => 1 << Order;
    }

    private abstract record Op;

    private sealed record AllocNetMem : Op;

    private sealed record AllocPage : Op;

    private sealed record AllocFrag(int Size) : Op;

    private sealed record AllocBySize(int Size) : Op;

    /// <summary>How: 0 direct on the owner, 1 owner without allowDirect, 2 napi_pp_put_page on the owner, 3 from another thread.</summary>
    private sealed record Put(int Pick, int How) : Op;

    private sealed record Split(int Pick, int Pieces) : Op;

    private sealed record PutAgain(int Pick) : Op;

    private sealed record SetNode(int Node) : Op;

    private sealed record Faults(bool On) : Op;

    private sealed record Destroy : Op;

    private static Gen<Op> Ops(Setup setup)
    {
        Gen<int> size = Gen.Frequency(
            (6, Gen.Int[1, 512]),
            (3, Gen.Int[512, setup.PageSize / 2]),
            (2, Gen.Int[setup.PageSize / 2, setup.PageSize]));
        return Gen.Frequency(
            (6, Gen.Const((Op)new AllocNetMem())),
            (3, Gen.Const((Op)new AllocPage())),
            (14, size.Select(s => (Op)new AllocFrag(s))),
            (14, size.Select(s => (Op)new AllocBySize(s))),
            (36, Gen.Select(Gen.Int[0, 1000], Gen.Int[0, 3], (p, h) => (Op)new Put(p, h))),
            (3, Gen.Select(Gen.Int[0, 1000], Gen.Int[1, 4], (p, k) => (Op)new Split(p, k))),
            (2, Gen.Int[0, 1000].Select(p => (Op)new PutAgain(p))),
            (1, Gen.Int[-1, 1].Select(n => (Op)new SetNode(n))),
            (2, Gen.Bool.Select(on => (Op)new Faults(on))),
            (1, Gen.Const((Op)new Destroy())));
    }

    [Fact]
    public void The_pool_agrees_with_the_reference_model_on_order_0_pages_with_a_small_ring() =>
        Sample(new Setup(Order: 0, PoolSize: 8, LimitPages: 0, ReservePages: 0), iter: 500);

    [Fact]
    public void The_pool_agrees_with_the_reference_model_at_the_memory_limit_with_pfmemalloc_pages_from_the_reserve() =>
        Sample(new Setup(Order: 0, PoolSize: 16, LimitPages: 32, ReservePages: 16), iter: 500);

    [Fact]
    public void The_pool_agrees_with_the_reference_model_on_high_order_pages() =>
        Sample(new Setup(Order: 2, PoolSize: 4, LimitPages: 0, ReservePages: 0), iter: 400);

    private static void Sample(Setup setup, int iter) =>
        Ops(setup).Array[1, 100].Sample(ops => Run(setup, ops), iter: iter);

    /// <summary>The reference model: the kernel's rules over numbered pages, no memory.</summary>
    private sealed class Model(Setup setup)
    {
        public readonly Dictionary<int, long> PpRef = [];
        public readonly HashSet<int> PfMemalloc = [];
        public readonly List<int> Cache = [];
        public readonly Queue<int> Ring = new();
        public int FragPage = -1;
        public int FragOffset;
        public int FragLimit;
        public long FragUsers;
        public long Hold;
        public long Release;
        public bool Alive = true;
        public bool Released;
        public bool FaultsOn;
        public int Node;
        public PagePoolStats Stats;
        private int _nextPage;

        public long PagesInUse => (Hold - Release) * setup.PagesPerPage;

        /// <summary>TryAllocNetMemCore: cache, then the ring, then the allocator.</summary>
        public bool TryAllocPage(out int page)
        {
            if (Cache.Count > 0)
            {
                page = Pop();
                Stats = Stats with { AllocFast = Stats.AllocFast + 1 };
                return true;
            }

            if (Ring.Count == 0)
            {
                Stats = Stats with { AllocEmpty = Stats.AllocEmpty + 1 };
            }
            else
            {
                while (Cache.Count < PagePool.AllocCacheRefill && Ring.TryDequeue(out int p))
                {
                    if (Node == 0)
                    {
                        Cache.Add(p);
                    }
                    else
                    {
                        // Host pages are on node 0: a pool that prefers another node waives the page.
                        ReturnPage(p);
                        Stats = Stats with { AllocWaive = Stats.AllocWaive + 1 };
                        break;
                    }
                }

                if (Cache.Count > 0)
                {
                    page = Pop();
                    Stats = Stats with { AllocRefill = Stats.AllocRefill + 1 };
                    return true;
                }
            }

            if (setup.Order > 0)
            {
                if (TryTakeFromAllocator(out page))
                {
                    Stats = Stats with { AllocSlowHighOrder = Stats.AllocSlowHighOrder + 1 };
                    return true;
                }

                return false;
            }

            for (int i = 0; i < PagePool.AllocCacheRefill && TryTakeFromAllocator(out int p); i++)
            {
                Cache.Add(p);
            }

            if (Cache.Count == 0)
            {
                page = -1;
                return false;
            }

            page = Pop();
            Stats = Stats with { AllocSlow = Stats.AllocSlow + 1 };
            return true;
        }

        /// <summary>TryCarve: a piece of the fragment page, draining and refilling it when it is full.</summary>
        public bool TryCarve(int aligned, out int page, out int offset)
        {
            if (FragLimit != 0 && FragOffset + aligned <= FragLimit)
            {
                page = FragPage;
                offset = FragOffset;
                FragOffset += aligned;
                FragUsers++;
                return true;
            }

            offset = 0;
            page = FragLimit != 0 ? DrainFrag() : -1;
            FragPage = -1;
            FragLimit = 0;
            FragOffset = 0;
            FragUsers = 0;
            if (page < 0 && !TryAllocPage(out page))
            {
                return false;
            }

            PpRef[page] = BiasMax;
            FragPage = page;
            FragLimit = setup.PageSize;
            FragUsers = 1;
            FragOffset = aligned;
            return true;
        }

        /// <summary>page_pool_unref_netmem.</summary>
        public long Unref(int page, long count)
        {
            long v = PpRef[page];
            if (v == count)
            {
                PpRef[page] = 1;
                return 0;
            }

            v -= count;
            Assert.True(v >= 0, "the model dropped more references than it held");
            PpRef[page] = v == 0 ? 1 : v;
            return v;
        }

        /// <summary>The last reference was dropped: recycle (cache or ring) or release.</summary>
        public void PutUnrefed(int page, bool direct)
        {
            if (!PfMemalloc.Contains(page) && Alive)
            {
                if (direct)
                {
                    if (Cache.Count < PagePool.AllocCacheSize)
                    {
                        Cache.Add(page);
                        Stats = Stats with { RecycleCached = Stats.RecycleCached + 1 };
                        return;
                    }

                    Stats = Stats with { RecycleCacheFull = Stats.RecycleCacheFull + 1 };
                }

                if (Ring.Count < setup.PoolSize)
                {
                    Ring.Enqueue(page);
                    Stats = Stats with { RecycleRing = Stats.RecycleRing + 1 };
                    return;
                }

                Stats = Stats with { RecycleRingFull = Stats.RecycleRingFull + 1 };
                ReturnPage(page);
                return;
            }

            if (Alive)
            {
                Stats = Stats with { RecycleReleasedRefcnt = Stats.RecycleReleasedRefcnt + 1 };
            }

            ReturnPage(page);
        }

        public void Dispose()
        {
            Alive = false;
            if (FragLimit != 0)
            {
                int page = FragPage;
                long drain = BiasMax - FragUsers;
                FragPage = -1;
                FragLimit = 0;
                FragOffset = 0;
                FragUsers = 0;
                if (Unref(page, drain) == 0)
                {
                    ReturnPage(page);
                }
            }

            while (Cache.Count > 0)
            {
                ReturnPage(Pop());
            }

            while (Ring.TryDequeue(out int p))
            {
                ReturnPage(p);
            }

            Released |= Hold == Release;
        }

        private int DrainFrag()
        {
            int page = FragPage;
            if (Unref(page, BiasMax - FragUsers) != 0)
            {
                return -1;
            }

            if (!PfMemalloc.Contains(page))
            {
                // Every fragment is already back: the page is reused in place.
                Stats = Stats with { RecycleCached = Stats.RecycleCached + 1, AllocFast = Stats.AllocFast + 1 };
                return page;
            }

            Stats = Stats with { RecycleReleasedRefcnt = Stats.RecycleReleasedRefcnt + 1 };
            ReturnPage(page);
            return -1;
        }

        private bool TryTakeFromAllocator(out int page)
        {
            page = -1;
            if (FaultsOn)
            {
                return false;
            }

            long next = PagesInUse + setup.PagesPerPage;
            if (setup.LimitPages > 0 && next > setup.LimitPages)
            {
                return false;
            }

            page = _nextPage++;
            PpRef[page] = 1;
            if (setup.LimitPages > 0 && next > setup.LimitPages - setup.ReservePages)
            {
                PfMemalloc.Add(page);
            }

            Hold++;
            return true;
        }

        private void ReturnPage(int page)
        {
            PpRef.Remove(page);
            PfMemalloc.Remove(page);
            Release++;
            Released |= !Alive && Release == Hold;
        }

        private int Pop()
        {
            int page = Cache[^1];
            Cache.RemoveAt(Cache.Count - 1);
            return page;
        }
    }

    /// <summary>Something the test holds: a buffer, or a whole page as a NetMem (possibly split into pieces).</summary>
    private sealed class Held
    {
        public PagePoolBuffer Buffer;
        public NetMem NetMem;
        public bool IsNetMem;
        public int Page;
        public int Refs = 1;
        public byte Stamp;

        public Span<byte> Bytes => IsNetMem ? NetMem.Span : Buffer.Span;
    }

    private static void Run(Setup setup, Op[] ops)
    {
        int arenaSize = Math.Max(64 * 1024, setup.PageSize * 4);
        using var allocator = new PageAllocator(new PageAllocatorOptions
        {
            ArenaSize = setup.LimitPages > 0 ? setup.LimitPages * 4096 / 2 : arenaSize,
            MaxBytes = setup.LimitPages > 0 ? setup.LimitPages * 4096L : long.MaxValue,
            ReserveBytes = setup.ReservePages * 4096L,
        });
        var pool = new PagePool(new PagePoolOptions
        {
            Allocator = allocator,
            Order = setup.Order,
            PoolSize = setup.PoolSize,
            AllocFlags = setup.ReservePages > 0 ? AllocFlags.MayUseReserve : AllocFlags.None,

            // The release is driven by the puts in this test, not by the timer.
            ReleaseRetryPeriod = TimeSpan.FromHours(1),
        });
        var model = new Model(setup);
        var held = new List<Held>();
        var gone = new List<Held>();
        var bound = new Dictionary<int, (NetMemArea Area, nint Address)>();
        byte nextStamp = 0;

        foreach (Op op in ops)
        {
            switch (op)
            {
                case AllocNetMem or AllocPage or AllocFrag or AllocBySize when !model.Alive:
                    Assert.Throws<ObjectDisposedException>(() => AllocReal(pool, op));
                    break;

                case AllocNetMem:
                {
                    bool expected = model.TryAllocPage(out int page);
                    Assert.Equal(expected, pool.TryAllocNetMem(out NetMem m));
                    Assert.Equal(!expected, m.IsEmpty);
                    if (expected)
                    {
                        Accept(new Held { NetMem = m, IsNetMem = true, Page = page }, m);
                        Assert.Equal(setup.PageSize, m.Length);
                    }

                    break;
                }

                case AllocPage:
                {
                    bool expected = model.TryAllocPage(out int page);
                    Assert.Equal(expected, pool.TryAllocPage(out PagePoolBuffer b));
                    if (expected)
                    {
                        AcceptBuffer(b, page, offset: 0, length: setup.PageSize, trueSize: setup.PageSize, isFragment: false);
                    }

                    break;
                }

                case AllocFrag f:
                {
                    int aligned = (f.Size + 63) & ~63;
                    bool expected = model.TryCarve(aligned, out int page, out int offset);
                    Assert.Equal(expected, pool.TryAllocFrag(f.Size, out PagePoolBuffer b));
                    if (expected)
                    {
                        AcceptBuffer(b, page, offset, f.Size, aligned, isFragment: true);
                    }

                    break;
                }

                case AllocBySize s:
                {
                    bool actual = pool.TryAlloc(s.Size, out PagePoolBuffer b);
                    if (s.Size > setup.PageSize / 2)
                    {
                        bool expected = model.TryAllocPage(out int page);
                        Assert.Equal(expected, actual);
                        if (expected)
                        {
                            AcceptBuffer(b, page, 0, s.Size, setup.PageSize, isFragment: false);
                        }

                        break;
                    }

                    int aligned = (s.Size + 63) & ~63;
                    bool ok = model.TryCarve(aligned, out int fragPage, out int offset);
                    Assert.Equal(ok, actual);
                    if (ok)
                    {
                        int trueSize = aligned;
                        if (model.FragOffset + aligned > setup.PageSize)
                        {
                            // Too little left for another one: the tail is this buffer's cost.
                            trueSize = setup.PageSize - offset;
                            model.FragOffset = setup.PageSize;
                        }

                        AcceptBuffer(b, fragPage, offset, s.Size, trueSize, isFragment: true);
                    }

                    break;
                }

                case Put p when held.Count > 0:
                {
                    int i = p.Pick % held.Count;
                    Held h = held[i];
                    Assert.False(h.Bytes.ContainsAnyExcept(h.Stamp), $"{(h.IsNetMem ? h.NetMem : h.Buffer)} was overwritten while held");
                    PutReal(pool, h, p.How);
                    if (--h.Refs == 0)
                    {
                        held.RemoveAt(i);
                        gone.Add(h);
                    }

                    if (!h.IsNetMem && h.Buffer.IsFragment && p.How is 0 or 2 && model.FragLimit != 0 && h.Page == model.FragPage)
                    {
                        // The owner's free of a fragment of the page being carved goes back to the unused bias.
                        model.FragUsers--;
                    }
                    else if (model.Unref(h.Page, 1) == 0)
                    {
                        model.PutUnrefed(h.Page, direct: p.How is 0 or 2);
                    }

                    break;
                }

                case Split sp when held.Count > 0:
                {
                    Held h = held[sp.Pick % held.Count];
                    if (!h.IsNetMem || model.PpRef[h.Page] != 1)
                    {
                        break;
                    }

                    // page_pool_fragment_netmem: the holder hands out pieces and each piece is put on its own.
                    pool.FragmentNetMem(h.NetMem, sp.Pieces);
                    model.PpRef[h.Page] = sp.Pieces;
                    h.Refs = sp.Pieces;
                    break;
                }

                case PutAgain again when gone.Count > 0:
                {
                    Held h = gone[again.Pick % gone.Count];
                    Assert.Throws<PageFragDoubleFreeException>(() => PutReal(pool, h, how: 1));
                    break;
                }

                case SetNode n:
                {
                    if (!model.Alive)
                    {
                        Assert.Throws<ObjectDisposedException>(() => pool.SetNode(n.Node));
                        break;
                    }

                    pool.SetNode(n.Node);
                    model.Node = n.Node == -1 ? 0 : n.Node;
                    break;
                }

                case Faults fa:
                {
                    allocator.FaultInjection = fa.On ? new FaultInjection { FailEveryNth = 1 } : null;
                    model.FaultsOn = fa.On;
                    break;
                }

                case Destroy when model.Alive:
                {
                    pool.Dispose();
                    model.Dispose();
                    break;
                }
            }

            // After every step: the pool, its statistics and the allocator agree with the model.
            Assert.Equal(model.Cache.Count, pool.CachedPages);
            Assert.Equal(model.Ring.Count, pool.RingPages);
            Assert.Equal(model.FragOffset, pool.FragmentOffset);
            Assert.Equal(model.Hold, pool.PagesHeld);
            Assert.Equal(model.Release, pool.PagesReleased);
            Assert.Equal(!model.Alive, pool.IsDisposed);
            Assert.Equal(model.Released, pool.IsReleased);
            Assert.Equal(model.Stats, pool.GetStats());
            PageAllocatorStats stats = allocator.GetStats();
            Assert.True(stats.IsConsistent);
            Assert.Equal(model.PagesInUse, stats.PagesInUse);
            foreach (Held h in held)
            {
                NetMem m = h.IsNetMem ? h.NetMem : h.Buffer.NetMem;
                Assert.Equal(model.PpRef[h.Page], m.PpRefCount);
                Assert.Same(pool, m.Pool);
            }

            Prune();
        }

        allocator.FaultInjection = null;
        foreach (Held h in held)
        {
            Assert.False(h.Bytes.ContainsAnyExcept(h.Stamp), $"{(h.IsNetMem ? h.NetMem : h.Buffer)} was overwritten while held");
            for (int r = 0; r < h.Refs; r++)
            {
                PutReal(pool, h, how: 3);
            }
        }

        pool.Dispose();
        Assert.Equal(0, pool.InFlight);
        Assert.True(pool.IsReleased);
        Leaks.AssertNone(allocator);

        void AcceptBuffer(PagePoolBuffer b, int page, int offset, int length, int trueSize, bool isFragment)
        {
            Assert.Equal(offset, b.Offset);
            Assert.Equal(length, b.Length);
            Assert.Equal(trueSize, b.TrueSize);
            Assert.Equal(isFragment, b.IsFragment);
            Accept(new Held { Buffer = b, Page = page }, b.NetMem);
        }

        // Forgets the bindings of model pages the pool gave back: their real pages may come back under a new number.
        void Prune()
        {
            foreach (int page in bound.Keys.Where(k => !model.PpRef.ContainsKey(k)).ToList())
            {
                bound.Remove(page);
            }
        }

        void Accept(Held h, NetMem m)
        {
            // The model page and the real page must be one and the same, and no other live model page may be it.
            (NetMemArea Area, nint Address) real = (m.Owner, m.Address);
            Prune();
            if (bound.TryGetValue(h.Page, out var seen))
            {
                Assert.Equal(seen, real);
            }
            else
            {
                Assert.DoesNotContain(real, bound.Values);
                bound[h.Page] = real;
            }

            h.Stamp = ++nextStamp == 0 ? ++nextStamp : nextStamp;
            h.Bytes.Fill(h.Stamp);
            held.Add(h);
        }
    }

    private static void AllocReal(PagePool pool, Op op)
    {
        switch (op)
        {
            case AllocNetMem:
                pool.TryAllocNetMem(out _);
                break;
            case AllocPage:
                pool.TryAllocPage(out _);
                break;
            case AllocFrag f:
                pool.TryAllocFrag(f.Size, out _);
                break;
            case AllocBySize s:
                pool.TryAlloc(s.Size, out _);
                break;
        }
    }

    private static void PutReal(PagePool pool, Held h, int how)
    {
        if (h.IsNetMem)
        {
            NetMem m = h.NetMem;
            switch (how)
            {
                case 0:
                    pool.RecycleDirect(m);
                    break;
                case 1:
                    pool.PutPage(m, 100, allowDirect: false);
                    break;
                case 2:
                    pool.PutFullPage(m, allowDirect: true);
                    break;
                default:
                    OtherThread.Run(() => pool.PutFullPage(m, allowDirect: true));
                    break;
            }

            return;
        }

        PagePoolBuffer b = h.Buffer;
        switch (how)
        {
            case 0:
                pool.PutBuffer(b, allowDirect: true);
                break;
            case 1:
                pool.PutBuffer(b, allowDirect: false);
                break;
            case 2:
                PagePool.Free(b);
                break;
            default:
                OtherThread.Run(b.Free);
                break;
        }
    }
}
