using System.IO.Pipelines;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using PageFrag.Pages;

namespace PageFrag.Examples.Kestrel;

/// <summary>
/// A small Kestrel app whose memory pool is chosen on the command line: Kestrel's own
/// (<c>--pool default</c>) or PageFrag's (<c>--pool pagefrag</c>, the one line
/// <c>builder.Services.AddPageFragMemoryPool()</c>). <c>bench/kestrel-wrk.sh</c> loads it with wrk.
/// </summary>
internal static class KestrelExample
{
    /// <summary>The pool names <c>--pool</c> accepts.</summary>
    public static readonly string[] Pools = ["default", "pagefrag"];

    /// <summary>
    /// Builds the app: <c>GET /hello</c> (a 5-byte body) and <c>GET /bytes/{size}</c> (a body of
    /// <c>size</c> bytes written through the response's <see cref="PipeWriter"/> in 4 KiB pieces).
    /// </summary>
    /// <param name="pool">One of <see cref="Pools"/>.</param>
    /// <param name="urls">Where Kestrel listens.</param>
    /// <param name="arenaSize">With PageFrag's pool, the page allocator's arena size in bytes; null for the
    /// factory's default.</param>
    /// <param name="discardFreeMemory">With PageFrag's pool, whether each trim gives the free pages' physical memory
    /// back to the operating system (<c>PageFragMemoryPoolFactoryOptions.DiscardFreeMemory</c>).</param>
    /// <exception cref="ArgumentException"><paramref name="pool"/> is not one of <see cref="Pools"/>, or an
    /// arena size is given for Kestrel's pool (an arena size the allocator refuses throws its
    /// <see cref="ArgumentOutOfRangeException"/> when the factory is created).</exception>
    public static WebApplication Build(string pool, string urls, int? arenaSize = null, bool discardFreeMemory = true)
    {
        if (!Pools.Contains(pool))
        {
            throw new ArgumentException($"Unknown pool '{pool}': use {string.Join(" or ", Pools)}.", nameof(pool));
        }

        if (arenaSize is not null && pool != "pagefrag")
        {
            throw new ArgumentException("An arena size applies to the pagefrag pool only.", nameof(arenaSize));
        }

        if (Environment.GetEnvironmentVariable("PAGEFRAG_STATS") == "1")
        {
            DiagStats.Start();
        }

        WebApplicationBuilder builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { EnvironmentName = "Production" });
        builder.Logging.ClearProviders();
        builder.WebHost.UseUrls(urls);
        if (pool == "pagefrag")
        {
            builder.Services.AddPageFragMemoryPool(o =>
            {
                if (arenaSize is int size)
                {
                    o.AllocatorOptions = new PageAllocatorOptions { ArenaSize = size };
                }

                o.DiscardFreeMemory = discardFreeMemory;
            });
        }

        WebApplication app = builder.Build();
        app.MapGet("/hello", () => "hello");
        app.MapGet("/bytes/{size:int}", WriteBytesAsync);
        if (Environment.GetEnvironmentVariable("PAGEFRAG_STATS") == "1")
        {
            // A measurement aid for bench/README.md ("Session 6"): where the server's memory is, right now.
            app.MapGet("/stats", (IServiceProvider sp) => DiagStats.Text(sp));
        }
        return app;
    }

    /// <summary>The byte at <paramref name="position"/> of a <c>/bytes</c> body.</summary>
    public static byte Pattern(long position) => (byte)(position * 7);

    private static async Task WriteBytesAsync(int size, HttpContext context)
    {
        if (size < 0 || size > 64 << 20)
        {
            context.Response.StatusCode = StatusCodes.Status400BadRequest;
            return;
        }

        context.Response.ContentLength = size;
        PipeWriter writer = context.Response.BodyWriter;
        for (long written = 0; written < size;)
        {
            Span<byte> span = writer.GetSpan(4096);
            int n = (int)Math.Min(span.Length, size - written);
            for (int i = 0; i < n; i++)
            {
                span[i] = Pattern(written + i);
            }

            writer.Advance(n);
            written += n;
        }

        await writer.FlushAsync();
    }
}
