using System.Net.Sockets;
using PageFrag.Cli.Nc;
using PageFrag.Pages;

namespace PageFrag.Tests.Nc;

/// <summary>
/// <c>pagefrag nc</c> to <c>pagefrag nc</c>, in-process, both directions on one connection: what each side read
/// from its standard input arrives intact on the other's standard output, and no page leaks.
/// </summary>
[Collection("nc")]
public class NcTransferTests
{
    [Theory]
    [InlineData(0L, 0L)]
    [InlineData(1L, 0L)]
    [InlineData(0L, 1L)]
    [InlineData(1L, 1L)]
    [InlineData(-1L, -2L)]
    [InlineData(-3L, 0L)]
    [InlineData(0L, -4L)]
    public void Tcp_over_IPv4_carries_both_directions_at_once(long clientBytes, long listenerBytes) =>
        RunTcp(Size(clientBytes), Size(listenerBytes), v6: false, managed: false);

    [IPv6Theory]
    [InlineData(0L, 0L)]
    [InlineData(1L, 1L)]
    [InlineData(-5L, -6L)]
    public void Tcp_over_IPv6_carries_both_directions_at_once(long clientBytes, long listenerBytes) =>
        RunTcp(Size(clientBytes), Size(listenerBytes), v6: true, managed: false);

    [Theory]
    [InlineData(-7L, -8L)]
    [InlineData(1L, 0L)]
    public void The_managed_socket_and_stream_fallback_carries_the_same_bytes(long clientBytes, long listenerBytes) =>
        RunTcp(Size(clientBytes), Size(listenerBytes), v6: false, managed: true);

    [Theory]
    [InlineData(1L, 0L)]
    [InlineData(-9L, -10L)]
    public void Udp_over_IPv4_carries_both_directions(long clientBytes, long listenerBytes) =>
        RunUdp(Size(clientBytes, udp: true), Size(listenerBytes, udp: true), v6: false);

    [IPv6Theory]
    [InlineData(1L, 1L)]
    [InlineData(-11L, -12L)]
    public void Udp_over_IPv6_carries_both_directions(long clientBytes, long listenerBytes) =>
        RunUdp(Size(clientBytes, udp: true), Size(listenerBytes, udp: true), v6: true);

    [Fact]
    public void Contiguous_reads_are_coalesced_and_a_gather_send_carries_at_most_17_fragments()
    {
        // Reads of 1000 bytes: many land in the page of the queued tail fragment and grow it (commit_noref).
        using PageAllocator allocator = NcKit.NewAllocator();
        const long size = 4 << 20;
        using var listenerOut = new HashingStream();
        NcRun listener = NcRun.Start(NcKit.Listener(allocator), Stream.Null, listenerOut);
        int port = listener.WaitListening().Port;
        using var input = new ChunkedStream(new PatternStream(size, 3), 1000);
        NcRun client = NcRun.Start(NcKit.Client(allocator, port), input, Stream.Null);

        Assert.Equal(0, client.WaitExit());
        Assert.Equal(0, listener.WaitExit());
        Assert.Equal(PatternStream.HashOf(size, 3), listenerOut.Hash());
        NcStats s = client.Stats;
        Assert.Equal(size, s.BytesSent);
        Assert.True(s.CoalescedCommits > 0, "no read was coalesced into the previous fragment");
        Assert.Equal(s.Commits, s.FragmentsSent);
        Assert.True(s.Commits + s.CoalescedCommits >= size / 1000);
        Assert.True(s.FragmentsSent <= 17 * s.GatherSends);
        Assert.True(s.SendPagesAllocated > 0);
        NcKit.AssertClean(allocator, client.Error + listener.Error);
    }

    [Fact]
    public void A_listener_with_k_serves_one_client_after_another()
    {
        using PageAllocator allocator = NcKit.NewAllocator();
        using var listenerOut = new HashingStream();
        NcRun listener = NcRun.Start(NcKit.Listener(allocator) with { KeepListening = true }, Stream.Null, listenerOut);
        int port = listener.WaitListening().Port;
        long total = 0;
        using var expected = new MemoryStream();
        for (int i = 0; i < 3; i++)
        {
            long size = 100_000 + i;
            using var input = new PatternStream(size, (ulong)(100 + i));
            NcRun client = NcRun.Start(NcKit.Client(allocator, port), input, Stream.Null);
            Assert.Equal(0, client.WaitExit());
            total += size;
            Assert.True(listenerOut.WaitFor(total, TimeSpan.FromSeconds(20)));
            using var again = new PatternStream(size, (ulong)(100 + i));
            again.CopyTo(expected);
        }

        listener.Cancel();
        Assert.Equal(0, listener.WaitExit());
        Assert.Equal(3, listener.Stats.Connections);
        Assert.Equal(System.Security.Cryptography.SHA256.HashData(expected.ToArray()), listenerOut.Hash());
        NcKit.AssertClean(allocator, listener.Error);
    }

    [Fact]
    public void A_UDP_listener_with_k_receives_from_every_sender_and_sends_nothing()
    {
        using PageAllocator allocator = NcKit.NewAllocator();
        using var output = new HashingStream();
        using var input = new PatternStream(10_000, 4); // never read: an unconnected listener has nowhere to send it
        NcRun listener = NcRun.Start(NcKit.Listener(allocator, udp: true) with { KeepListening = true }, input, output);
        var target = listener.WaitListening();
        using var first = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        using var second = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        first.SendTo("one "u8, target);
        Assert.True(output.WaitFor(4, TimeSpan.FromSeconds(10)));
        second.SendTo("two"u8, target);
        Assert.True(output.WaitFor(7, TimeSpan.FromSeconds(10)));

        listener.Cancel();
        Assert.Equal(0, listener.WaitExit());
        Assert.Equal(System.Security.Cryptography.SHA256.HashData("one two"u8), output.Hash());
        Assert.Equal(0, listener.Stats.BytesSent);
        Assert.Equal(0, input.Position);
        NcKit.AssertClean(allocator, listener.Error);
    }

