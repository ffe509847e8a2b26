using CsCheck;
using PageFrag.Frag;
using PageFrag.Pages;
using PageFrag.Pool;

namespace PageFrag.Tests.Concurrency;

/// <summary>
/// Linearizability of the any-thread paths, with CsCheck's parallel sampling: a few operations run at once on
/// several threads, and the state they leave must be the state of some sequential order of the same operations
/// on a plain model. CsCheck tries every order of the parallel part and shrinks a failure to the shortest one.
/// </summary>
/// <remarks>
/// The paths are the fragment free (one atomic decrement per free, the last one returning the page, and the
/// fragment state bytes, each cleared by one compare-and-swap so that a release never reports a false double free
/// and of two racing releases exactly one wins; see also FragReleaseTests) and the page
/// pool's put (pp_ref_count's "last one needs no atomic" shortcut, the reset to 1, the recycle ring's full check,
/// the release to the allocator when it is full). Each state ends with everything freed and no page left.
/// </remarks>
public class LinearizabilityTests
{
    // ------------------------------------------------------------------ the fragment free path

    private const int Fragments = 6;

    /// <summary>Six small fragments of one order-3 page, the cache already drained: the last free returns the page.</summary>
    private sealed class FreeState
    {
        private readonly PageAllocator _allocator;
        private readonly PageFragment[] _fragments = new PageFragment[Fragments];
        private readonly int[] _won = new int[Fragments];
        private readonly Page _page;
        private readonly object _snapshotLock = new();
        private FreeSnapshot? _snapshot;
        private int _refused;
        private int _doubleWins;

        public FreeState()
        {
            _allocator = new PageAllocator(new PageAllocatorOptions { ArenaSize = 32 * 1024 });
            var cache = new PageFragCache(_allocator);
            for (int i = 0; i < Fragments; i++)
            {
                // 8 to 40 bytes: neighbours share the int that a state byte's compare-and-swap works on.
                Assert.True(cache.TryAlloc(8 + (i * 7 % 33), out _fragments[i]));
            }

            _page = _fragments[0].Page;
            cache.Drain();
        }

        public void Free(int i, bool byAddress)
        {
            // No claim: two operations on the same fragment race for real, and exactly one may win; the other must
            // be refused with an exception (a double free, or, by address once the page went back, not a fragment).
            try
            {
                if (byAddress)
                {
                    PageFragCache.Free(_fragments[i].Address);
                }
                else
                {
                    _fragments[i].Free();
                }
            }
            catch (Exception e) when (e is PageFragDoubleFreeException or ArgumentException)
            {
                Interlocked.Increment(ref _refused);
                return;
            }

            if (Interlocked.Exchange(ref _won[i], 1) != 0)
            {
                // Two releases of one fragment both succeeded: the page count is now off by one.
                Interlocked.Increment(ref _doubleWins);
            }
        }

        /// <summary>The state after the operations; then frees the rest and checks that no page is left.</summary>
        public FreeSnapshot Snapshot()
        {
            // Once, under a lock: the checker may compare with several linearizations at the same time.
            lock (_snapshotLock)
            {
                if (_snapshot is not null)
                {
                    return _snapshot;
                }

                long inUse = _allocator.PagesInUse;
                int refs = inUse > 0 ? _page.RefCount : 0;
                int wins = _won.Sum();
                int refused = _refused;
                int doubleWins = _doubleWins;
                for (int i = 0; i < Fragments; i++)
                {
                    if (_won[i] == 0)
                    {
                        _fragments[i].Free();
                    }
                }

                PageAllocatorStats stats = _allocator.GetStats();
                _snapshot = new FreeSnapshot(refs, inUse, wins, refused, doubleWins, stats.PagesInUse == 0 && stats.IsConsistent);
                _allocator.Dispose();
                return _snapshot;
            }
        }

        public override string ToString() => Snapshot().ToString();
    }

    private sealed class FreeModel
    {
        public readonly bool[] Freed = new bool[Fragments];
        public int Operations;

        /// <summary>A free of a fragment not yet freed wins; every later one is refused.</summary>
        public void Free(int i)
        {
            Operations++;
            Freed[i] = true;
        }

