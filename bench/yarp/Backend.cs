using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;

namespace PageFrag.Bench.Yarp;

/// <summary>
/// The origin server behind the proxy and the relay: Kestrel with its own pool, <c>GET /bytes/{size}</c>
/// answers <c>size</c> bytes from a body prepared once, so the backend costs the same in every run.
/// </summary>
internal static class Backend
{
    private const int MaxSize = 1 << 20;

    private static readonly byte[] s_body = CreateBody();

    public static WebApplication Build(int port)
    {
        WebApplicationBuilder builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { EnvironmentName = "Production" });
        builder.Logging.ClearProviders();
        builder.WebHost.UseUrls($"http://127.0.0.1:{port}");
        WebApplication app = builder.Build();
        app.MapGet("/bytes/{size:int}", WriteBytesAsync);
        return app;
    }

    private static byte[] CreateBody()
    {
        byte[] body = new byte[MaxSize];
        for (int i = 0; i < body.Length; i++)
        {
            body[i] = (byte)(i * 7);
        }

        return body;
    }

    private static async Task WriteBytesAsync(int size, HttpContext context)
    {
        if (size < 0 || size > MaxSize)
        {
            context.Response.StatusCode = StatusCodes.Status400BadRequest;
            return;
        }

        context.Response.ContentLength = size;
        await context.Response.BodyWriter.WriteAsync(s_body.AsMemory(0, size), context.RequestAborted);
    }
}
