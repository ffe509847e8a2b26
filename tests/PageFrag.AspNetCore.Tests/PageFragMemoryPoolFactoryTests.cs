using System.Buffers;
using Microsoft.AspNetCore.Connections;
using Microsoft.Extensions.Options;
using PageFrag.Buffers;
using PageFrag.Diagnostics;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;

namespace PageFrag.AspNetCore.Tests;

public class PageFragMemoryPoolFactoryTests
{
    [Fact]
    public void The_timer_trims_idle_pools_on_every_tick()
    {
        var time = new ManualTimeProvider();
        using var factory = new PageFragMemoryPoolFactory(new PageFragMemoryPoolFactoryOptions(), time);
        Assert.Equal(PageFragMemoryPoolFactoryOptions.DefaultTrimInterval, time.Period);
        MemoryPool<byte> pool = factory.Create(new MemoryPoolOptions { Owner = "sockets" });
        Assert.Equal("sockets", Assert.IsType<PageFragMemoryPool>(pool).Name);
        pool.Rent(100).Dispose();
        long cached = factory.Allocator.PagesInUse;
        Assert.NotEqual(0, cached);

        time.Fire();
        Assert.Equal(1, factory.Trims);
        Assert.Equal(cached, factory.Allocator.PagesInUse);

        time.Fire();
        Assert.Equal(2, factory.Trims);
        Assert.Equal(0, factory.Allocator.PagesInUse);
        Assert.Equal(0, factory.Allocator.GetStats().Arenas);
        pool.Dispose();
        Leaks.AssertNone(factory.Allocator);
    }

    [Fact]
    public void Every_tick_gives_the_free_pages_of_the_kept_arenas_back_to_the_OS_unless_turned_off()
    {
        Assert.True(new PageFragMemoryPoolFactoryOptions().DiscardFreeMemory);
        foreach (bool discard in new[] { true, false })
        {
            var time = new ManualTimeProvider();
            using var factory = new PageFragMemoryPoolFactory(new PageFragMemoryPoolFactoryOptions { DiscardFreeMemory = discard }, time);
            MemoryPool<byte> pool = factory.Create(new MemoryPoolOptions { Owner = "sockets" });
            IMemoryOwner<byte> held = pool.Rent(4096);
            held.Memory.Span.Fill(0x3C);

            time.Fire();
            Assert.Equal(discard && OperatingSystem.IsLinux(), factory.Allocator.BytesDiscarded > 0);
            Assert.Equal(1, factory.Allocator.GetStats().Arenas);
            Assert.True(held.Memory.Span.IndexOfAnyExcept((byte)0x3C) < 0, "a rented buffer keeps its bytes");

            held.Dispose();
            pool.Dispose();
            Leaks.AssertNone(factory.Allocator);
        }
    }

    [Fact]
    public void A_tick_during_a_lull_keeps_the_arenas_the_interval_used_so_the_next_burst_needs_no_new_ones()
    {
        var time = new ManualTimeProvider();
        var options = new PageFragMemoryPoolFactoryOptions { AllocatorOptions = new PageAllocatorOptions { ArenaSize = 64 * 1024 } };
        using var factory = new PageFragMemoryPoolFactory(options, time);
        MemoryPool<byte> pool = factory.Create();
        var owners = new List<IMemoryOwner<byte>>();

        void Burst()
        {
            for (int i = 0; i < 64; i++)
            {
                IMemoryOwner<byte> owner = pool.Rent(4096);
                owner.Memory.Span.Fill((byte)i);
                owners.Add(owner);
            }

            foreach (IMemoryOwner<byte> owner in owners)
            {
                owner.Dispose();
            }

            owners.Clear();
        }

        Burst();
        int arenas = factory.Allocator.GetStats().Arenas;
        Assert.True(arenas >= 4, $"{arenas} arenas");

        // Every tick falls in a lull (nothing rented), but each interval had a burst: nothing is released,
        // and the bursts find the arenas they need.
        for (int tick = 0; tick < 3; tick++)
        {
            time.Fire();
            PageAllocatorStats stats = factory.Allocator.GetStats();
            Assert.Equal(arenas, stats.Arenas);
            Assert.Equal(0, stats.ArenasTrimmed);
            Burst();
            Assert.Equal(arenas, factory.Allocator.GetStats().Arenas);
        }

        // Then quiet: one tick marks the caches and the arenas, the next drains the caches and releases every arena.
        time.Fire();
        Assert.Equal(arenas, factory.Allocator.GetStats().Arenas);
        time.Fire();
        PageAllocatorStats idle = factory.Allocator.GetStats();
        Assert.Equal(0, idle.Arenas);
        Assert.Equal(arenas, idle.ArenasTrimmed);
        Assert.Equal(0, idle.PagesInUse);
        pool.Dispose();
        Leaks.AssertNone(factory.Allocator);
    }

