using System.Buffers;
using System.Buffers.Binary;
using PageFrag.Buffers;
using PageFrag.Frag;
using PageFrag.Pages;
using PageFrag.Pool;
using PageFrag.Providers;
using PageFrag.Tests.Infrastructure;

namespace PageFrag.Tests.Faults;

/// <summary>
/// Every public entry point that takes memory, under every kind of allocation failure: orders above 0 failing,
/// every allocation failing, the memory limit reached, and only the reserve left. Each combination checks the
/// documented failure result (a false with an empty handle, or <see cref="InsufficientMemoryException"/> where
/// the .NET contract has no way to say no), that a repeated failure takes nothing more, that nothing held before
/// was corrupted, that the entry point works again once memory is back, and that no page leaked.
/// </summary>
/// <remarks>
/// Where the documented result is success instead (the fragment cache's order-0 fallback, reserve allocations
/// when only the reserve is left, provider memory that the allocator's faults do not touch), the test checks
/// that too, and that pages taken from the reserve are marked pfmemalloc.
/// </remarks>
public class FaultMatrixTests
{
    public enum Fault
    {
        /// <summary>Every allocation of order 1 or more fails (memory too fragmented for high orders).</summary>
        HighOrderFailing,

        /// <summary>Every allocation fails (fail_page_alloc with probability 1).</summary>
        EveryAllocationFailing,

        /// <summary>The memory limit is reached, reserve included.</summary>
        LimitReached,

        /// <summary>Everything up to the reserve watermark is taken: only reserve allocations succeed.</summary>
        OnlyReserveLeft,
    }

    /// <summary>One entry point: what it needs from the allocator, and how to open a session over it.</summary>
    /// <param name="NeedsHighOrder">Its request cannot be met by order-0 pages.</param>
    /// <param name="UsesAllocator">False for provider memory, which the allocator's faults do not touch.</param>
    /// <param name="UsesReserve">It may dip into the reserve (MayUseReserve).</param>
    /// <param name="RecoversInPlace">False where the documented behaviour keeps failing until the caller drains (the
    /// cache keeps an order-0 page and fails over-page requests on it, as the kernel does).</param>
    private sealed record EntryPoint(string Name, bool NeedsHighOrder, bool UsesAllocator, bool UsesReserve, bool RecoversInPlace, Func<PageAllocator, Session> Open);

    private static readonly EntryPoint[] s_entryPoints =
    [
        Cache("PageFragCache.TryAlloc(100)", AllocFlags.None, c => (c.TryAlloc(100, out PageFragment f), f)),
        Cache("PageFragCache.TryAlloc(100, 64)", AllocFlags.None, c => (c.TryAlloc(100, 64, out PageFragment f), f)),
        Cache("PageFragCache.TryRefill(2000)", AllocFlags.None, c => (c.TryRefill(2000, out PageFragment f), f)),
        Cache("PageFragCache.TryPrepare(500) + Commit", AllocFlags.None, c => c.TryPrepare(500, out PreparedFragment p) ? (true, c.Commit(p, 500)) : (false, default)),
        Cache("PageFragCache.TryAlloc(8000)", AllocFlags.None, c => (c.TryAlloc(8000, out PageFragment f), f), needsHighOrder: true, recoversInPlace: false),
        Cache("PageFragCache(MayUseReserve).TryAlloc(100)", AllocFlags.MayUseReserve, c => (c.TryAlloc(100, out PageFragment f), f)),
        Pool("PagePool.TryAllocNetMem", p => p.TryAllocNetMem(out NetMem m) ? (true, new PagePoolBuffer?(), m) : (false, null, m)),
        Pool("PagePool.TryAllocPage", p => (p.TryAllocPage(out PagePoolBuffer b), b, b.NetMem)),
        Pool("PagePool.TryAllocFrag(300)", p => (p.TryAllocFrag(300, out PagePoolBuffer b), b, b.NetMem)),
        Pool("PagePool.TryAlloc(3000)", p => (p.TryAlloc(3000, out PagePoolBuffer b), b, b.NetMem)),
        Pool("PagePool(order 1).TryAllocNetMem", p => p.TryAllocNetMem(out NetMem m) ? (true, new PagePoolBuffer?(), m) : (false, null, m), order: 1),
        Pool("PagePool(MayUseReserve).TryAllocFrag(300)", p => (p.TryAllocFrag(300, out PagePoolBuffer b), b, b.NetMem), reserve: true),
        Pool("PagePool(HostPageProvider).TryAllocNetMem", p => p.TryAllocNetMem(out NetMem m) ? (true, new PagePoolBuffer?(), m) : (false, null, m), provider: Provider.Host),
        Pool("PagePool(RegionMemoryProvider).TryAllocFrag(300)", p => (p.TryAllocFrag(300, out PagePoolBuffer b), b, b.NetMem), provider: Provider.Region),
        new("FragBufferWriter.GetMemory(1000)", false, true, false, true, a => new WriterSession(a, 1000)),
        new("FragBufferWriter.GetMemory(20000)", true, true, false, true, a => new WriterSession(a, 20000)),
        new("PageFragMemoryPool.Rent(1000)", false, true, false, true, a => new MemoryPoolSession(a, 1000)),
        new("PageFragMemoryPool.Rent(20000)", true, true, false, true, a => new MemoryPoolSession(a, 20000)),
    ];

