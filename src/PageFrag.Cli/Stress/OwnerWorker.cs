using PageFrag.Buffers;
using PageFrag.Frag;
using PageFrag.Pages;
using PageFrag.Pool;
using PageFrag.Providers;

namespace PageFrag.Cli.Stress;

/// <summary>
/// An allocating thread: it owns a fragment cache, a page pool and a buffer writer (with a cache of its own),
/// and the first owner also a cache allowed into the reserve. It allocates, prepares, commits, coalesces,
/// aborts, frees locally, drains, retires its pool with pages in flight, and hands most buffers to the
/// freeing threads, checking the invariants of every result as it goes.
/// </summary>
/// <remarks>Everything here runs on the owner's thread, except what the coordinator reads while the owner is
/// paused at a checkpoint or gone.</remarks>
internal sealed class OwnerWorker
{
    private const int BigPage = PageFragCache.MaxFragmentSize;

    private readonly StressRun _run;
    private readonly int _index;
    private readonly Random _random;
    private readonly List<PagePool> _retired = [];
    private long _nextId;
    private long _poolSteps;
    private bool _corrupted;
    private PageFragment _pending;
    private PageFragCache? _pendingCache;
    private long _pendingId;
    private PageFragment _leaked;

    public OwnerWorker(StressRun run, int index, int seed)
    {
        _run = run;
        _index = index;
        _random = new Random(seed);
        Queue = new HandoffQueue(1024);
        Cache = new PageFragCache(run.Allocator);
        ReserveCache = index == 0 ? new PageFragCache(run.Allocator, AllocFlags.MayUseReserve) : null;
        WriterCache = new PageFragCache(run.Allocator);
        Writer = new FragBufferWriter(WriterCache);
    }

    public HandoffQueue Queue { get; }

    public Counters Counters { get; } = new();

    public PageFragCache Cache { get; }

    /// <summary>A cache allowed into the reserve (first owner only): its pfmemalloc pages must never be reused.</summary>
    public PageFragCache? ReserveCache { get; }

    public PageFragCache WriterCache { get; }

    public FragBufferWriter Writer { get; }

    /// <summary>The current pool; replaced when the owner retires it.</summary>
    public PagePool? Pool { get; private set; }

    /// <summary>Pools this owner disposed with pages still in flight (read by the coordinator at checkpoints and at the end).</summary>
    public IReadOnlyList<PagePool> Retired => _retired;

    /// <summary>Every cache this owner allocates from.</summary>
    public IEnumerable<PageFragCache> Caches => ReserveCache is null ? [Cache, WriterCache] : [Cache, WriterCache, ReserveCache];

    /// <summary>The thread body: run until the coordinator stops the run, pausing at its checkpoints.</summary>
    public void Run()
    {
        try
        {
            Pool = NewPool();
            if (_run.Options.LeakOneFragment && _index == 0 && Cache.TryAlloc(100, out _leaked))
            {
                Stamp.Write(_leaked.Span, -1);
            }

            while (!_run.StopRequested)
            {
                if (_run.PauseRequested)
                {
                    Quiesce(drainSometimes: true);
                    _run.OwnerPause();
                    continue;
                }

                int workload = _random.Next(100);
                if (workload < 50)
                {
                    CacheStep();
                }
                else if (workload < 80)
                {
                    PoolStep();
                }
                else
                {
                    WriterStep();
                }
            }

            Quiesce(drainSometimes: false);
            CleanUp();
        }
        catch (Exception e)
        {
            _run.Fail($"owner {_index} threw {e}");
        }
        finally
        {
            _run.OwnerDone();
        }
    }

    // ------------------------------------------------------------------ fragment cache

