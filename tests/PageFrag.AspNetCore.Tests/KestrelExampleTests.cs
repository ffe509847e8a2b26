using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.Extensions.DependencyInjection;
using PageFrag.Examples.Kestrel;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;

namespace PageFrag.AspNetCore.Tests;

/// <summary>The example app that bench/kestrel-wrk.sh loads serves the same bytes with either pool.</summary>
public class KestrelExampleTests
{
    [Theory]
    [InlineData("default", null)]
    [InlineData("pagefrag", null)]
    [InlineData("pagefrag", 1 << 20)]
    public async Task The_example_serves_small_and_large_bodies_with_either_pool(string pool, int? arenaSize)
    {
        WebApplication app = KestrelExample.Build(pool, "http://127.0.0.1:0", arenaSize);
        await app.StartAsync();
        try
        {
            var address = new Uri(app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.Single());
            using var client = new HttpClient { BaseAddress = address };

            Assert.Equal("hello", await client.GetStringAsync("/hello"));
            byte[] body = await client.GetByteArrayAsync("/bytes/300000");
            Assert.Equal(300000, body.Length);
            for (int i = 0; i < body.Length; i++)
            {
                Assert.True(body[i] == KestrelExample.Pattern(i), $"byte {i}");
            }

            var factory = app.Services.GetRequiredService<IMemoryPoolFactory<byte>>();
            Assert.Equal(pool == "pagefrag", factory is PageFragMemoryPoolFactory);
            if (factory is PageFragMemoryPoolFactory pf)
            {
                Assert.Equal(arenaSize ?? PageAllocatorOptions.DefaultArenaSize, pf.Allocator.Options.ArenaSize);
            }
        }
        finally
        {
            await app.StopAsync();
        }

        if (app.Services.GetRequiredService<IMemoryPoolFactory<byte>>() is PageFragMemoryPoolFactory pageFrag)
        {
            Leaks.AssertNone(pageFrag.Allocator);
        }

        await app.DisposeAsync();
    }

    [Fact]
    public void An_unknown_pool_is_refused_by_name()
    {
        var e = Assert.Throws<ArgumentException>(() => KestrelExample.Build("arraypool", "http://127.0.0.1:0"));
        Assert.Equal("pool", e.ParamName);
        Assert.StartsWith("Unknown pool 'arraypool': use default or pagefrag.", e.Message);
    }

    [Fact]
    public async Task An_arena_size_is_refused_for_Kestrels_pool_and_a_bad_one_by_the_allocator()
    {
        var e = Assert.Throws<ArgumentException>(() => KestrelExample.Build("default", "http://127.0.0.1:0", 1 << 20));
        Assert.Equal("arenaSize", e.ParamName);
        Assert.StartsWith("An arena size applies to the pagefrag pool only.", e.Message);

        // The allocator's own check, whether the host builds the factory when the app is built or when it starts.
        var bad = await Assert.ThrowsAsync<ArgumentOutOfRangeException>(async () =>
        {
            await using WebApplication app = KestrelExample.Build("pagefrag", "http://127.0.0.1:0", 1000);
            await app.StartAsync();
        });
        Assert.Equal("ArenaSize", bad.ParamName);
        Assert.StartsWith("ArenaSize must be a power of two", bad.Message);
    }
}