        public FreeSnapshot Expected
        {
            get
            {
                int freed = Freed.Count(f => f);
                int left = Fragments - freed;
                return new FreeSnapshot(left, left > 0 ? 8 : 0, freed, Operations - freed, DoubleWins: 0, Clean: true);
            }
        }

        public override string ToString() => Expected.ToString();
    }

    private sealed record FreeSnapshot(int PageRefCount, long PagesInUse, int Wins, int Refused, int DoubleWins, bool Clean);

    [Fact]
    public void Concurrent_and_repeated_frees_of_fragments_of_one_page_are_linearizable_exactly_one_wins_and_the_page_returns_once() =>
        Gen.Const(() => (new FreeState(), new FreeModel()))
            .SampleParallel(
                Gen.Int[0, Fragments - 1].Operation<FreeState, FreeModel>(i => $"Free({i})", (s, i) => s.Free(i, byAddress: false), (m, i) => m.Free(i)),
                Gen.Int[0, Fragments - 1].Operation<FreeState, FreeModel>(i => $"Free(address of {i})", (s, i) => s.Free(i, byAddress: true), (m, i) => m.Free(i)),
                equal: (s, m) => s.Snapshot() == m.Expected,
                iter: 200);

    // ------------------------------------------------------------------ the page pool's put path

    private const int WholePages = 6;
    private const int RingSize = 4;
    private const int Pieces = 3;
    private const long BiasMax = long.MaxValue >> 1;

    /// <summary>
    /// A pool with a 4-entry ring and, out: six whole pages, four fragments of a drained fragment page A (the last
    /// one freed recycles A), two fragments of the current fragment page B (never recycled: the pool keeps its
    /// bias), and one page S split into three pieces (the last piece recycles S). Every put avoids the owner's
    /// cache, so the outcome does not depend on which thread runs it.
    /// </summary>
    private sealed class PoolState
    {
        private readonly PageAllocator _allocator;
        private readonly PagePool _pool;
        private readonly NetMem[] _pages = new NetMem[WholePages];
        private readonly PagePoolBuffer[] _fragments = new PagePoolBuffer[6];
        private readonly int[] _claimedPages = new int[WholePages];
        private readonly int[] _claimedFragments = new int[6];
        private readonly NetMem _split;
        private int _piecesLeft = Pieces;
        private readonly object _snapshotLock = new();
        private PoolSnapshot? _snapshot;

        public PoolState()
        {
            _allocator = new PageAllocator(new PageAllocatorOptions { ArenaSize = 64 * 1024, MaxBytes = 64 * 1024 });
            _pool = new PagePool(new PagePoolOptions { Allocator = _allocator, PoolSize = RingSize, ReleaseRetryPeriod = TimeSpan.FromHours(1) });
            for (int i = 0; i < WholePages; i++)
            {
                Assert.True(_pool.TryAllocNetMem(out _pages[i]));
            }

            for (int i = 0; i < _fragments.Length; i++)
            {
                Assert.True(_pool.TryAllocFrag(1024, out _fragments[i]));
            }

            Assert.True(_pool.TryAllocNetMem(out _split));
            _pool.FragmentNetMem(_split, Pieces);
        }

        public void PutPage(int i)
        {
            if (Interlocked.Exchange(ref _claimedPages[i], 1) == 0)
            {
                _pool.PutFullPage(_pages[i], allowDirect: false);
            }
        }

        public void FreeFragment(int i)
        {
            if (Interlocked.Exchange(ref _claimedFragments[i], 1) == 0)
            {
                _pool.PutBuffer(_fragments[i], allowDirect: false);
            }
        }

        public void PutPiece()
        {
            if (Interlocked.Decrement(ref _piecesLeft) >= 0)
            {
                _pool.PutPage(_split, -1, allowDirect: false);
            }
        }

        public PoolSnapshot Snapshot()
        {
            // Taken once, under a lock: the checker may compare the state with several linearizations at the same
            // time, and a second caller must neither read counts while the first is putting everything back nor
            // report its own half-cleaned reading.
            lock (_snapshotLock)
            {
                return _snapshot ??= TakeSnapshot();
            }
        }