    private void CacheStep()
    {
        PageFragCache cache = ReserveCache is not null && _random.Next(5) == 0 ? ReserveCache : Cache;

        // A reserve page must never be reused in place: note it before the step, check after.
        bool wasPfMemalloc = cache == ReserveCache && cache.CurrentPageSize > 0 && cache.CurrentPage.IsPfMemalloc;
        long reusedBefore = cache.PagesReused;
        long pagesBefore = cache.PagesAllocated;

        int r = _random.Next(100);
        if (r < 55)
        {
            AllocStep(cache);
        }
        else if (r < 83)
        {
            PrepareStep(cache);
        }
        else if (r < 98)
        {
            CoalesceStep(cache);
        }
        else if (r < 99)
        {
            ProbeStep(cache);
        }
        else
        {
            HandOffPending();
            cache.Drain();
            Counters.CacheDrains++;
            Check(cache.CurrentPageSize == 0 && cache.Offset == 0, "a drained cache still holds a page");
        }

        if (wasPfMemalloc && cache.PagesReused > reusedBefore)
        {
            _run.Violation($"owner {_index}: the reserve cache reused a pfmemalloc page in place");
        }

        if (cache == ReserveCache && cache.PagesAllocated > pagesBefore && cache.CurrentPageSize > 0 && cache.CurrentPage.IsPfMemalloc)
        {
            Counters.ReservePfMemallocPages++;
        }
    }

    private void AllocStep(PageFragCache cache)
    {
        int size = FragmentSize();
        int align = _random.Next(4) == 0 ? 1 << _random.Next(13) : 0;
        bool ok = align != 0 ? cache.TryAlloc(size, align, out PageFragment f)
            : _random.Next(4) == 0 ? cache.TryRefill(size, out f)
            : cache.TryAlloc(size, out f);
        if (!ok)
        {
            Check(f.IsEmpty, "a failed allocation returned a fragment");
            Counters.CacheFailures++;
            return;
        }

        Counters.AllocSuccesses++;
        Counters.CacheAllocs++;
        Counters.ReserveAllocs += cache == ReserveCache ? 1 : 0;
        CheckFragment(cache, f, size, align);
        long id = NextId();
        Stamp.Write(f.Span, id);
        if (MaybeCorrupt(f))
        {
            HandOff(Item.Of(f, id));
            return;
        }

        int what = _random.Next(100);
        if (what < 8)
        {
            // page_frag_alloc_abort: the reference and the bytes after the start granule go back; the granule stays
            // consumed, so that a copy of the aborted handle never names the next fragment.
            int expectedOffset = f.PageOffset + 8;
            cache.Abort(f);
            Counters.CacheAborts++;
            Check(cache.Offset == expectedOffset, $"after an abort the cache's offset is {cache.Offset}, not {expectedOffset}");
        }
        else if (what < 25)
        {
            CheckStamp(f.Span, id, f.ToString());
            cache.FreeLocal(f);
            Counters.CacheFreeLocal++;
        }
        else
        {
            HandOff(Item.Of(f, id));
        }
    }

    private void PrepareStep(PageFragCache cache)
    {
        int min = SmallSize();
        int align = _random.Next(4) == 0 ? 1 << _random.Next(8) : 1;
        if (!cache.TryPrepare(min, align, out PreparedFragment prepared))
        {
            Check(prepared.IsEmpty, "a failed prepare returned a preparation");
            Counters.CacheFailures++;
            return;
        }

        Counters.AllocSuccesses++;
        Check(prepared.Size >= min, $"prepare({min}) gave only {prepared.Size} bytes");
        Check(prepared.Offset + prepared.Size == cache.CurrentPageSize, "a preparation does not reach the end of its page");
        Check(prepared.Offset >= cache.Offset && prepared.Address % align == 0, "a preparation starts behind the cache's offset or unaligned");
        Check(cache.TryProbe(min, align, out PreparedFragment probed) && probed.Address == prepared.Address && probed.Size == prepared.Size,
            "probe does not agree with prepare (wrong va / wrong probed info)");

        int used = _random.Next(min, Math.Min(prepared.Size, min * 4) + 1);
        long id = NextId();
        Stamp.Write(prepared.Span[..used], id);
        int offsetBefore = cache.Offset;
        PageFragment f = cache.Commit(prepared, used);
        Counters.CacheCommits++;
        Check(f.Length == used && f.Address == prepared.Address, "a commit returned another fragment than the one prepared");
        // A fragment consumes at least 8 bytes (one state granule).
        int consumed = prepared.Offset + Math.Max(used, 8) - offsetBefore;
        Check(f.TrueSize == consumed, $"commit's true size {f.TrueSize} is not the {consumed} bytes consumed");
        CheckFragment(cache, f, used, align);

        // Kept back for a while: the next bytes may extend it (commit_noref).
        HandOffPending();
        _pending = f;
        _pendingCache = cache;
        _pendingId = id;
    }

