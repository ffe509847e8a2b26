using System.Buffers;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.DependencyInjection;
using System.Diagnostics.Metrics;
using Microsoft.Extensions.Options;
using PageFrag.Buffers;
using PageFrag.Diagnostics;
using PageFrag.Tests.Infrastructure;

namespace PageFrag.AspNetCore.Tests;

public class KestrelTests
{
    [Fact]
    public async Task Kestrel_rents_its_socket_buffers_from_PageFrag_pools()
    {
        await using KestrelApp app = await KestrelApp.StartAsync();
        Assert.Same(app.Factory, app.App.Services.GetRequiredService<IMemoryPoolFactory<byte>>());

        using (var client = new HttpClient { BaseAddress = app.Address })
        {
            Assert.Equal("hello", await client.GetStringAsync("/hello"));
        }

        Assert.True(app.Factory.PoolsCreated > 0);
        Assert.True(app.Factory.Pools.Sum(p => p.GetStats().Rents) > 0, "no pool of the factory served a rent");
        await app.StopAndAssertNoLeaksAsync();
    }

    [Theory]
    [InlineData(1)]
    [InlineData(70_000)]
    [InlineData(1 << 20)]
    [InlineData(5 << 20)]
    public async Task Large_multi_segment_responses_arrive_intact(int size)
    {
        await using KestrelApp app = await KestrelApp.StartAsync();
        using (var client = new HttpClient { BaseAddress = app.Address })
        {
            byte[] body = await client.GetByteArrayAsync($"/bytes/{size}");
            KestrelApp.AssertPattern(body, size);
        }

        await app.StopAndAssertNoLeaksAsync();
    }

    [Fact]
    public async Task Concurrent_requests_on_several_connections_all_arrive_intact()
    {
        await using KestrelApp app = await KestrelApp.StartAsync();
        using (var client = new HttpClient(new SocketsHttpHandler { MaxConnectionsPerServer = 8 }) { BaseAddress = app.Address })
        {
            int[] sizes = [300_000, 17, 1 << 20, 65_536, 4095, 2_000_000, 8193, 123_457];
            await Task.WhenAll(sizes.Select(async size =>
            {
                byte[] body = await client.GetByteArrayAsync($"/bytes/{size}");
                KestrelApp.AssertPattern(body, size);
            }));
        }

        await app.StopAndAssertNoLeaksAsync();
    }

    [Fact]
    public async Task Request_bodies_are_received_into_pool_buffers_and_echoed_back_intact()
    {
        await using KestrelApp app = await KestrelApp.StartAsync();
        byte[] sent = new byte[3_000_000];
        new Random(7).NextBytes(sent);
        using (var client = new HttpClient { BaseAddress = app.Address })
        {
            using HttpResponseMessage response = await client.PostAsync("/echo", new ByteArrayContent(sent));
            response.EnsureSuccessStatusCode();
            byte[] received = await response.Content.ReadAsByteArrayAsync();
            Assert.True(sent.AsSpan().SequenceEqual(received), "the echoed body differs from the one sent");
        }

        await app.StopAndAssertNoLeaksAsync();
    }

    [Fact]
    public async Task With_the_diagnostic_pool_requests_work_and_no_buffer_is_misused()
    {
        await using KestrelApp app = await KestrelApp.StartAsync(o => o.UseDiagnosticPool = true);
        using (var client = new HttpClient { BaseAddress = app.Address })
        {
            KestrelApp.AssertPattern(await client.GetByteArrayAsync("/bytes/200000"), 200_000);
        }

        // Stopping disposes the decorators, which check every quarantined buffer for writes after free.
        await app.StopAndAssertNoLeaksAsync();
    }

    [Fact]
    public async Task An_idle_server_gives_its_pages_and_arenas_back_after_two_trim_ticks()
    {
        await using KestrelApp app = await KestrelApp.StartAsync();
        using (var client = new HttpClient { BaseAddress = app.Address })
        {
            KestrelApp.AssertPattern(await client.GetByteArrayAsync("/bytes/500000"), 500_000);
        }

        Assert.True(app.Factory.Allocator.GetStats().Arenas > 0);

        // The first tick only marks the caches that served rents; the second drains them. Connections may
        // take a moment to close after the client is gone, so tick until the pages are back (bounded).
        for (int tick = 0; tick < 200 && app.Factory.Allocator.GetStats().Arenas > 0; tick++)
        {
            app.Factory.TrimIdle();
            if (tick >= 1)
            {
                await Task.Delay(10);
            }
        }

        Assert.Equal(0, app.Factory.Allocator.PagesInUse);
        Assert.Equal(0, app.Factory.Allocator.GetStats().Arenas);

        // Trimmed pools keep serving.
        using (var client = new HttpClient { BaseAddress = app.Address })
        {
            Assert.Equal("hello", await client.GetStringAsync("/hello"));
        }

        await app.StopAndAssertNoLeaksAsync();
    }

    [Fact]
    public async Task The_PageFrag_meter_reports_the_rents_and_pages_of_Kestrels_pools()
    {
        await using KestrelApp app = await KestrelApp.StartAsync();
        PageFragMetrics metrics = app.App.Services.GetRequiredService<PageFragMetrics>();
        using (var client = new HttpClient { BaseAddress = app.Address })
        {
            KestrelApp.AssertPattern(await client.GetByteArrayAsync("/bytes/100000"), 100_000);
        }

        var rented = new Dictionary<string, long>();
        long pagesInUse = -1;
        using (var listener = new MeterListener())
        {
            listener.InstrumentPublished = (instrument, l) =>
            {
                if (ReferenceEquals(instrument.Meter, metrics.Meter))
                {
                    l.EnableMeasurementEvents(instrument);
                }
            };
            listener.SetMeasurementEventCallback<long>((instrument, value, tags, _) =>
            {
                if (instrument.Name == "pagefrag.page.usage" && tags.ToArray().Contains(new KeyValuePair<string, object?>("pagefrag.page.state", "used")))
                {
                    pagesInUse = value;
                }
                else if (instrument.Name == "pagefrag.memory_pool.rented")
                {
                    foreach (KeyValuePair<string, object?> tag in tags)
                    {
                        if (tag.Key == "pagefrag.memory_pool.owner")
                        {
                            rented[(string)tag.Value!] = rented.GetValueOrDefault((string)tag.Value!) + value;
                        }
                    }
                }
            });
            listener.Start();
            listener.RecordObservableInstruments();
        }

        Assert.Equal("PageFrag", metrics.Meter.Name);
        Assert.True(rented.Values.Sum() > 0, "no rented bytes reported: " + string.Join(", ", rented));
        Assert.True(pagesInUse >= 0);
        await app.StopAndAssertNoLeaksAsync();
    }
}
