using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;

namespace PageFrag.AspNetCore.Tests;

/// <summary>
/// The registration matrix: whichever way the host is set up, Kestrel serves from PageFrag's pools (a real
/// request moves the PageFrag pools' rent count) and says so in the log, or the host refuses to start.
/// </summary>
public class RegistrationTests
{
    private static void Configure(PageFragMemoryPoolFactoryOptions options)
    {
        options.TrimInterval = Timeout.InfiniteTimeSpan;
        options.AllocatorOptions = new PageAllocatorOptions { ArenaSize = 1 << 20 };
    }

    [Fact]
    public async Task The_minimal_host_serves_from_PageFrag_and_logs_it()
    {
        var log = new ListLogger();
        WebApplicationBuilder builder = WebApplication.CreateBuilder(new WebApplicationOptions { EnvironmentName = "Production" });
        builder.Logging.ClearProviders().AddProvider(log);
        builder.WebHost.UseUrls("http://127.0.0.1:0");
        builder.Services.AddPageFragMemoryPool(Configure);
        await using WebApplication app = builder.Build();
        app.MapGet("/hello", () => "hello");
        await AssertServedFromPageFragAsync(app, app.Services, log);
    }

    [Fact]
    public async Task The_slim_host_serves_from_PageFrag_and_logs_it()
    {
        var log = new ListLogger();
        WebApplicationBuilder builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { EnvironmentName = "Production" });
        builder.Logging.ClearProviders().AddProvider(log);
        builder.WebHost.UseUrls("http://127.0.0.1:0");
        builder.Services.AddPageFragMemoryPool(Configure);
        await using WebApplication app = builder.Build();
        app.MapGet("/hello", () => "hello");
        await AssertServedFromPageFragAsync(app, app.Services, log);
    }

    [Fact]
    public async Task The_generic_host_serves_from_PageFrag_when_registered_after_ConfigureWebHostDefaults()
    {
        var log = new ListLogger();
        using IHost host = Host.CreateDefaultBuilder()
            .UseEnvironment("Production")
            .ConfigureLogging(l => l.ClearProviders().AddProvider(log))
            .ConfigureWebHostDefaults(web => web.UseUrls("http://127.0.0.1:0").Configure(Hello))
            .ConfigureServices(services => services.AddPageFragMemoryPool(Configure))
            .Build();
        await AssertServedFromPageFragAsync(host, host.Services, log);
    }

    [Fact]
    public async Task The_generic_host_serves_from_PageFrag_when_registered_inside_ConfigureWebHostDefaults()
    {
        var log = new ListLogger();
        using IHost host = Host.CreateDefaultBuilder()
            .UseEnvironment("Production")
            .ConfigureLogging(l => l.ClearProviders().AddProvider(log))
            .ConfigureWebHostDefaults(web => web.UseUrls("http://127.0.0.1:0").Configure(Hello).ConfigureServices(services => services.AddPageFragMemoryPool(Configure)))
            .Build();
        await AssertServedFromPageFragAsync(host, host.Services, log);
    }

    [Fact]
    public async Task The_generic_host_refuses_to_start_when_registered_before_ConfigureWebHostDefaults()
    {
        var log = new ListLogger();
        using IHost host = Host.CreateDefaultBuilder()
            .UseEnvironment("Production")
            .ConfigureLogging(l => l.ClearProviders().AddProvider(log))
            .ConfigureServices(services => services.AddPageFragMemoryPool(Configure))
            .ConfigureWebHostDefaults(web => web.UseUrls("http://127.0.0.1:0").Configure(Hello))
            .Build();
        PageFragMemoryPoolFactory factory = host.Services.GetRequiredService<PageFragMemoryPoolFactory>();

        InvalidOperationException e = await Assert.ThrowsAsync<InvalidOperationException>(() => host.StartAsync());
        Assert.StartsWith("AddPageFragMemoryPool() was called, but Kestrel would rent its buffers from Microsoft.AspNetCore.", e.Message, StringComparison.Ordinal);
        Assert.Contains("Call AddPageFragMemoryPool() after them", e.Message, StringComparison.Ordinal);

        // Refused before Kestrel bound anything: no PageFrag pool, no page, no "uses PageFrag" line.
        Assert.Equal(0, factory.PoolsCreated);
        Assert.DoesNotContain(log.Lines, l => l.Id.Name == "KestrelUsesPageFrag");
        Leaks.AssertNone(factory.Allocator);
    }

    [Fact]
    public async Task PageFrag_events_reach_the_hosts_ILogger_while_it_runs()
    {
        var log = new ListLogger();
        WebApplicationBuilder builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { EnvironmentName = "Production" });
        builder.Logging.ClearProviders().AddProvider(log);
        builder.WebHost.UseUrls("http://127.0.0.1:0");
        builder.Services.AddPageFragMemoryPool(Configure);
        await using WebApplication app = builder.Build();
        await app.StartAsync();

        // A limit of one 64 KiB arena (a size no other test uses, so the line is this test's): the second
        // order-4 block is refused, and the PageFrag event source reports it.
        using var allocator = new PageAllocator(new PageAllocatorOptions { ArenaSize = 1 << 16, MaxBytes = 1 << 16 });
        Assert.True(allocator.TryAllocPages(4, AllocFlags.None, out Page page));
        Assert.False(allocator.TryAllocPages(4, AllocFlags.None, out _));
        allocator.FreePages(page);
        await app.StopAsync();

        (string category, LogLevel level, EventId id, string message) = Assert.Single(log.Lines, l => l.Id.Name == "LimitReached" && l.Message.Contains("limit of 65536 bytes", StringComparison.Ordinal));
        Assert.Equal("PageFrag.AspNetCore", category);
        Assert.Equal(LogLevel.Information, level);
        Assert.Equal(3, id.Id);
        Assert.Equal("Allocation of 65536 bytes refused: the memory limit of 65536 bytes is reached (65536 bytes in arenas).", message);
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void LimitReached_is_logged_at_most_once_a_second_and_the_next_line_counts_the_ones_left_out()
    {
        var log = new ListLogger();
        var time = new SteppedTime();
        using var events = new PageFragEventLogger(log.CreateLogger("limit-test"), time);
        using var allocator = new PageAllocator(new PageAllocatorOptions { ArenaSize = 1 << 15, MaxBytes = 1 << 15 });
        Assert.True(allocator.TryAllocPages(3, AllocFlags.None, out Page page));
        for (int i = 0; i < 3; i++)
        {
            Assert.False(allocator.TryAllocPages(0, AllocFlags.None, out _));
        }

        Assert.Equal(["Allocation of 4096 bytes refused: the memory limit of 32768 bytes is reached (32768 bytes in arenas)."], LimitLines());
        time.Advance(PageFragEventLogger.LimitReachedInterval);
        Assert.False(allocator.TryAllocPages(1, AllocFlags.None, out _));
        Assert.Equal(
            ["Allocation of 4096 bytes refused: the memory limit of 32768 bytes is reached (32768 bytes in arenas).",
             "Allocation of 8192 bytes refused: the memory limit of 32768 bytes is reached (32768 bytes in arenas). (2 more refused since the previous line.)"],
            LimitLines());
        allocator.FreePages(page);
        Leaks.AssertNone(allocator);

        string[] LimitLines() => [.. log.Lines.Where(l => l.Category == "limit-test" && l.Id.Name == "LimitReached").Select(l => l.Message)];
    }

    [Fact]
    public void Registering_twice_registers_the_start_up_check_once()
    {
        var services = new ServiceCollection();
        services.AddPageFragMemoryPool().AddPageFragMemoryPool();
        Assert.Single(services, d => d.ServiceType == typeof(IHostedService));
        Assert.Single(services, d => d.ServiceType == typeof(KestrelMemoryPoolMetrics));
    }

    private static void Hello(IApplicationBuilder app) => app.Run(context => context.Response.WriteAsync("hello"));

    private static async Task AssertServedFromPageFragAsync(IHost host, IServiceProvider services, ListLogger log)
    {
        PageFragMemoryPoolFactory factory = services.GetRequiredService<PageFragMemoryPoolFactory>();
        await host.StartAsync();
        try
        {
            string address = services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.Single();
            long rentsBefore = factory.Pools.Sum(p => p.GetStats().Rents);
            using (var client = new HttpClient { BaseAddress = new Uri(address) })
            {
                Assert.Equal("hello", await client.GetStringAsync("/hello"));
            }

            Assert.True(factory.PoolsCreated > 0, "Kestrel created no PageFrag pool");
            long rentsAfter = factory.Pools.Sum(p => p.GetStats().Rents);
            Assert.True(rentsAfter > rentsBefore, $"the request rented nothing from PageFrag ({rentsBefore} -> {rentsAfter})");
            (string category, LogLevel level, _, string message) = Assert.Single(log.Lines, l => l.Id.Name == "KestrelUsesPageFrag");
            Assert.Equal("PageFrag.AspNetCore", category);
            Assert.Equal(LogLevel.Information, level);
            Assert.StartsWith("Kestrel rents its buffers from PageFrag (PageFragMemoryPoolFactory: arenas of 1048576 bytes", message, StringComparison.Ordinal);
        }
        finally
        {
            await host.StopAsync();
        }

        Assert.Empty(factory.Pools);
        Leaks.AssertNone(factory.Allocator);
    }

    private sealed class SteppedTime : TimeProvider
    {
        private long _now = 1;

        public override long TimestampFrequency => TimeSpan.TicksPerSecond;

        public override long GetTimestamp() => Interlocked.Read(ref _now);

        public void Advance(TimeSpan by) => Interlocked.Add(ref _now, by.Ticks);
    }
}
