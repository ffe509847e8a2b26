using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Yarp.ReverseProxy.Configuration;

namespace PageFrag.Bench.Yarp;

/// <summary>
/// A YARP reverse proxy forwarding every path to the backend. The only difference between the two pools is
/// the one line <c>builder.Services.AddPageFragMemoryPool()</c>, which gives Kestrel (and so the proxy's
/// request and response pipes) PageFrag's memory pool instead of its own.
/// </summary>
internal static class Proxy
{
    public static WebApplication Build(string pool, int port, int backendPort)
    {
        WebApplicationBuilder builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { EnvironmentName = "Production" });
        builder.Logging.ClearProviders();
        builder.WebHost.UseUrls($"http://127.0.0.1:{port}");
        if (pool == "pagefrag")
        {
            builder.Services.AddPageFragMemoryPool();
        }

        RouteConfig[] routes =
        [
            new RouteConfig { RouteId = "all", ClusterId = "backend", Match = new RouteMatch { Path = "{**rest}" } },
        ];
        ClusterConfig[] clusters =
        [
            new ClusterConfig
            {
                ClusterId = "backend",
                Destinations = new Dictionary<string, DestinationConfig>
                {
                    ["loopback"] = new DestinationConfig { Address = $"http://127.0.0.1:{backendPort}/" },
                },
            },
        ];
        builder.Services.AddReverseProxy().LoadFromMemory(routes, clusters);

        WebApplication app = builder.Build();
        app.MapReverseProxy();
        return app;
    }
}
