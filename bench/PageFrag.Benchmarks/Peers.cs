using System.Buffers;
using DotNetty.Buffers;
using DotNetty.Common;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace PageFrag.Benchmarks;

/// <summary>
/// The peers' long-lived objects, created once per process: Kestrel's pool as a server gets it
/// (<c>IMemoryPoolFactory&lt;byte&gt;</c> from a WebApplication's services, never started) and one DotNetty
/// pooled allocator with leak detection off.
/// </summary>
internal static class Peers
{
    private static readonly Lazy<MemoryPool<byte>> s_kestrel = new(CreateKestrelPool);
    private static readonly Lazy<PooledByteBufferAllocator> s_dotNetty = new(CreateDotNetty);

    /// <summary>ASP.NET Core 10's <c>PinnedBlockMemoryPool</c>: one 4096-byte pinned block per rent.</summary>
    public static MemoryPool<byte> KestrelPool => s_kestrel.Value;

    /// <summary>DotNetty's <c>PooledByteBufferAllocator</c> with its default arenas.</summary>
    public static PooledByteBufferAllocator DotNetty => s_dotNetty.Value;

    private static MemoryPool<byte> CreateKestrelPool()
    {
        WebApplicationBuilder builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions
        {
            Args = [],
            EnvironmentName = "Production",
            ContentRootPath = AppContext.BaseDirectory,
        });
        builder.Logging.ClearProviders();

        // The application is kept for the life of the process: its container owns the factory.
        WebApplication app = builder.Build();
        return app.Services.GetRequiredService<IMemoryPoolFactory<byte>>().Create(new MemoryPoolOptions { Owner = "pagefrag-benchmarks" });
    }

    private static PooledByteBufferAllocator CreateDotNetty()
    {
        // The default samples one buffer in 128 and allocates a tracker for it: measure DotNetty at its fastest.
        ResourceLeakDetector.Level = ResourceLeakDetector.DetectionLevel.Disabled;
        return new PooledByteBufferAllocator(preferDirect: false);
    }
}
