using System.Buffers;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace PageFrag.AspNetCore;

/// <summary>
/// Started with the host by <c>AddPageFragMemoryPool</c>: before any server starts, checks that the
/// <see cref="IMemoryPoolFactory{T}"/> Kestrel will resolve is the PageFrag factory (or fails the start-up),
/// logs which pool Kestrel uses, and forwards the <c>PageFrag</c> events to the log while the host runs.
/// </summary>
/// <remarks>
/// Kestrel's transport takes the <em>last</em> <see cref="IMemoryPoolFactory{T}"/> registered, and
/// <c>UseKestrel</c> registers its own unconditionally. With the generic host,
/// <c>ConfigureServices(s =&gt; s.AddPageFragMemoryPool())</c> placed before <c>ConfigureWebHostDefaults</c>
/// runs first, so Kestrel's registration lands after it and wins. A service collection gives no hook to
/// run later, so that case is caught here, at <see cref="IHostedLifecycleService.StartingAsync"/>, which
/// every host runs before starting any hosted service (the web server included): the start fails with
/// an <see cref="InvalidOperationException"/> that says what to move.
/// </remarks>
internal sealed class PageFragHostedService(IServiceProvider services, PageFragMemoryPoolFactory factory, KestrelMemoryPoolMetrics kestrelMetrics, ILoggerFactory loggerFactory) : IHostedLifecycleService
{
    // Held so that the Kestrel instruments exist from start-up on (a singleton nobody resolves is never created).
    private readonly KestrelMemoryPoolMetrics _kestrelMetrics = kestrelMetrics;

    /// <summary>The log category of the start-up line and of the forwarded events.</summary>
    public const string LogCategory = "PageFrag.AspNetCore";

    private readonly ILogger _logger = loggerFactory.CreateLogger(LogCategory);
    private PageFragEventLogger? _events;

    public Task StartingAsync(CancellationToken cancellationToken)
    {
        IMemoryPoolFactory<byte>? resolved = services.GetService<IMemoryPoolFactory<byte>>();
        if (!ReferenceEquals(resolved, factory))
        {
            string other = resolved?.GetType().FullName ?? "none";
            throw new InvalidOperationException(
                $"AddPageFragMemoryPool() was called, but Kestrel would rent its buffers from {other}: an IMemoryPoolFactory<byte> was registered after PageFrag's " +
                "(UseKestrel and ConfigureWebHostDefaults register Kestrel's own). Call AddPageFragMemoryPool() after them: in ConfigureWebHostDefaults(web => web.ConfigureServices(s => s.AddPageFragMemoryPool())), " +
                "or in a ConfigureServices placed after ConfigureWebHostDefaults; WebApplication.CreateBuilder and CreateSlimBuilder have already registered Kestrel, so builder.Services.AddPageFragMemoryPool() is right there.");
        }

        GC.KeepAlive(_kestrelMetrics);
        _events ??= new PageFragEventLogger(_logger);
        PageFragLog.KestrelUsesPageFrag(_logger, factory.Allocator.Options.ArenaSize, factory.Allocator.Options.MaxBytes, factory.Settings.MaxBufferSize, factory.Settings.TrimInterval);
        return Task.CompletedTask;
    }

    public Task StartAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StartedAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StoppingAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public Task StoppedAsync(CancellationToken cancellationToken)
    {
        // After the server stopped: a stalled pool or a leak reported during shutdown is still logged.
        Interlocked.Exchange(ref _events, null)?.Dispose();
        return Task.CompletedTask;
    }
}

internal static partial class PageFragLog
{
    [LoggerMessage(EventId = 1, EventName = "KestrelUsesPageFrag", Level = LogLevel.Information,
        Message = "Kestrel rents its buffers from PageFrag (PageFragMemoryPoolFactory: arenas of {ArenaSize} bytes, limit {MaxBytes} bytes, buffers up to {MaxBufferSize} bytes, idle trim every {TrimInterval}).")]
    public static partial void KestrelUsesPageFrag(ILogger logger, int arenaSize, long maxBytes, int maxBufferSize, TimeSpan trimInterval);
}