    public static TheoryData<string, Fault> Cases()
    {
        var data = new TheoryData<string, Fault>();
        foreach (EntryPoint entry in s_entryPoints)
        {
            foreach (Fault fault in Enum.GetValues<Fault>())
            {
                data.Add(entry.Name, fault);
            }
        }

        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Under_each_fault_an_entry_point_gives_its_documented_result_corrupts_nothing_recovers_and_leaks_nothing(string name, Fault fault)
    {
        EntryPoint entry = s_entryPoints.Single(e => e.Name == name);

        // One arena of 128 pages, the top 16 reserved. A bystander cache holds stamped fragments throughout.
        using var allocator = new PageAllocator(new PageAllocatorOptions { ArenaSize = 512 * 1024, MaxBytes = 512 * 1024, ReserveBytes = 64 * 1024 });
        var bystander = new PageFragCache(allocator);
        var held = new List<PageFragment>();
        for (int i = 0; i < 3; i++)
        {
            Assert.True(bystander.TryAlloc(1000, out PageFragment f));
            f.Span.Fill((byte)(i + 1));
            held.Add(f);
        }

        using (Session session = entry.Open(allocator))
        {
            Assert.True(session.Call(), $"{name} failed before any fault");
            session.ForceRefill();

            var hog = new List<Page>();
            Apply(allocator, fault, hog);
            bool expectFailure = entry.UsesAllocator && fault switch
            {
                Fault.HighOrderFailing => entry.NeedsHighOrder,
                Fault.OnlyReserveLeft => !entry.UsesReserve,
                _ => true,
            };

            bool ok = session.Call();
            Assert.True(ok != expectFailure, $"{name} under {fault}: {(ok ? "succeeded" : "failed")}");
            if (ok && fault == Fault.OnlyReserveLeft && entry.UsesAllocator)
            {
                Assert.True(session.LastIsPfMemalloc, $"{name} got a page that is not marked pfmemalloc while only the reserve was left");
            }

            if (!ok)
            {
                // A repeated failure takes nothing more and leaves the allocator's books straight.
                long inUse = allocator.PagesInUse;
                Assert.False(session.Call(), $"{name} under {fault} succeeded on the second try");
                if (session.SameStateOnRepeat)
                {
                    Assert.Equal(inUse, allocator.PagesInUse);
                }

                Assert.True(allocator.GetStats().IsConsistent);
            }

            // Memory comes back: the entry point works again.
            allocator.FaultInjection = null;
            foreach (Page page in hog)
            {
                allocator.FreePages(page);
            }

            if (!entry.RecoversInPlace)
            {
                session.ForceRefill();
            }

            Assert.True(session.Call(), $"{name} did not recover after {fault}");
            session.CheckIntact();
        }

        for (int i = 0; i < held.Count; i++)
        {
            Assert.False(held[i].Span.ContainsAnyExcept((byte)(i + 1)), "a fragment held through the fault was overwritten");
            held[i].Free();
        }

        bystander.Drain();
        Leaks.AssertNone(allocator);
    }

    private static void Apply(PageAllocator allocator, Fault fault, List<Page> hog)
    {
        switch (fault)
        {
            case Fault.HighOrderFailing:
                allocator.FaultInjection = new FaultInjection { FailOrderAtLeast = 1 };
                break;
            case Fault.EveryAllocationFailing:
                allocator.FaultInjection = new FaultInjection { FailEveryNth = 1 };
                break;
            default:
                AllocFlags flags = fault == Fault.LimitReached ? AllocFlags.MayUseReserve : AllocFlags.None;
                while (allocator.TryAllocPages(0, flags, out Page page))
                {
                    hog.Add(page);
                }

                PageAllocatorStats stats = allocator.GetStats();
                Assert.Equal(fault == Fault.LimitReached ? stats.MaxPages : stats.MaxPages - stats.ReservePages, stats.PagesInUse);
                break;
        }
    }

    // ------------------------------------------------------------------ sessions

    /// <summary>An entry point opened over an allocator: calls it, holds and stamps what it gave, gives it all back.</summary>
    private abstract class Session : IDisposable
    {
        private long _nextId;

        /// <summary>Calls the entry point once; true on success (the result is stamped and held), false on its
        /// documented failure (checked).</summary>
        public abstract bool Call();

        /// <summary>Makes the next call need a new page (drain, trim, or a fresh pool).</summary>
        public abstract void ForceRefill();

        public abstract bool LastIsPfMemalloc { get; }

        /// <summary>False where a repeated call may legitimately take a page (the memory pool's per-CPU caches: the
        /// thread may run on another CPU, whose cache is still empty, the second time).</summary>
        public virtual bool SameStateOnRepeat => true;

        /// <summary>Checks every stamp held.</summary>
        public abstract void CheckIntact();

        public abstract void Dispose();

        protected long NextId() => ++_nextId;

        protected static void Write(Span<byte> span, long id)
        {
            span.Fill((byte)id);
            BinaryPrimitives.WriteInt64LittleEndian(span, id);
        }

        protected static void Check(ReadOnlySpan<byte> span, long id)
        {
            Assert.Equal(id, BinaryPrimitives.ReadInt64LittleEndian(span));
            Assert.False(span[8..].ContainsAnyExcept((byte)id), $"buffer {id} was overwritten");
        }
    }

    private static EntryPoint Cache(string name, AllocFlags flags, Func<PageFragCache, (bool, PageFragment)> call, bool needsHighOrder = false, bool recoversInPlace = true) =>
        new(name, needsHighOrder, true, flags == AllocFlags.MayUseReserve, recoversInPlace, a => new CacheSession(new PageFragCache(a, flags), call));

    private sealed class CacheSession(PageFragCache cache, Func<PageFragCache, (bool, PageFragment)> call) : Session
    {
        private readonly List<(PageFragment Fragment, long Id)> _held = [];

        public override bool LastIsPfMemalloc => cache.CurrentPage.IsPfMemalloc;

        public override bool Call()
        {
            (bool ok, PageFragment f) = call(cache);
            Assert.Equal(!ok, f.IsEmpty);
            if (ok)
            {
                long id = NextId();
                Write(f.Span, id);
                _held.Add((f, id));
            }

            return ok;
        }

        public override void ForceRefill() => cache.Drain();

        public override void CheckIntact() => _held.ForEach(h => Check(h.Fragment.Span, h.Id));

        public override void Dispose()
        {
            CheckIntact();
            _held.ForEach(h => h.Fragment.Free());
            cache.Drain();
        }
    }

    private enum Provider
    {
        None,
        Host,
        Region,
    }

    private static EntryPoint Pool(string name, Func<PagePool, (bool, PagePoolBuffer?, NetMem)> call, int order = 0, bool reserve = false, Provider provider = Provider.None) =>
        new(name, order > 0, provider != Provider.Region, reserve, true, a => new PoolSession(a, call, order, reserve, provider));

    private sealed class PoolSession : Session
    {
        private readonly PageAllocator _allocator;
        private readonly Func<PagePool, (bool, PagePoolBuffer?, NetMem)> _call;
        private readonly int _order;
        private readonly bool _reserve;
        private readonly RegionMemoryProvider? _region;
        private readonly Provider _provider;
        private readonly List<(PagePoolBuffer? Buffer, NetMem Page, long Id)> _held = [];
        private PagePool _pool;
        private NetMem _last;

        public PoolSession(PageAllocator allocator, Func<PagePool, (bool, PagePoolBuffer?, NetMem)> call, int order, bool reserve, Provider provider)
        {
            _allocator = allocator;
            _call = call;
            _order = order;
            _reserve = reserve;
            _provider = provider;
            _region = provider == Provider.Region ? RegionMemoryProvider.FromArray(new byte[32 * 4096]) : null;
            _pool = NewPool();
        }

        public override bool LastIsPfMemalloc => _last.TryGetPage(out Page page) && page.IsPfMemalloc;

        public override bool Call()
        {
            (bool ok, PagePoolBuffer? buffer, NetMem page) = _call(_pool);
            Assert.Equal(!ok, page.IsEmpty);
            if (ok)
            {
                long id = NextId();
                Write(buffer is PagePoolBuffer b ? b.Span : page.Span, id);
                _held.Add((buffer, page, id));
                _last = page;
            }

            return ok;
        }

        /// <summary>Gives everything back and starts a fresh pool, whose cache is empty.</summary>
        public override void ForceRefill()
        {
            PutAll();
            _pool.Dispose();
            Assert.True(_pool.IsReleased);
            _pool = NewPool();
        }

        public override void CheckIntact() => _held.ForEach(h => Check(h.Buffer is PagePoolBuffer b ? b.Span : h.Page.Span, h.Id));

        public override void Dispose()
        {
            PutAll();
            _pool.Dispose();
            Assert.True(_pool.IsReleased);
            _region?.Dispose();
        }

        private void PutAll()
        {
            CheckIntact();
            foreach ((PagePoolBuffer? buffer, NetMem page, _) in _held)
            {
                if (buffer is PagePoolBuffer b)
                {
                    b.Free();
                }
                else
                {
                    _pool.RecycleDirect(page);
                }
            }

            _held.Clear();
        }

        private PagePool NewPool() => new(new PagePoolOptions
        {
            Allocator = _allocator,
            Order = _order,
            AllocFlags = _reserve ? AllocFlags.MayUseReserve : AllocFlags.None,
            MemoryProvider = _provider switch
            {
                Provider.Host => new HostPageProvider(_allocator),
                Provider.Region => _region,
                _ => null,
            },
        });
    }

    private sealed class WriterSession(PageAllocator allocator, int hint) : Session
    {
        private readonly PageFragCache _cache = new(allocator);
        private readonly List<(FragmentChain Chain, long Id)> _held = [];
        private FragBufferWriter? _writer;

        public override bool LastIsPfMemalloc => false;

        public override bool Call()
        {
            _writer ??= new FragBufferWriter(_cache);
            Memory<byte> memory;
            try
            {
                memory = _writer.GetMemory(hint);
            }
            catch (InsufficientMemoryException e)
            {
                Assert.StartsWith($"The PageAllocator could not supply {hint} bytes", e.Message, StringComparison.Ordinal);
                Assert.Equal(0, _writer.WrittenCount);
                return false;
            }

            Assert.True(memory.Length >= hint);
            long id = NextId();
            Write(memory.Span[..hint], id);
            _writer.Advance(hint);
            _held.Add((_writer.Detach(), id));
            return true;
        }

        public override void ForceRefill() => _cache.Drain();

        public override void CheckIntact()
        {
            foreach ((FragmentChain chain, long id) in _held)
            {
                Assert.Equal(hint, chain.Length);
                Check(chain.Sequence.ToArray(), id);
            }
        }

        public override void Dispose()
        {
            CheckIntact();
            _held.ForEach(h => h.Chain.Dispose());
            _writer?.Dispose();
            _cache.Drain();
        }
    }

    private sealed class MemoryPoolSession(PageAllocator allocator, int size) : Session
    {
        private readonly PageFragMemoryPool _pool = new(new PageFragMemoryPoolOptions { Allocator = allocator });
        private readonly List<(IMemoryOwner<byte> Owner, long Id)> _held = [];

        public override bool LastIsPfMemalloc => false;

        public override bool SameStateOnRepeat => false;

        public override bool Call()
        {
            IMemoryOwner<byte> owner;
            try
            {
                owner = _pool.Rent(size);
            }
            catch (InsufficientMemoryException e)
            {
                Assert.StartsWith("The PageAllocator could not supply", e.Message, StringComparison.Ordinal);
                return false;
            }

            Assert.True(owner.Memory.Length >= size);
            long id = NextId();
            Write(owner.Memory.Span, id);
            _held.Add((owner, id));
            return true;
        }

        public override void ForceRefill() => _pool.Trim();

        public override void CheckIntact() => _held.ForEach(h => Check(h.Owner.Memory.Span, h.Id));

        public override void Dispose()
        {
            CheckIntact();
            _held.ForEach(h => h.Owner.Dispose());
            _pool.Dispose();
        }
    }
}