    [Fact]
    public void A_listener_without_host_or_family_takes_IPv4_and_IPv6_clients()
    {
        using PageAllocator allocator = NcKit.NewAllocator();
        using var output = new HashingStream();
        NcRun listener = NcRun.Start(NcKit.Listener(allocator) with { Host = null, Family = NcFamily.Any, KeepListening = true }, Stream.Null, output);
        int port = listener.WaitListening().Port;
        long expected = 0;
        foreach (bool v6 in NcEnv.HasIPv6 ? new[] { false, true } : [false])
        {
            using var input = new MemoryStream(new byte[1000]);
            NcRun client = NcRun.Start(NcKit.Client(allocator, port, v6: v6), input, Stream.Null);
            Assert.True(client.WaitExit() == 0, client.Error);
            expected += 1000;
            Assert.True(output.WaitFor(expected, TimeSpan.FromSeconds(10)));
        }

        listener.Cancel();
        Assert.Equal(0, listener.WaitExit());
        Assert.Equal(NcEnv.HasIPv6 ? 2 : 1, listener.Stats.Connections);
        NcKit.AssertClean(allocator, listener.Error);
    }

    /// <summary>Positive: that many bytes; negative: a random size from that seed (TCP up to 8 MiB, UDP up to 100 kB).</summary>
    private static long Size(long spec, bool udp = false) => spec >= 0 ? spec : NcKit.RandomSize((int)-spec, udp ? 100_000 : 8 << 20);

    private static void RunTcp(long clientBytes, long listenerBytes, bool v6, bool managed)
    {
        using PageAllocator allocator = NcKit.NewAllocator();
        using var clientIn = new PatternStream(clientBytes, 1);
        using var listenerIn = new PatternStream(listenerBytes, 2);
        using var clientOut = new HashingStream();
        using var listenerOut = new HashingStream();

        // The listener ends its side (-N) when its input ends; the client keeps its side open until then, so
        // that the listener does not stop at the client's end before it sent everything (OpenBSD's rule).
        NcRun listener = NcRun.Start(NcKit.Listener(allocator, v6: v6) with { ForceManagedIO = managed }, listenerIn, listenerOut);
        int port = listener.WaitListening().Port;
        NcRun client = NcRun.Start(NcKit.Client(allocator, port, v6: v6) with { ShutdownOnEof = false, ForceManagedIO = managed }, clientIn, clientOut);

        Assert.True(client.WaitExit() == 0, client.Error);
        Assert.True(listener.WaitExit() == 0, listener.Error);
        Assert.Equal(clientBytes, listenerOut.Count);
        Assert.Equal(listenerBytes, clientOut.Count);
        Assert.Equal(PatternStream.HashOf(clientBytes, 1), listenerOut.Hash());
        Assert.Equal(PatternStream.HashOf(listenerBytes, 2), clientOut.Hash());
        Assert.Equal(!managed, client.Stats.NativeSocket);
        NcKit.AssertClean(allocator, client.Error + listener.Error);
    }

    private static void RunUdp(long clientBytes, long listenerBytes, bool v6)
    {
        // The listener learns its peer from the first datagram: the client always sends something.
        Assert.True(clientBytes > 0);
        using PageAllocator allocator = NcKit.NewAllocator();
        using var clientIn = new PatternStream(clientBytes, 1);
        using var listenerIn = new PatternStream(listenerBytes, 2);
        using var clientOut = new HashingStream();
        using var listenerOut = new HashingStream();
        NcRun listener = NcRun.Start(NcKit.Listener(allocator, udp: true, v6: v6), listenerIn, listenerOut);
        int port = listener.WaitListening().Port;
        NcRun client = NcRun.Start(NcKit.Client(allocator, port, udp: true, v6: v6), clientIn, clientOut);

        Assert.True(listenerOut.WaitFor(clientBytes, TimeSpan.FromSeconds(20)), $"listener got {listenerOut.Count} of {clientBytes}: {listener.Error}");
        Assert.True(clientOut.WaitFor(listenerBytes, TimeSpan.FromSeconds(20)), $"client got {clientOut.Count} of {listenerBytes}: {client.Error}");
        client.Cancel();
        listener.Cancel();
        Assert.Equal(0, client.WaitExit());
        Assert.Equal(0, listener.WaitExit());
        Assert.Equal(PatternStream.HashOf(clientBytes, 1), listenerOut.Hash());
        Assert.Equal(PatternStream.HashOf(listenerBytes, 2), clientOut.Hash());
        NcKit.AssertClean(allocator, client.Error + listener.Error);
    }
}

/// <summary>Hands out another stream's bytes at most <c>chunk</c> at a time, as a slow pipe would.</summary>
internal sealed class ChunkedStream : Stream
{
    private readonly Stream _inner;
    private readonly int _chunk;

    public ChunkedStream(Stream inner, int chunk)
    {
        _inner = inner;
        _chunk = chunk;
    }

    public override bool CanRead => true;

    public override bool CanSeek => false;

    public override bool CanWrite => false;

    public override long Length => throw new NotSupportedException();

    public override long Position
    {
        get => throw new NotSupportedException();
        set => throw new NotSupportedException();
    }

    public override int Read(Span<byte> buffer) => _inner.Read(buffer[..Math.Min(buffer.Length, _chunk)]);

    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

    public override void Flush()
    {
    }

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();

    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            _inner.Dispose();
        }

        base.Dispose(disposing);
    }
}