        private PoolSnapshot TakeSnapshot()
        {
            PagePoolStats stats = _pool.GetStats();
            var snapshot = new PoolSnapshot(
                _pool.RingPages, stats.RecycleRing, stats.RecycleRingFull, _pool.PagesReleased, _allocator.PagesInUse,
                string.Join(",", _pages.Select(p => p.PpRefCount)), _fragments[0].NetMem.PpRefCount, _fragments[4].NetMem.PpRefCount,
                _split.PpRefCount, Clean: false);
            for (int i = 0; i < WholePages; i++)
            {
                PutPage(i);
            }

            for (int i = 0; i < _fragments.Length; i++)
            {
                FreeFragment(i);
            }

            while (Volatile.Read(ref _piecesLeft) > 0)
            {
                PutPiece();
            }

            // The checker takes the snapshot on its own thread while the thread that created (and owns) the pool is
            // alive: take the ownership first (the owner has stopped), so that Dispose gives everything back at once
            // instead of leaving the owner's side to the owner (see PagePool.Dispose).
            _pool.SetOwnerThread();
            _pool.Dispose();
            PageAllocatorStats end = _allocator.GetStats();
            PoolSnapshot taken = snapshot with { Clean = _pool.IsReleased && end.PagesInUse == 0 && end.IsConsistent };
            _allocator.Dispose();
            return taken;
        }

        public override string ToString() => Snapshot().ToString();
    }

    private sealed class PoolModel
    {
        private readonly bool[] _pagePut = new bool[WholePages];
        private readonly bool[] _fragmentFreed = new bool[6];
        private readonly Dictionary<string, long> _recycled = [];
        private int _pieces;
        private int _ring;
        private int _ringFull;

        public void PutPage(int i)
        {
            if (!_pagePut[i])
            {
                _pagePut[i] = true;
                Recycle($"page {i}");
            }
        }

        public void FreeFragment(int i)
        {
            if (_fragmentFreed[i])
            {
                return;
            }

            _fragmentFreed[i] = true;
            if (i < 4 && _fragmentFreed.Take(4).All(f => f))
            {
                Recycle("A");
            }
        }

        public void PutPiece()
        {
            if (_pieces < Pieces && ++_pieces == Pieces)
            {
                Recycle("S");
            }
        }

        public PoolSnapshot Expected
        {
            get
            {
                long PpOf(string key, long whileOut) => _recycled.TryGetValue(key, out long pp) ? pp : whileOut;
                return new PoolSnapshot(
                    _ring, _ring, _ringFull, _ringFull, 16 - _ringFull,
                    string.Join(",", Enumerable.Range(0, WholePages).Select(i => PpOf($"page {i}", 1))),
                    PpOf("A", 4 - _fragmentFreed.Take(4).Count(f => f)),
                    BiasMax - _fragmentFreed.Skip(4).Count(f => f),
                    PpOf("S", Pieces - _pieces),
                    Clean: true);
            }
        }

        /// <summary>The last reference is gone: the ring if it has room (pp_ref_count stays 1), else back to the allocator (0).</summary>
        private void Recycle(string key)
        {
            if (_ring < RingSize)
            {
                _ring++;
                _recycled[key] = 1;
            }
            else
            {
                _ringFull++;
                _recycled[key] = 0;
            }
        }

        public override string ToString() => Expected.ToString();
    }

    private sealed record PoolSnapshot(
        int RingPages, long RecycleRing, long RecycleRingFull, long PagesReleased, long PagesInUse,
        string WholePagesPpRefCounts, long PageAPpRefCount, long PageBPpRefCount, long SplitPpRefCount, bool Clean);

    [Fact]
    public void Concurrent_puts_of_pages_fragments_and_pieces_are_linearizable_down_to_which_pages_fill_the_ring() =>
        Gen.Const(() => (new PoolState(), new PoolModel()))
            .SampleParallel(
                Gen.Int[0, WholePages - 1].Operation<PoolState, PoolModel>(i => $"PutPage({i})", (s, i) => s.PutPage(i), (m, i) => m.PutPage(i)),
                Gen.Int[0, 5].Operation<PoolState, PoolModel>(i => $"FreeFragment({i})", (s, i) => s.FreeFragment(i), (m, i) => m.FreeFragment(i)),
                Gen.Operation<PoolState, PoolModel>("PutPiece()", s => s.PutPiece(), m => m.PutPiece()),
                equal: (s, m) => s.Snapshot() == m.Expected,
                iter: 200);
}
