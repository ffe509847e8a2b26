using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using PageFrag.Pages;
using PageFrag.Pool;

namespace PageFrag.Examples.ReceivePath;

/// <summary>What to send through the demo.</summary>
public sealed class ReceivePathOptions
{
    /// <summary>Datagrams the sender sends. Default 50,000.</summary>
    public int Datagrams { get; init; } = 50_000;

    /// <summary>Largest datagram, at least 16 bytes and at most 65,507 (UDP over IPv4). Default 9000 (a jumbo frame).</summary>
    public int MaxDatagramSize { get; init; } = 9000;

    /// <summary>Datagrams the sender may have in flight before it waits for the receiver (keeps loopback from
    /// dropping). Default 256.</summary>
    public int Window { get; init; } = 256;

    /// <summary>Seed of the datagram sizes. Default 42.</summary>
    public int Seed { get; init; } = 42;
}

/// <summary>What the demo saw.</summary>
public sealed record ReceivePathResult(
    int Sent,
    int Received,
    int Corrupted,
    int DroppedNoMemory,
    long PayloadBytes,
    long TrueSizeBytes,
    int MaxFragmentsPerPacket,
    PagePoolStats Stats,
    bool PoolReleased,
    long PagesStillInUse,
    TimeSpan Elapsed)
{
    /// <summary>Every datagram arrived, intact, and every page went back to the allocator.</summary>
    public bool IsClean => Received == Sent && Corrupted == 0 && DroppedNoMemory == 0 && PoolReleased && PagesStillInUse == 0;

    /// <summary>A human-readable summary.</summary>
    public string Report() =>
        $"""
        datagrams: sent {Sent}, received {Received}, corrupted {Corrupted}, dropped (no memory) {DroppedNoMemory}
        payload {PayloadBytes:N0} B, truesize {TrueSizeBytes:N0} B ({(PayloadBytes == 0 ? 0 : (double)TrueSizeBytes / PayloadBytes):F2}x), up to {MaxFragmentsPerPacket} fragments per packet
        {Elapsed.TotalMilliseconds:F0} ms, {(Elapsed.TotalSeconds == 0 ? 0 : Received / Elapsed.TotalSeconds):N0} datagrams/s
        pool: {Stats}
        pool released: {PoolReleased}, pages still in use: {PagesStillInUse}
        """;
}

/// <summary>
/// A receive loop in the shape of a NIC driver's NAPI poll: the receiving thread owns a <see cref="PagePool"/>,
/// sizes each buffer with <see cref="PagePool.TryAlloc"/> (a fragment for small datagrams, whole pages plus a
/// tail for large ones), receives the datagram into those buffers, and hands the packet (its fragments and its
/// truesize) to a consumer thread, which checks and frees it. Freed buffers come back through the pool's
/// recycle ring, since the consumer is not the owner.
/// </summary>
public static class ReceivePathDemo
{
    private const int HeaderSize = 8; // sequence number + length, then a pattern derived from both