    private void CoalesceStep(PageFragCache cache)
    {
        if (_pending.IsEmpty || _pendingCache != cache)
        {
            AllocStep(cache);
            return;
        }

        int min = _random.Next(1, 513);
        if (!cache.TryProbe(min, out PreparedFragment prepared))
        {
            // Probe never refills: too little left on the page, so the bytes cannot extend the fragment.
            HandOffPending();
            return;
        }

        if (prepared.Address != _pending.Address + _pending.Length || prepared.Page != _pending.Page)
        {
            HandOffPending();
            return;
        }

        int used = _random.Next(min, Math.Min(prepared.Size, 2048) + 1);
        Stamp.Extend(prepared.Span[..used], _pendingId);
        int before = _pending.Length;
        int added = cache.CommitNoRef(prepared, used, ref _pending);
        Counters.CacheCoalesced++;
        Check(added == used && _pending.Length == before + used, "commit_noref did not grow the previous fragment by what was committed");
        Check(cache.Offset == _pending.PageOffset + _pending.Length, "after commit_noref the cache's offset is not the end of the grown fragment");
    }

    private void ProbeStep(PageFragCache cache)
    {
        int min = SmallSize();
        int offset = cache.Offset;
        bool expected = cache.CurrentPageSize > 0 && offset + Math.Max(min, 8) <= cache.CurrentPageSize;
        long pages = cache.PagesAllocated;
        Check(cache.TryProbe(min, out PreparedFragment probed) == expected, "probe's answer does not match the room left");
        Check(cache.PagesAllocated == pages && cache.Offset == offset, "probe moved the cache");
        Check(!expected || probed.Size == cache.CurrentPageSize - offset, "probe did not report all the room left");
    }

    private void CheckFragment(PageFragCache cache, in PageFragment f, int size, int align)
    {
        Page page = f.Page;
        Check(f.Length == size && f.TrueSize >= size, $"{f} does not have the {size} bytes asked for");
        Check(f.PageOffset >= 0 && f.PageOffset + f.Length <= page.Length, $"{f} is not inside its page");
        Check(page == cache.CurrentPage && cache.Offset == f.PageOffset + Math.Max(f.Length, 8), $"{f} is not the cache's last fragment");
        Check(align == 0 || f.Address % align == 0, $"{f} is not aligned to {align}");

        // The page's count is the bias plus one per fragment still out, and this one is out.
        int bias = cache.Bias;
        Check(bias >= 1 && bias <= BigPage + 1, $"the cache's bias {bias} is out of range");
        Check(page.RefCount >= bias + 1, $"the page's count {page.RefCount} is below the bias {bias} plus the fragment just handed out");
    }

    private void HandOffPending()
    {
        if (!_pending.IsEmpty)
        {
            HandOff(Item.Of(_pending, _pendingId));
            _pending = default;
            _pendingCache = null;
        }
    }

    private bool MaybeCorrupt(in PageFragment f)
    {
        long after = _run.Options.CorruptStampAfter;
        if (_index != 0 || after < 0 || _corrupted || Counters.CacheAllocs < after)
        {
            return false;
        }

        _corrupted = true;
        Span<byte> span = f.Span;
        span[^1] ^= 0xFF;
        return true;
    }

    // ------------------------------------------------------------------ page pool

    private PagePool NewPool()
    {
        bool reserve = _index == 0;
        return new PagePool(new PagePoolOptions
        {
            Allocator = _run.Allocator,
            Order = _random.Next(3) == 0 ? 1 : 0,
            PoolSize = _random.Next(2) == 0 ? 64 : 256,
            AllocFlags = reserve ? AllocFlags.MayUseReserve : AllocFlags.None,
            MemoryProvider = _index % 2 == 1 ? new HostPageProvider(_run.Allocator) : null,

            // Retired pools scrub late ring pushes on this timer while the run goes on.
            ReleaseRetryPeriod = TimeSpan.FromMilliseconds(100),
        });
    }

