using System.Buffers;
using DotNetty.Buffers;
using DotNetty.Common;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.IO;

namespace PageFrag.Cli.Bench;

/// <summary>
/// The peers' long-lived objects, created on first use and shared by every scenario of one bench run:
/// Kestrel's pool (from a WebApplication that is built but never started), DotNetty's allocators and
/// RecyclableMemoryStream's manager. PageFrag's allocators are private to each measurement instead, so that
/// leaks can be counted.
/// </summary>
internal sealed class PeerResources : IDisposable
{
    private WebApplication? _app;
    private MemoryPool<byte>? _kestrelPool;
    private PooledByteBufferAllocator? _dotNetty;
    private RecyclableMemoryStreamManager? _rms;

    /// <summary>
    /// Kestrel's pool as a server gets it: <c>IMemoryPoolFactory&lt;byte&gt;</c> from the service container of
    /// <c>WebApplication.CreateSlimBuilder()</c>, then <c>Create()</c>. In ASP.NET Core 10 that is a
    /// <c>PinnedBlockMemoryPool</c> of 4096-byte blocks. The server is never started, so the pool's
    /// idle eviction (driven by Kestrel's heartbeat) does not run.
    /// </summary>
    public MemoryPool<byte> KestrelPool
    {
        get
        {
            if (_kestrelPool is null)
            {
                WebApplicationBuilder builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions
                {
                    Args = [],
                    EnvironmentName = "Production",
                    ContentRootPath = AppContext.BaseDirectory,
                });
                builder.Logging.ClearProviders();
                _app = builder.Build();
                IMemoryPoolFactory<byte> factory = _app.Services.GetRequiredService<IMemoryPoolFactory<byte>>();
                _kestrelPool = factory.Create(new MemoryPoolOptions { Owner = "pagefrag-bench" });
            }

            return _kestrelPool;
        }
    }

    /// <summary>
    /// One DotNetty pooled allocator with its default arenas, page size (8 KiB) and chunk size (16 MiB); heap
    /// and direct buffers come from its two sets of arenas. Leak detection is turned off (its default
    /// samples one buffer in 128 and allocates a tracker for it), so DotNetty is measured at its fastest.
    /// </summary>
    public PooledByteBufferAllocator DotNetty
    {
        get
        {
            if (_dotNetty is null)
            {
                ResourceLeakDetector.Level = ResourceLeakDetector.DetectionLevel.Disabled;
                _dotNetty = new PooledByteBufferAllocator(preferDirect: false);
            }

            return _dotNetty;
        }
    }

    /// <summary>A RecyclableMemoryStreamManager with the library's default options.</summary>
    public RecyclableMemoryStreamManager Rms => _rms ??= new RecyclableMemoryStreamManager();

    /// <summary>The peer's version as loaded, for the report ("DotNetty.Buffers 0.7.6").</summary>
    public static string Version(BenchPeer peer)
    {
        Type? type = peer switch
        {
            BenchPeer.Kestrel => typeof(IMemoryPoolFactory<>),
            BenchPeer.DotNettyHeap or BenchPeer.DotNettyDirect => typeof(PooledByteBufferAllocator),
            BenchPeer.RecyclableMemoryStream => typeof(RecyclableMemoryStreamManager),
            _ => null,
        };
        if (type is null)
        {
            return $".NET {Environment.Version}";
        }

        System.Reflection.AssemblyName name = type.Assembly.GetName();
        return $"{name.Name} {name.Version}";
    }

    public void Dispose()
    {
        _kestrelPool?.Dispose();
        _kestrelPool = null;
        if (_app is not null)
        {
            ((IDisposable)_app).Dispose();
            _app = null;
        }
    }
}