    /// <summary>Runs the demo and returns what it saw. Blocks until done.</summary>
    public static ReceivePathResult Run(ReceivePathOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (options.MaxDatagramSize < 16 || options.MaxDatagramSize > 65_507)
        {
            throw new ArgumentOutOfRangeException(nameof(options), options.MaxDatagramSize, "MaxDatagramSize must be between 16 and 65507.");
        }

        using var allocator = new PageAllocator(new PageAllocatorOptions { ArenaSize = 1 << 20 });
        using var receiver = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        receiver.ReceiveBufferSize = 4 << 20;
        receiver.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        var target = (IPEndPoint)receiver.LocalEndPoint!;

        using var credits = new SemaphoreSlim(options.Window);
        using var packets = new BlockingCollection<Packet>(boundedCapacity: 1024);
        var consumerState = new ConsumerState();
        var consumer = new Thread(() => Consume(packets, consumerState)) { Name = "consumer", IsBackground = true };
        consumer.Start();

        var sender = new Thread(() => Send(target, options, credits)) { Name = "sender", IsBackground = true };
        var stopwatch = Stopwatch.StartNew();
        sender.Start();

        // The pool belongs to this thread: it allocates here, and frees on the consumer go through the ring.
        var pool = new PagePool(new PagePoolOptions { Allocator = allocator, PoolSize = 1024 });
        var segments = new List<ArraySegment<byte>>();
        var fragments = new List<PagePoolBuffer>();
        byte[] scratch = new byte[65_536];
        int received = 0;
        int dropped = 0;
        int maxFragments = 0;
        long idleSince = Stopwatch.GetTimestamp();
        while (received + dropped < options.Datagrams)
        {
            // On Linux FIONREAD on a UDP socket is the size of the next datagram; elsewhere it is at least that.
            // The sender never sends empty datagrams, so 0 means "nothing queued": wait for one.
            int available = receiver.Available;
            if (available == 0)
            {
                if (!receiver.Poll(TimeSpan.FromMilliseconds(50), SelectMode.SelectRead) &&
                    !sender.IsAlive && Stopwatch.GetElapsedTime(idleSince) > TimeSpan.FromSeconds(2))
                {
                    break; // the rest was lost on the way
                }

                continue;
            }

            idleSince = Stopwatch.GetTimestamp();
            int size = Math.Min(available, options.MaxDatagramSize);
            if (!TryAllocPacketBuffers(pool, size, fragments))
            {
                // No memory: drop the datagram, as a NIC with an empty ring does.
                receiver.Receive(scratch);
                dropped++;
                credits.Release();
                continue;
            }

            int length;
            if (fragments.Count == 1)
            {
                length = receiver.Receive(fragments[0].Span);
            }
            else
            {
                segments.Clear();
                foreach (PagePoolBuffer f in fragments)
                {
                    segments.Add(f.ArraySegment);
                }

                length = receiver.Receive(segments);
            }

            maxFragments = Math.Max(maxFragments, fragments.Count);
            packets.Add(Packet.Take(fragments, length));
            received++;
            credits.Release();
        }

        packets.CompleteAdding();
        sender.Join();
        consumer.Join();
        TimeSpan elapsed = stopwatch.Elapsed;

        PagePoolStats stats = pool.GetStats();
        pool.Dispose();
        return new ReceivePathResult(options.Datagrams, received, consumerState.Corrupted, dropped, consumerState.Bytes,
            consumerState.TrueSize, maxFragments, stats, pool.IsReleased, allocator.PagesInUse, elapsed);
    }

    /// <summary>
    /// Buffers for a datagram of <paramref name="size"/> bytes: one <see cref="PagePool.TryAlloc"/> when it fits a
    /// page (a fragment, or a whole page above half a page), else whole pages and a tail.
    /// </summary>
    private static bool TryAllocPacketBuffers(PagePool pool, int size, List<PagePoolBuffer> fragments)
    {
        fragments.Clear();
        for (int left = size; left > 0; left -= pool.PageSize)
        {
            if (!pool.TryAlloc(Math.Min(left, pool.PageSize), out PagePoolBuffer b))
            {
                foreach (PagePoolBuffer f in fragments)
                {
                    f.Free();
                }

                fragments.Clear();
                return false;
            }

            fragments.Add(b);
        }

        return true;
    }

    private static void Send(IPEndPoint target, ReceivePathOptions options, SemaphoreSlim credits)
    {
        using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        socket.Connect(target);
        var rng = new Random(options.Seed);
        byte[] datagram = new byte[options.MaxDatagramSize];
        for (int seq = 0; seq < options.Datagrams; seq++)
        {
            // Mostly small datagrams (acks, requests), some MTU-sized, a few jumbo ones.
            int roll = rng.Next(100);
            int size = roll < 60 ? rng.Next(HeaderSize, 300) : roll < 90 ? rng.Next(300, 1500) : rng.Next(1500, options.MaxDatagramSize + 1);
            size = Math.Clamp(size, HeaderSize, options.MaxDatagramSize);
            Packet.Fill(datagram.AsSpan(0, size), seq);
            credits.Wait();
            socket.Send(datagram.AsSpan(0, size));
        }
    }

    private static void Consume(BlockingCollection<Packet> packets, ConsumerState state)
    {
        foreach (Packet p in packets.GetConsumingEnumerable())
        {
            if (!p.Check())
            {
                state.Corrupted++;
            }

            state.Bytes += p.Length;
            state.TrueSize += p.TrueSize;
            p.Free();
        }
    }

    private sealed class ConsumerState
    {
        public int Corrupted;
        public long Bytes;
        public long TrueSize;
    }
}