    [Fact]
    public void Trim_drains_every_cache_and_releases_every_free_arena_at_once_even_right_after_use()
    {
        var time = new ManualTimeProvider();
        using var factory = new PageFragMemoryPoolFactory(new PageFragMemoryPoolFactoryOptions { AllocatorOptions = new PageAllocatorOptions { ArenaSize = 64 * 1024 } }, time);
        MemoryPool<byte> a = factory.Create();
        MemoryPool<byte> b = factory.Create();
        IMemoryOwner<byte> held = a.Rent(4096);
        for (int i = 0; i < 40; i++)
        {
            a.Rent(4096).Dispose();
            b.Rent(300).Dispose();
        }

        time.Fire();
        Assert.NotEqual(0, factory.Allocator.GetStats().Arenas);

        factory.Trim();
        PageAllocatorStats stats = factory.Allocator.GetStats();
        Assert.Equal(1, stats.Arenas);
        Assert.Equal(8, stats.PagesInUse); // the 32 KiB page under the buffer still held; both caches drained
        held.Memory.Span.Fill(3);
        held.Dispose();
        factory.Trim();
        Assert.Equal(0, factory.Allocator.GetStats().Arenas);
        a.Dispose();
        b.Dispose();
        Leaks.AssertNone(factory.Allocator);
    }

    [Fact]
    public void Disposed_pools_are_forgotten_by_the_next_trim()
    {
        using var factory = new PageFragMemoryPoolFactory(new PageFragMemoryPoolFactoryOptions { TrimInterval = Timeout.InfiniteTimeSpan }, TimeProvider.System);
        MemoryPool<byte> a = factory.Create();
        MemoryPool<byte> b = factory.Create();
        a.Dispose();
        Assert.Single(factory.Pools);
        factory.Trim();
        Assert.Equal(2, factory.PoolsCreated);
        b.Dispose();
        Leaks.AssertNone(factory.Allocator);
    }

    [Fact]
    public void Disposing_the_factory_disposes_the_pools_still_alive_and_Create_then_throws()
    {
        var factory = new PageFragMemoryPoolFactory(new PageFragMemoryPoolFactoryOptions { TrimInterval = Timeout.InfiniteTimeSpan }, TimeProvider.System);
        var pool = (PageFragMemoryPool)factory.Create();
        IMemoryOwner<byte> late = pool.Rent(100);
        factory.Dispose();
        factory.Dispose();
        Assert.True(pool.IsDisposed);
        Assert.Throws<ObjectDisposedException>(() => pool.Rent(1));
        Assert.Equal(typeof(PageFragMemoryPoolFactory).FullName, Assert.Throws<ObjectDisposedException>(() => factory.Create()).ObjectName);
        late.Memory.Span.Fill(1);
        late.Dispose();
        Assert.Equal(0, factory.Allocator.PagesInUse);
    }

    [Fact]
    public void The_diagnostic_option_wraps_every_pool()
    {
        using var factory = new PageFragMemoryPoolFactory(new PageFragMemoryPoolFactoryOptions { UseDiagnosticPool = true, TrimInterval = Timeout.InfiniteTimeSpan }, TimeProvider.System);
        MemoryPool<byte> pool = factory.Create();
        var diagnostic = Assert.IsType<DiagnosticMemoryPool>(pool);
        Assert.IsType<PageFragMemoryPool>(diagnostic.Inner);
        IMemoryOwner<byte> owner = pool.Rent(10);
        owner.Dispose();
        Assert.Throws<ObjectDisposedException>(() => owner.Dispose());
        pool.Dispose();
        Leaks.AssertNone(factory.Allocator);
    }

    [Fact]
    public void Bad_options_are_rejected_when_the_factory_is_created()
    {
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => new PageFragMemoryPoolFactory(Options.Create(new PageFragMemoryPoolFactoryOptions { TrimInterval = TimeSpan.Zero })));
        Assert.Equal("TrimInterval", e.ParamName);
        Assert.StartsWith("TrimInterval must be positive (at most 49 days) or Timeout.InfiniteTimeSpan.", e.Message);

        e = Assert.Throws<ArgumentOutOfRangeException>(() => new PageFragMemoryPoolFactory(Options.Create(new PageFragMemoryPoolFactoryOptions { MaxBufferSize = 100 })));
        Assert.Equal("MaxBufferSize", e.ParamName);

        Assert.Throws<ArgumentNullException>(() => new PageFragMemoryPoolFactory(null!));
    }

    /// <summary>A time provider whose single timer fires when the test says so.</summary>
    private sealed class ManualTimeProvider : TimeProvider
    {
        private TimerCallback? _callback;
        private object? _state;

        public TimeSpan Period { get; private set; }

        public override ITimer CreateTimer(TimerCallback callback, object? state, TimeSpan dueTime, TimeSpan period)
        {
            _callback = callback;
            _state = state;
            Period = period;
            return new ManualTimer(this);
        }

        public void Fire() => _callback!(_state);

        private sealed class ManualTimer(ManualTimeProvider owner) : ITimer
        {
            public bool Change(TimeSpan dueTime, TimeSpan period)
            {
                owner.Period = period;
                return true;
            }

            public void Dispose() => owner._callback = null;

            public ValueTask DisposeAsync()
            {
                Dispose();
                return ValueTask.CompletedTask;
            }
        }
    }
}
