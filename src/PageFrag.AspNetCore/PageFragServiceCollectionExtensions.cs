using System.Diagnostics.Metrics;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.DependencyInjection.Extensions;
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
    /// Call it after Kestrel is registered (<c>WebApplication.CreateBuilder</c> has already done so; with
    /// <c>ConfigureWebHostDefaults</c>, call it in <c>ConfigureServices</c> after <c>UseKestrel</c>): the
    /// transport takes the last registered factory. Configure with <paramref name="configure"/> or the
    /// options pattern (<see cref="PageFragMemoryPoolFactoryOptions"/>).
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
        return services;
    }
}
