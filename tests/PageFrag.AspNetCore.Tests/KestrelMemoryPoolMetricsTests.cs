using System.Buffers;
using System.Diagnostics.Metrics;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;

namespace PageFrag.AspNetCore.Tests;

public class KestrelMemoryPoolMetricsTests
{
    private const string Owner = "metrics-test";

    // What Kestrel's PinnedBlockMemoryPool reports (Microsoft.AspNetCore.MemoryPool meter) for the sequence
    // below, worked out from its source: every rent adds its 4096-byte block to rented, and to allocated when
    // the queue is empty (else takes it off pooled); every return puts 4096 back on pooled; an eviction pass
    // evicts nothing while rents (counted twice when they allocate) outnumber returns since the previous
    // pass, and at least 10 blocks (so all 8 here) when there was no activity at all.
    //                                              pooled  allocated evicted rented
    private static readonly long[][] s_kestrel =
    [
        [0, 32768, 0, 32768],       // 8 rents into an empty pool
        [32768, 32768, 0, 32768],   // 8 returns
        [0, 32768, 0, 65536],       // 8 rents, served from the pool
        [32768, 32768, 0, 65536],   // 8 returns
        [32768, 32768, 0, 65536],   // an eviction pass after that traffic: nothing evicted
        [0, 32768, 32768, 65536],   // an eviction pass after an idle period: all 8 blocks evicted
    ];

    private static readonly string[] s_names = ["aspnetcore.memory_pool.pooled", "aspnetcore.memory_pool.allocated", "aspnetcore.memory_pool.evicted", "aspnetcore.memory_pool.rented"];

    [Fact]
    public void Kestrels_instruments_report_what_Kestrels_own_pool_reports_for_the_same_rents_returns_and_evictions()
    {
        // One arena of 32 KiB holds exactly one order-3 page, eight 4 KiB fragments: the granularity of
        // Kestrel's eight blocks. A thread that moves to another CPU mid-sequence makes the pool use a
        // second CPU cache (a second page, a second arena): that is another sequence, so it is run again.
        for (int attempt = 0; ; attempt++)
        {
            long[][]? seen = RunOnPageFrag();
            if (seen is not null)
            {
                for (int step = 0; step < s_kestrel.Length; step++)
                {
                    Assert.True(s_kestrel[step].SequenceEqual(seen[step]), $"step {step}: Kestrel {string.Join(", ", s_kestrel[step])}, PageFrag {string.Join(", ", seen[step])}");
                }

                return;
            }

            Assert.True(attempt < 50, "the test thread changed CPU during every attempt");
        }
    }

    [Fact]
    public async Task The_expected_figures_are_those_Kestrels_own_pool_reports_for_the_rents_and_returns()
    {
        // Checks the reading of Kestrel's source above against Kestrel itself (eviction runs on Kestrel's
        // own timer, so only the rent and return steps are compared).
        WebApplicationBuilder builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        await using WebApplication app = builder.Build();
        IMeterFactory meterFactory = app.Services.GetRequiredService<IMeterFactory>();
        var totals = new Dictionary<string, long>();
        using var listener = new MeterListener();
        listener.InstrumentPublished = (instrument, l) =>
        {
            if (ReferenceEquals(instrument.Meter.Scope, meterFactory) && instrument.Meter.Name == KestrelMemoryPoolMetrics.MeterName)
            {
                l.EnableMeasurementEvents(instrument);
            }
        };
        listener.SetMeasurementEventCallback<long>((instrument, value, tags, _) =>
        {
            foreach (KeyValuePair<string, object?> tag in tags)
            {
                if (tag.Key == KestrelMemoryPoolMetrics.OwnerTag && (string?)tag.Value == Owner)
                {
                    totals[instrument.Name] = totals.GetValueOrDefault(instrument.Name) + value;
                }
            }
        });
        listener.Start();

        IMemoryPoolFactory<byte> kestrel = app.Services.GetRequiredService<IMemoryPoolFactory<byte>>();
        Assert.IsNotType<PageFragMemoryPoolFactory>(kestrel);
        using MemoryPool<byte> pool = kestrel.Create(new MemoryPoolOptions { Owner = Owner });
        long[] Snapshot() => [.. s_names.Select(n => totals.GetValueOrDefault(n))];

        IMemoryOwner<byte>[] rented = RentEight(pool);
        Assert.Equal(s_kestrel[0], Snapshot());
        ReturnAll(rented);
        Assert.Equal(s_kestrel[1], Snapshot());
        rented = RentEight(pool);
        Assert.Equal(s_kestrel[2], Snapshot());
        ReturnAll(rented);
        Assert.Equal(s_kestrel[3], Snapshot());
    }