    private void PoolStep()
    {
        PagePool pool = Pool!;
        if (++_poolSteps % 4000 == 0)
        {
            // page_pool_destroy with pages in flight: the freers' puts return them and the last one frees the pool.
            HandOffPending();
            pool.Dispose();
            _retired.Add(pool);
            Counters.PoolsRetired++;
            Pool = pool = NewPool();
        }

        int r = _random.Next(100);
        int size = PoolSize(pool.PageSize);
        if (r < 80)
        {
            bool fragment = r < 40;
            bool ok = fragment ? pool.TryAllocFrag(size, out PagePoolBuffer b) : pool.TryAlloc(size, out b);
            if (!ok)
            {
                Check(b.IsEmpty, "a failed pool allocation returned a buffer");
                Counters.PoolFailures++;
                return;
            }

            Counters.AllocSuccesses++;
            Counters.PoolAllocs++;
            CheckBuffer(pool, b, size, fragment);
            long id = NextId();
            Stamp.Write(b.Span, id);
            if (_random.Next(100) < 70)
            {
                HandOff(Item.Of(b, id));
                return;
            }

            CheckStamp(b.Span, id, b.ToString());
            switch (_random.Next(3))
            {
                case 0:
                    pool.PutBuffer(b, allowDirect: true);
                    break;
                case 1:
                    PagePool.Free(b);
                    break;
                default:
                    pool.PutBuffer(b, allowDirect: false);
                    break;
            }

            Counters.PoolPutsByOwner++;
            return;
        }

        if (!pool.TryAllocNetMem(out NetMem page))
        {
            Check(page.IsEmpty, "a failed page allocation returned a page");
            Counters.PoolFailures++;
            return;
        }

        Counters.AllocSuccesses++;
        Counters.PoolAllocs++;
        Check(page.Length == pool.PageSize && page.PpRefCount == 1 && page.Pool == pool, $"{page} is not a whole page of its pool with one reference");
        long pageId = NextId();
        Stamp.Write(page.Span, pageId);
        if (_random.Next(100) < 70)
        {
            HandOff(Item.Of(page, pool, pageId));
            return;
        }

        CheckStamp(page.Span, pageId, page.ToString());
        if (_random.Next(2) == 0)
        {
            pool.RecycleDirect(page);
        }
        else
        {
            pool.PutFullPage(page, allowDirect: false);
        }

        Counters.PoolPutsByOwner++;
    }

    private void CheckBuffer(PagePool pool, in PagePoolBuffer b, int size, bool fragment)
    {
        Check(b.Length == size && b.TrueSize >= size, $"{b} does not have the {size} bytes asked for");
        Check(b.Offset >= 0 && b.Offset + b.TrueSize <= pool.PageSize, $"{b}'s true size runs past its page");
        Check(!b.IsFragment || b.Offset % PagePool.FragmentAlignment == 0, $"{b} is not on a cache line");
        Check(!fragment || b.IsFragment, $"{b} from TryAllocFrag is not a fragment");
        Check(b.NetMem.Pool == pool && b.NetMem.PpRefCount >= 1, $"{b}'s page is not held by its pool");
        Check(pool.CachedPages is >= 0 and <= PagePool.AllocCacheSize && pool.RingPages <= pool.RingCapacity, "the pool's cache or ring count is out of range");
        long released = pool.PagesReleased;
        Check(released <= pool.PagesHeld, "the pool released more pages than it took");
    }

    // ------------------------------------------------------------------ buffer writer

