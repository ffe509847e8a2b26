using System.Buffers;
using System.IO.Pipelines;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using PageFrag.Tests.Infrastructure;

namespace PageFrag.AspNetCore.Tests;

/// <summary>A real Kestrel app on 127.0.0.1 with an ephemeral port, using PageFrag's pools.</summary>
internal sealed class KestrelApp : IAsyncDisposable
{
    // Hints a handler passes to BodyWriter.GetMemory: from one byte to above MaxBufferSize (which the
    // pipe then serves from ArrayPool), so that responses mix pool fragments, blocks and arrays.
    private static readonly int[] s_hints = [1, 100, 4096, 5000, 1, 30_000, 100_000, 700];

    private KestrelApp(WebApplication app, Uri address)
    {
        App = app;
        Address = address;
        Factory = app.Services.GetRequiredService<PageFragMemoryPoolFactory>();
    }

    public WebApplication App { get; }

    public Uri Address { get; }

    public PageFragMemoryPoolFactory Factory { get; }

    public static async Task<KestrelApp> StartAsync(Action<PageFragMemoryPoolFactoryOptions>? configure = null)
    {
        WebApplicationBuilder builder = WebApplication.CreateBuilder(new WebApplicationOptions { EnvironmentName = "Production" });
        builder.Logging.ClearProviders();
        builder.WebHost.UseUrls("http://127.0.0.1:0");
        builder.Services.AddPageFragMemoryPool(options =>
        {
            // Tests drive trimming themselves.
            options.TrimInterval = Timeout.InfiniteTimeSpan;
            options.AllocatorOptions = new Pages.PageAllocatorOptions { ArenaSize = 1 << 20 };
            configure?.Invoke(options);
        });

        WebApplication app = builder.Build();
        app.MapGet("/hello", () => "hello");
        app.MapGet("/bytes/{size:int}", WriteBytesAsync);
        app.MapPost("/echo", EchoAsync);
        await app.StartAsync();
        string address = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.Single();
        return new KestrelApp(app, new Uri(address));
    }

    /// <summary>Stops Kestrel (which disposes its pools) and checks that every page came back.</summary>
    public async Task StopAndAssertNoLeaksAsync()
    {
        await App.StopAsync();
        Assert.All(Factory.Pools, pool => Assert.Fail($"pool {pool.Name} was not disposed by Kestrel"));
        Leaks.AssertNone(Factory.Allocator);
    }

    public ValueTask DisposeAsync() => App.DisposeAsync();

    public static byte Pattern(long position) => (byte)((position * 31) ^ (position >> 8));

    public static void AssertPattern(ReadOnlySpan<byte> bytes, long expectedLength)
    {
        Assert.Equal(expectedLength, bytes.Length);
        for (int i = 0; i < bytes.Length; i++)
        {
            if (bytes[i] != Pattern(i))
            {
                Assert.Fail($"byte {i} is {bytes[i]}, expected {Pattern(i)}");
            }
        }
    }

    private static async Task WriteBytesAsync(int size, HttpContext context)
    {
        context.Response.ContentLength = size;
        PipeWriter writer = context.Response.BodyWriter;
        long written = 0;
        int chunk = 0;
        while (written < size)
        {
            Memory<byte> memory = writer.GetMemory(s_hints[chunk % s_hints.Length]);
            int n = (int)Math.Min(memory.Length, size - written);
            Span<byte> span = memory.Span;
            for (int i = 0; i < n; i++)
            {
                span[i] = Pattern(written + i);
            }

            writer.Advance(n);
            written += n;

            // Flushing rarely leaves many segments in the pipe: the socket sender then sends a
            // multi-segment buffer, through SocketAsyncEventArgs.BufferList.
            if (++chunk % 24 == 0)
            {
                await writer.FlushAsync();
            }
        }

        await writer.FlushAsync();
    }

    private static async Task EchoAsync(HttpContext context)
    {
        PipeReader reader = context.Request.BodyReader;
        PipeWriter writer = context.Response.BodyWriter;
        while (true)
        {
            ReadResult result = await reader.ReadAsync();
            foreach (ReadOnlyMemory<byte> segment in result.Buffer)
            {
                segment.Span.CopyTo(writer.GetSpan(segment.Length));
                writer.Advance(segment.Length);
            }

            reader.AdvanceTo(result.Buffer.End);
            await writer.FlushAsync();
            if (result.IsCompleted)
            {
                break;
            }
        }
    }
}