    [Fact]
    public void Kestrels_instruments_carry_Kestrels_names_units_kinds_and_owner_tag_and_stop_with_the_factory()
    {
        using ServiceProvider services = new ServiceCollection().AddMetrics().BuildServiceProvider();
        var factory = new PageFragMemoryPoolFactory(new PageFragMemoryPoolFactoryOptions { TrimInterval = Timeout.InfiniteTimeSpan }, TimeProvider.System);
        using var metrics = new KestrelMemoryPoolMetrics(factory, services.GetRequiredService<IMeterFactory>());
        var instruments = new Dictionary<string, Instrument>();
        var rentedTags = new List<string?>();
        using var listener = new MeterListener();
        listener.InstrumentPublished = (instrument, l) =>
        {
            if (ReferenceEquals(instrument.Meter, metrics.Meter))
            {
                instruments[instrument.Name] = instrument;
                l.EnableMeasurementEvents(instrument);
            }
        };
        int measurements = 0;
        listener.SetMeasurementEventCallback<long>((instrument, value, tags, _) =>
        {
            measurements++;
            if (instrument.Name == "aspnetcore.memory_pool.rented")
            {
                rentedTags.Add(tags.Length == 0 ? null : $"{tags[0].Key}={tags[0].Value}");
            }
        });
        listener.Start();

        Assert.Equal("Microsoft.AspNetCore.MemoryPool", metrics.Meter.Name);
        Assert.Equal(s_names.Order(), instruments.Keys.Order());
        Assert.All(instruments.Values, i => Assert.Equal("By", i.Unit));
        Assert.All(instruments.Values, i => Assert.False(string.IsNullOrEmpty(i.Description)));
        Assert.IsType<ObservableUpDownCounter<long>>(instruments["aspnetcore.memory_pool.pooled"]);
        Assert.IsType<ObservableCounter<long>>(instruments["aspnetcore.memory_pool.allocated"]);
        Assert.IsType<ObservableCounter<long>>(instruments["aspnetcore.memory_pool.evicted"]);
        Assert.IsType<ObservableCounter<long>>(instruments["aspnetcore.memory_pool.rented"]);

        MemoryPool<byte> named = factory.Create(new MemoryPoolOptions { Owner = "sockets" });
        MemoryPool<byte> anonymous = factory.Create();
        named.Rent().Dispose();
        anonymous.Rent().Dispose();
        listener.RecordObservableInstruments();
        Assert.Equal([null, "aspnetcore.memory_pool.owner=sockets"], rentedTags.Order());

        named.Dispose();
        anonymous.Dispose();
        PageAllocator allocator = factory.Allocator;
        factory.Dispose();
        measurements = 0;
        listener.RecordObservableInstruments();
        Assert.Equal(0, measurements);
        Assert.Equal(0, allocator.PagesInUse);
    }

    /// <summary>Runs the sequence on PageFrag; null when the thread changed CPU (a second arena appeared).</summary>
    private static long[][]? RunOnPageFrag()
    {
        using ServiceProvider services = new ServiceCollection().AddMetrics().BuildServiceProvider();
        var factory = new PageFragMemoryPoolFactory(
            new PageFragMemoryPoolFactoryOptions { TrimInterval = Timeout.InfiniteTimeSpan, AllocatorOptions = new PageAllocatorOptions { ArenaSize = 32768 } },
            TimeProvider.System);
        try
        {
            using var metrics = new KestrelMemoryPoolMetrics(factory, services.GetRequiredService<IMeterFactory>());
            var last = new Dictionary<string, long>();
            using var listener = new MeterListener();
            listener.InstrumentPublished = (instrument, l) =>
            {
                if (ReferenceEquals(instrument.Meter, metrics.Meter))
                {
                    l.EnableMeasurementEvents(instrument);
                }
            };
            listener.SetMeasurementEventCallback<long>((instrument, value, tags, _) =>
            {
                // Rented comes per owner: this sequence has one.
                if (instrument.Name != "aspnetcore.memory_pool.rented" || (tags.Length == 1 && (string?)tags[0].Value == Owner))
                {
                    last[instrument.Name] = value;
                }
            });
            listener.Start();
            long[] Snapshot()
            {
                last.Clear();
                listener.RecordObservableInstruments();
                return [.. s_names.Select(n => last.GetValueOrDefault(n, -1))];
            }

            bool OneArena()
            {
                PageAllocatorStats stats = factory.Allocator.GetStats();
                return stats.Arenas + stats.ArenasTrimmed == 1;
            }

            var seen = new List<long[]>();
            using MemoryPool<byte> pool = factory.Create(new MemoryPoolOptions { Owner = Owner });
            IMemoryOwner<byte>[] rented = RentEight(pool);
            seen.Add(Snapshot());
            ReturnAll(rented);
            seen.Add(Snapshot());
            rented = RentEight(pool);
            seen.Add(Snapshot());
            ReturnAll(rented);
            seen.Add(Snapshot());
            if (!OneArena())
            {
                return null;
            }

            // The factory's timer tick: the first after traffic marks the caches, the next drains the idle
            // ones and releases the free arena.
            factory.TrimIdle();
            seen.Add(Snapshot());
            factory.TrimIdle();
            seen.Add(Snapshot());
            Leaks.AssertNone(factory.Allocator);
            return [.. seen];
        }
        finally
        {
            factory.Dispose();
        }
    }

    private static IMemoryOwner<byte>[] RentEight(MemoryPool<byte> pool)
    {
        var owners = new IMemoryOwner<byte>[8];
        for (int i = 0; i < owners.Length; i++)
        {
            owners[i] = pool.Rent();
            Assert.Equal(4096, owners[i].Memory.Length);
        }

        return owners;
    }

    private static void ReturnAll(IMemoryOwner<byte>[] owners)
    {
        foreach (IMemoryOwner<byte> owner in owners)
        {
            owner.Dispose();
        }
    }
}
