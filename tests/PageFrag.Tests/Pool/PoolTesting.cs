using PageFrag.Pages;
using PageFrag.Pool;
using PageFrag.Tests.Infrastructure;

namespace PageFrag.Tests.Pool;

/// <summary>Shared set-up for the pool tests: a private allocator per test, and the end-of-test checks.</summary>
internal static class PoolTesting
{
    public static PagePool NewPool(PageAllocator allocator, int order = 0, int poolSize = 1024, PagePoolFlags flags = PagePoolFlags.None,
        int maxLen = 0, int offset = 0, IDmaMapper? mapper = null, IMemoryProvider? provider = null, AllocFlags allocFlags = AllocFlags.None,
        TimeSpan? retry = null, TimeSpan? warn = null, int node = -1) =>
        new(new PagePoolOptions
        {
            Allocator = allocator,
            Order = order,
            PoolSize = poolSize,
            Flags = flags,
            MaxLen = maxLen,
            Offset = offset,
            DmaMapper = mapper,
            MemoryProvider = provider,
            AllocFlags = allocFlags,
            ReleaseRetryPeriod = retry ?? TimeSpan.FromSeconds(1),
            StallWarningInterval = warn ?? TimeSpan.FromSeconds(60),
            Node = node,
        });

    /// <summary>Disposes the pool, checks that it was freed (nothing in flight) and that no page leaked.</summary>
    public static void DisposeAndAssertNoLeak(PagePool pool, PageAllocator allocator)
    {
        pool.Dispose();
        Assert.Equal(0, pool.InFlight);
        Assert.True(pool.IsReleased, "the pool should be freed once nothing is in flight");
        Leaks.AssertNone(allocator);
    }

    /// <summary>Runs <paramref name="action"/> on a new thread and waits for it (a thread that is not the pool's owner).</summary>
    public static void OnOtherThread(Action action)
    {
        Exception? error = null;
        var thread = new Thread(() =>
        {
            try
            {
                action();
            }
            catch (Exception ex)
            {
                error = ex;
            }
        });
        thread.Start();
        thread.Join();
        if (error is not null)
        {
            throw new AggregateException(error);
        }
    }

    public static T ThrowsOnOtherThread<T>(Action action) where T : Exception
    {
        T? caught = null;
        OnOtherThread(() => caught = Assert.Throws<T>(action));
        return caught!;
    }
}

/// <summary>A mapper that records what the pool asks of it, and can be told to fail.</summary>
internal sealed class RecordingMapper : IDmaMapper
{
    private readonly object _gate = new();
    private ulong _next = 0x1_0000_0000;

    public int Maps;
    public int Unmaps;
    public bool FailMaps;
    public int ThrowOnMap = -1;
    public readonly List<(ulong Address, int Offset, int Length)> Syncs = [];

    public bool TryMap(NetMem netmem, out ulong deviceAddress)
    {
        lock (_gate)
        {
            if (FailMaps)
            {
                deviceAddress = 0;
                return false;
            }

            if (Maps == ThrowOnMap)
            {
                throw new InvalidOperationException("IOMMU fault");
            }

            Maps++;
            deviceAddress = _next;
            _next += 0x10000;
            return true;
        }
    }

    public void Unmap(NetMem netmem, ulong deviceAddress)
    {
        lock (_gate)
        {
            Unmaps++;
        }
    }

    public void SyncForDevice(NetMem netmem, ulong deviceAddress, int offset, int length)
    {
        lock (_gate)
        {
            Syncs.Add((deviceAddress, offset, length));
        }
    }
}

/// <summary>Measures what a warmed-up loop allocates on the GC heap.</summary>
internal static class ZeroAlloc
{
    /// <summary>
    /// The fewest bytes <paramref name="loop"/> allocated over three runs (after one warm-up run). A hot path that
    /// allocates does so on every run; a one-off allocation of the runtime (tiering, a thread-static block) does
    /// not repeat, so the minimum is the honest figure.
    /// </summary>
    public static long MinAllocatedBytes(Action loop)
    {
        loop();
        long min = long.MaxValue;
        for (int attempt = 0; attempt < 3 && min != 0; attempt++)
        {
            long before = GC.GetAllocatedBytesForCurrentThread();
            loop();
            min = Math.Min(min, GC.GetAllocatedBytesForCurrentThread() - before);
        }

        return min;
    }
}
