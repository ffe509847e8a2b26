using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using PageFrag.Pages;
using PageFrag.Pool;
using PageFrag.Tests.Infrastructure;

namespace PageFrag.Tests.Pool;

/// <summary>
/// The receive path of examples/PageFrag.Examples.ReceivePath in small: UDP datagrams on 127.0.0.1 received into
/// buffers sized by <see cref="PagePool.TryAlloc"/>, handed with their truesize to a consumer thread that checks
/// and frees them.
/// </summary>
public class ReceivePathTests
{
    private sealed record Packet(PagePoolBuffer[] Fragments, int Length, int TrueSize);

    [Fact]
    public void Datagrams_received_into_pool_buffers_arrive_intact_are_charged_their_truesize_and_all_pages_come_back()
    {
        using PageAllocator allocator = Leaks.NewAllocator(arenaSize: 1 << 20);
        Outcome o = RunReceivePath(allocator, datagrams: 1500, maxSize: 9000);
        Assert.Equal(1500, o.Received);
        Assert.Equal(0, o.Corrupted);
        Assert.Equal(0, o.Dropped);
        Assert.True(o.MaxFragments >= 3, "jumbo datagrams should span several pages");
        Assert.True(o.TrueSize >= o.Bytes);
        Assert.True(o.Stats.RecycleRing > 0, "frees on the consumer thread go through the ring");
        Assert.True(o.Released);
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void When_the_allocator_runs_dry_the_receive_path_drops_datagrams_and_still_leaks_nothing()
    {
        // 64 KiB in all (16 pages) while the consumer holds 32 packets at a time: some datagrams must be dropped.
        using PageAllocator allocator = Leaks.NewAllocator(maxBytes: 64 * 1024);
        Outcome o = RunReceivePath(allocator, datagrams: 600, maxSize: 9000, slowConsumer: true);
        Assert.Equal(600, o.Received + o.Dropped);
        Assert.Equal(0, o.Corrupted);
        Assert.True(o.Dropped > 0, "the tiny allocator should have run dry at least once");
        Assert.True(o.Released);
        Leaks.AssertNone(allocator);
    }

    private sealed record Outcome(int Received, int Dropped, int Corrupted, long Bytes, long TrueSize, int MaxFragments, PagePoolStats Stats, bool Released);

    private static Outcome RunReceivePath(PageAllocator allocator, int datagrams, int maxSize, bool slowConsumer = false)
    {
        using var receiver = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        receiver.ReceiveBufferSize = 4 << 20;
        receiver.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        var target = (IPEndPoint)receiver.LocalEndPoint!;
        using var credits = new SemaphoreSlim(64);
        using var queue = new BlockingCollection<Packet>(boundedCapacity: 256);
        int corrupted = 0;
        long bytes = 0;
        long trueSize = 0;
        var consumer = new Thread(() =>
        {
            // A slow consumer holds 32 packets before freeing them: the receiver then has to live without them.
            var held = new List<Packet>();
            foreach (Packet p in queue.GetConsumingEnumerable())
            {
                if (!Check(p))
                {
                    Interlocked.Increment(ref corrupted);
                }

                bytes += p.Length;
                trueSize += p.TrueSize;
                held.Add(p);
                if (!slowConsumer || held.Count == 32)
                {
                    FreeAll(held);
                }
            }

            FreeAll(held);
        });
        consumer.Start();

        var sender = new Thread(() =>
        {
            using var s = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
            s.Connect(target);
            var rng = new Random(99);
            byte[] d = new byte[maxSize];
            for (int seq = 0; seq < datagrams; seq++)
            {
                int size = rng.Next(10) < 7 ? rng.Next(8, 1500) : rng.Next(1500, maxSize + 1);
                BinaryPrimitives.WriteInt32LittleEndian(d, seq);
                BinaryPrimitives.WriteInt32LittleEndian(d.AsSpan(4), size);
                for (int i = 8; i < size; i++)
                {
                    d[i] = (byte)(seq + i);
                }

                if (!credits.Wait(TimeSpan.FromSeconds(20)))
                {
                    return;
                }

                s.Send(d.AsSpan(0, size));
            }
        });
        sender.Start();

        var pool = new PagePool(new PagePoolOptions { Allocator = allocator, PoolSize = 256 });
        var buffers = new List<PagePoolBuffer>();
        var segments = new List<ArraySegment<byte>>();
        byte[] scratch = new byte[65536];
        int received = 0;
        int dropped = 0;
        int maxFragments = 0;
        var deadline = Stopwatch.StartNew();
        while (received + dropped < datagrams && deadline.Elapsed < TimeSpan.FromSeconds(30))
        {
            int available = receiver.Available;
            if (available == 0)
            {
                receiver.Poll(TimeSpan.FromMilliseconds(20), SelectMode.SelectRead);
                continue;
            }

            buffers.Clear();
            bool ok = true;
            for (int left = available; left > 0 && ok; left -= pool.PageSize)
            {
                ok = pool.TryAlloc(Math.Min(left, pool.PageSize), out PagePoolBuffer b);
                if (ok)
                {
                    Assert.True(b.TrueSize >= b.Length);
                    buffers.Add(b);
                }
            }

            if (!ok)
            {
                buffers.ForEach(b => b.Free());
                receiver.Receive(scratch);
                dropped++;
                credits.Release();
                continue;
            }

            int length;
            if (buffers.Count == 1)
            {
                length = receiver.Receive(buffers[0].Span);
            }
            else
            {
                segments.Clear();
                buffers.ForEach(b => segments.Add(b.ArraySegment));
                length = receiver.Receive(segments);
            }

            if (OperatingSystem.IsLinux())
            {
                Assert.Equal(available, length); // FIONREAD on a UDP socket is the next datagram's size
            }
            maxFragments = Math.Max(maxFragments, buffers.Count);
            queue.Add(new Packet([.. buffers], length, buffers.Sum(b => b.TrueSize)));
            received++;
            credits.Release();
        }

        queue.CompleteAdding();
        sender.Join();
        consumer.Join();
        PagePoolStats stats = pool.GetStats();
        pool.Dispose();
        return new Outcome(received, dropped, corrupted, bytes, trueSize, maxFragments, stats, pool.IsReleased);
    }

    private static void FreeAll(List<Packet> packets)
    {
        foreach (Packet p in packets)
        {
            foreach (PagePoolBuffer f in p.Fragments)
            {
                f.Free();
            }
        }

        packets.Clear();
    }

    private static bool Check(Packet p)
    {
        byte[] all = new byte[p.Length];
        int at = 0;
        foreach (PagePoolBuffer f in p.Fragments)
        {
            int n = Math.Min(f.Length, p.Length - at);
            f.Span[..n].CopyTo(all.AsSpan(at));
            at += n;
        }

        int seq = BinaryPrimitives.ReadInt32LittleEndian(all);
        if (BinaryPrimitives.ReadInt32LittleEndian(all.AsSpan(4)) != p.Length)
        {
            return false;
        }

        for (int i = 8; i < all.Length; i++)
        {
            if (all[i] != (byte)(seq + i))
            {
                return false;
            }
        }

        return true;
    }
}
