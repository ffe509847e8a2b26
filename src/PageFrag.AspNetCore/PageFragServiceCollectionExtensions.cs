using System.Diagnostics.Metrics;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;
using PageFrag.AspNetCore;
using PageFrag.Diagnostics;

namespace Microsoft.Extensions.DependencyInjection;

/// <summary>Registers PageFrag as Kestrel's memory pool.</summary>
public static class PageFragServiceCollectionExtensions
{
    /// <summary>
    /// Replaces Kestrel's <see cref="IMemoryPoolFactory{T}"/> with a <see cref="PageFragMemoryPoolFactory"/>,
    /// so that the socket transport and Kestrel rent their buffers from PageFrag pools, and registers the
    /// <c>PageFrag</c> meter (<see cref="PageFragMetrics"/>, created through the app's <see cref="IMeterFactory"/>).
    /// </summary>
    /// <remarks>
    /// <para>Call it after Kestrel is registered: <c>WebApplication.CreateBuilder</c> and
    /// <c>CreateSlimBuilder</c> have already done so; with the generic host, call it inside
    /// <c>ConfigureWebHostDefaults(web =&gt; web.ConfigureServices(...))</c> or in a <c>ConfigureServices</c>
    /// placed after <c>ConfigureWebHostDefaults</c>. Kestrel's transport takes the last registered factory
    /// and <c>UseKestrel</c> registers its own unconditionally, so an earlier call would be overridden: the
    /// host then fails to start with an <see cref="InvalidOperationException"/> saying so, instead of
    /// silently running on Kestrel's pool. At start the host logs (category <c>PageFrag.AspNetCore</c>)
    /// which pool Kestrel uses, and from then on every <c>PageFrag</c> event (leaks reclaimed by the
    /// finalizer, stalled page pool shutdowns, allocations refused by the memory limit).</para>
    /// <para>Also registers Kestrel's <c>Microsoft.AspNetCore.MemoryPool</c> instruments
    /// (<c>aspnetcore.memory_pool.pooled</c>, <c>.allocated</c>, <c>.evicted</c>, <c>.rented</c>), fed from
    /// PageFrag's figures, so that Kestrel dashboards keep working (docs/metrics.md).</para>
    /// <para>Configure with <paramref name="configure"/> or the options pattern
    /// (<see cref="PageFragMemoryPoolFactoryOptions"/>). Calling it twice registers everything once.</para>
    /// </remarks>
    /// <exception cref="ArgumentNullException"><paramref name="services"/> is null.</exception>
    public static IServiceCollection AddPageFragMemoryPool(this IServiceCollection services, Action<PageFragMemoryPoolFactoryOptions>? configure = null)
    {
        ArgumentNullException.ThrowIfNull(services);
        OptionsBuilder<PageFragMemoryPoolFactoryOptions> options = services.AddOptions<PageFragMemoryPoolFactoryOptions>();
        if (configure is not null)
        {
            options.Configure(configure);
        }

        services.TryAddSingleton(static sp => new PageFragMetrics(sp.GetService<IMeterFactory>()));
        services.RemoveAll<IMemoryPoolFactory<byte>>();
        services.TryAddSingleton<PageFragMemoryPoolFactory>();
        services.AddSingleton<IMemoryPoolFactory<byte>>(static sp => sp.GetRequiredService<PageFragMemoryPoolFactory>());
        services.TryAddSingleton(static sp => new KestrelMemoryPoolMetrics(sp.GetRequiredService<PageFragMemoryPoolFactory>(), sp.GetService<IMeterFactory>()));
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IHostedService, PageFragHostedService>());
        return services;
    }
}