    private void WriterStep()
    {
        long id = NextId();
        int size = MessageSize();
        long written = 0;
        try
        {
            while (written < size)
            {
                int remaining = (int)(size - written);
                int hint = _random.Next(0, remaining + 1);
                Span<byte> span = Writer.GetSpan(hint);
                Check(span.Length >= Math.Max(hint, 1), $"GetSpan({hint}) returned {span.Length} bytes");
                int n = Math.Min(span.Length, _random.Next(2) == 0 ? remaining : _random.Next(1, remaining + 1));
                Stamp.WritePattern(span[..n], id, written);
                Writer.Advance(n);
                written += n;
            }
        }
        catch (InsufficientMemoryException)
        {
            // The allocator refused a page: the writer keeps what it wrote; this message is dropped.
            Counters.WriterFailures++;
            Writer.Reset();
            return;
        }

        Counters.AllocSuccesses++;
        Check(Writer.WrittenCount == size, $"the writer counts {Writer.WrittenCount} bytes written, not {size}");
        FragmentChain chain = Writer.Detach();
        Counters.WriterMessages++;
        Counters.WriterBytes += size;
        Check(chain.Length == size && chain.TrueSize >= size, $"a detached chain has {chain.Length} bytes (true size {chain.TrueSize}), not {size}");
        if (_random.Next(100) < 85)
        {
            HandOff(Item.Of(chain, id, size));
            return;
        }

        _run.Release(Item.Of(chain, id, size), Counters, onOwner: true);
    }

    // ------------------------------------------------------------------ hand-off, pauses and the end

    private void HandOff(in Item item)
    {
        if (Queue.TryAdd(item))
        {
            Counters.HandedOff++;
            return;
        }

        // The freers are behind: free it here, as the kernel test's push thread does when its ring is full.
        _run.Release(item, Counters, onOwner: true);
        Counters.FreedByOwnerWhenFull++;
    }

    /// <summary>Before a checkpoint or the end: nothing may stay with the owner but the caches' current pages.</summary>
    private void Quiesce(bool drainSometimes)
    {
        HandOffPending();
        Writer.Reset();
        if (drainSometimes && _random.Next(3) == 0)
        {
            Cache.Drain();
            WriterCache.Drain();
            ReserveCache?.Drain();
            Counters.CacheDrains++;
        }
    }

    private void CleanUp()
    {
        Writer.Dispose();
        foreach (PageFragCache cache in Caches)
        {
            cache.Drain();
        }

        Pool?.Dispose();
    }

    private long NextId() => ((long)(_index + 1) << 40) + ++_nextId;

    private int FragmentSize()
    {
        int r = _random.Next(100);
        return r < 60 ? _random.Next(1, 257)
            : r < 90 ? _random.Next(257, 4097)
            : r < 98 ? _random.Next(4097, 16385)
            : _random.Next(16385, BigPage + 1);
    }

    private int SmallSize() => _random.Next(3) == 0 ? _random.Next(1, 4097) : _random.Next(1, 257);

    private int PoolSize(int pageSize)
    {
        int r = _random.Next(100);
        return r < 60 ? _random.Next(1, 513) : r < 85 ? _random.Next(513, pageSize / 2 + 1) : _random.Next(pageSize / 2 + 1, pageSize + 1);
    }

    private int MessageSize()
    {
        int r = _random.Next(100);
        return r < 70 ? _random.Next(1, 2001) : r < 96 ? _random.Next(2001, 12001) : _random.Next(12001, 70001);
    }

    private void Check(bool condition, string message)
    {
        if (!condition)
        {
            _run.Violation($"owner {_index}: {message}");
        }
    }

    private void CheckStamp(ReadOnlySpan<byte> span, long id, string what)
    {
        if (!Stamp.Check(span, id))
        {
            _run.Violation($"owner {_index}: {what} (id {id}) was overwritten while it was held: an overlap or a use after free");
        }
    }

    /// <summary>Pages the owner's caches and pools hold at a checkpoint, where every buffer has come back.</summary>
    public long PagesHeldWhenQuiet()
    {
        long pages = 0;
        foreach (PageFragCache cache in Caches)
        {
            pages += cache.CurrentPageSize / 4096;
        }

        if (Pool is PagePool pool)
        {
            pages += pool.InFlight << pool.Order;
        }

        foreach (PagePool retired in _retired)
        {
            pages += retired.InFlight << retired.Order;
        }

        return pages;
    }
}
