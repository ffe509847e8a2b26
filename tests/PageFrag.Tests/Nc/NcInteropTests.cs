using PageFrag.Pages;

namespace PageFrag.Tests.Nc;

/// <summary>
/// Byte-exact transfers between <c>pagefrag nc</c> (in-process) and the real OpenBSD <c>nc</c> and <c>socat</c>
/// (processes), each way, as client and as listener, TCP and UDP, IPv4 and IPv6, checked by SHA-256.
/// </summary>
/// <remarks>
/// UDP sizes stay under the kernel's default socket receive buffer (208 KiB), so a receiver that falls behind
/// loses nothing and an exact check is fair. UDP receivers never end by themselves: the test stops them once
/// every byte arrived.
/// </remarks>
[Collection("nc")]
public class NcInteropTests
{
    private const long MaxTcp = 8 << 20;
    private const long MaxUdp = 100_000;

    /// <summary>Who plays which part.</summary>
    public enum Role
    {
        /// <summary>pagefrag connects and sends; the tool listens and receives.</summary>
        PagefragClientSends,

        /// <summary>The tool listens and sends; pagefrag connects and receives.</summary>
        PagefragClientReceives,

        /// <summary>pagefrag listens and sends; the tool connects and receives.</summary>
        PagefragListenerSends,

        /// <summary>The tool connects and sends; pagefrag listens and receives.</summary>
        PagefragListenerReceives,
    }

    [Theory]
    [InlineData("nc", Role.PagefragClientSends, 11)]
    [InlineData("nc", Role.PagefragClientReceives, 12)]
    [InlineData("nc", Role.PagefragListenerSends, 13)]
    [InlineData("nc", Role.PagefragListenerReceives, 14)]
    [InlineData("socat", Role.PagefragClientSends, 15)]
    [InlineData("socat", Role.PagefragClientReceives, 16)]
    [InlineData("socat", Role.PagefragListenerSends, 17)]
    [InlineData("socat", Role.PagefragListenerReceives, 18)]
    public void Tcp_over_IPv4_moves_a_random_size_byte_exact(string tool, Role role, int seed) =>
        RunTcp(tool, role, v6: false, NcKit.RandomSize(seed, MaxTcp), (ulong)seed);

    [IPv6Theory]
    [InlineData("nc", Role.PagefragClientSends, 21)]
    [InlineData("nc", Role.PagefragClientReceives, 22)]
    [InlineData("nc", Role.PagefragListenerSends, 23)]
    [InlineData("nc", Role.PagefragListenerReceives, 24)]
    [InlineData("socat", Role.PagefragClientSends, 25)]
    [InlineData("socat", Role.PagefragClientReceives, 26)]
    [InlineData("socat", Role.PagefragListenerSends, 27)]
    [InlineData("socat", Role.PagefragListenerReceives, 28)]
    public void Tcp_over_IPv6_moves_a_random_size_byte_exact(string tool, Role role, int seed) =>
        RunTcp(tool, role, v6: true, NcKit.RandomSize(seed, MaxTcp), (ulong)seed);

    [Theory]
    [InlineData("nc", Role.PagefragClientSends, 0)]
    [InlineData("nc", Role.PagefragClientSends, 1)]
    [InlineData("nc", Role.PagefragListenerReceives, 0)]
    [InlineData("nc", Role.PagefragListenerReceives, 1)]
    [InlineData("nc", Role.PagefragListenerSends, 1)]
    [InlineData("nc", Role.PagefragClientReceives, 1)]
    [InlineData("socat", Role.PagefragClientSends, 0)]
    [InlineData("socat", Role.PagefragClientSends, 1)]
    [InlineData("socat", Role.PagefragListenerReceives, 0)]
    [InlineData("socat", Role.PagefragListenerReceives, 1)]
    public void Tcp_moves_empty_input_and_one_byte_exactly(string tool, Role role, long size) =>
        RunTcp(tool, role, v6: false, size, 7);

    [Theory]
    [InlineData("nc", Role.PagefragClientSends, 31)]
    [InlineData("nc", Role.PagefragListenerReceives, 32)]
    [InlineData("socat", Role.PagefragClientSends, 33)]
    [InlineData("socat", Role.PagefragListenerReceives, 34)]
    public void Udp_over_IPv4_moves_a_random_size_byte_exact(string tool, Role role, int seed) =>
        RunUdp(tool, role, v6: false, NcKit.RandomSize(seed, MaxUdp), (ulong)seed);

    [IPv6Theory]
    [InlineData("nc", Role.PagefragClientSends, 41)]
    [InlineData("nc", Role.PagefragListenerReceives, 42)]
    [InlineData("socat", Role.PagefragClientSends, 43)]
    [InlineData("socat", Role.PagefragListenerReceives, 44)]
    public void Udp_over_IPv6_moves_a_random_size_byte_exact(string tool, Role role, int seed) =>
        RunUdp(tool, role, v6: true, NcKit.RandomSize(seed, MaxUdp), (ulong)seed);

    [Theory]
    [InlineData("nc", Role.PagefragClientSends, 0)]
    [InlineData("nc", Role.PagefragClientSends, 1)]
    [InlineData("socat", Role.PagefragListenerReceives, 0)]
    [InlineData("socat", Role.PagefragListenerReceives, 1)]
    public void Udp_moves_empty_input_and_one_byte_exactly(string tool, Role role, long size) =>
        RunUdp(tool, role, v6: false, size, 9);

    [Fact]
    public void Two_hundred_fifty_six_MiB_from_nc_arrive_byte_exact_through_the_page_pool() =>
        RunTcp("nc", Role.PagefragListenerReceives, v6: false, 256L << 20, 256);

    [Fact]
    public void Two_hundred_fifty_six_MiB_reach_nc_byte_exact_through_the_fragment_cache() =>
        RunTcp("nc", Role.PagefragClientSends, v6: false, 256L << 20, 257);

    // ------------------------------------------------------------------ TCP

    private static void RunTcp(string tool, Role role, bool v6, long size, ulong seed)
    {
        using PageAllocator allocator = NcKit.NewAllocator();
        string host = NcEnv.Loopback(v6);
        string socatHost = v6 ? "[::1]" : "127.0.0.1";
        string family = v6 ? "6" : "";
        bool pagefragSends = role is Role.PagefragClientSends or Role.PagefragListenerSends;
        using var pfIn = new PatternStream(pagefragSends ? size : 0, seed);
        using var pfOut = new HashingStream();
        NcRun pf;
        PeerProcess peer;
        long toolInput = pagefragSends ? 0 : size;
        if (role is Role.PagefragListenerSends or Role.PagefragListenerReceives)
        {
            pf = NcRun.Start(NcKit.Listener(allocator, v6: v6), pfIn, pfOut);
            int port = pf.WaitListening().Port;
            string[] args = (tool, pagefragSends) switch
            {
                // The tool's stdin is empty; without -N it keeps its side open until pagefrag's -N end arrives.
                ("nc", true) => [$"-{(v6 ? 6 : 4)}", host, $"{port}"],
                ("nc", false) => [$"-{(v6 ? 6 : 4)}", "-N", host, $"{port}"],
                ("socat", true) => ["-u", $"TCP{family}:{socatHost}:{port}", "STDOUT"],
                _ => ["-u", "STDIN", $"TCP{family}:{socatHost}:{port}"],
            };
            peer = PeerProcess.Start(tool, args, toolInput, seed);
        }
        else
        {
            int port = NcEnv.FreePort(udp: false, v6);
            string[] args = (tool, pagefragSends) switch
            {
                ("nc", true) => [$"-{(v6 ? 6 : 4)}", "-l", host, $"{port}"],
                ("nc", false) => [$"-{(v6 ? 6 : 4)}", "-N", "-l", host, $"{port}"],
                ("socat", true) => ["-u", $"TCP{family}-LISTEN:{port},bind={socatHost}", "STDOUT"],
                _ => ["-u", "STDIN", $"TCP{family}-LISTEN:{port},bind={socatHost}"],
            };
            peer = PeerProcess.Start(tool, args, toolInput, seed);
            NcEnv.WaitBound(port, udp: false, v6, peer.Process);

            // Receiving from a listener, pagefrag keeps its side open (no -N): nc -l would stop at its end.
            pf = NcRun.Start(NcKit.Client(allocator, port, v6: v6) with { ShutdownOnEof = pagefragSends }, pfIn, pfOut);
        }

        using (peer)
        {
            int pfExit = pf.WaitExit();
            int peerExit = peer.WaitExit();
            Assert.True(pfExit == 0, $"pagefrag nc exited {pfExit}: {pf.Error}");
            Assert.True(peerExit == 0, $"{tool} exited {peerExit}: {peer.StandardError}");
            HashingStream received = pagefragSends ? peer.Output : pfOut;
            Assert.Equal(size, received.Count);
            Assert.Equal(PatternStream.HashOf(size, seed), received.Hash());
            Assert.Equal(pagefragSends ? size : 0, pf.Stats.BytesSent);
            Assert.Equal(pagefragSends ? 0 : size, pf.Stats.BytesReceived);
            NcKit.AssertClean(allocator, pf.Error);
        }
    }

    // ------------------------------------------------------------------ UDP

    private static void RunUdp(string tool, Role role, bool v6, long size, ulong seed)
    {
        using PageAllocator allocator = NcKit.NewAllocator();
        string host = NcEnv.Loopback(v6);
        string socatHost = v6 ? "[::1]" : "127.0.0.1";
        string family = v6 ? "6" : "";
        bool pagefragSends = role == Role.PagefragClientSends;
        using var pfIn = new PatternStream(pagefragSends ? size : 0, seed);
        using var pfOut = new HashingStream();
        NcRun pf;
        PeerProcess peer;
        if (pagefragSends)
        {
            int port = NcEnv.FreePort(udp: true, v6);
            string[] args = tool == "nc"
                ? ["-u", $"-{(v6 ? 6 : 4)}", "-l", host, $"{port}"]
                : ["-u", "-b", "65536", $"UDP{family}-RECV:{port},bind={socatHost}", "STDOUT"]; // socat reads 8 KiB by default: a bigger datagram would be cut
            peer = PeerProcess.Start(tool, args);
            NcEnv.WaitBound(port, udp: true, v6, peer.Process);
            pf = NcRun.Start(NcKit.Client(allocator, port, udp: true, v6: v6), pfIn, pfOut);
        }
        else
        {
            pf = NcRun.Start(NcKit.Listener(allocator, udp: true, v6: v6), pfIn, pfOut);
            int port = pf.WaitListening().Port;
            string[] args = tool == "nc"
                ? ["-u", $"-{(v6 ? 6 : 4)}", host, $"{port}"]
                : ["-u", "STDIN", $"UDP{family}-SENDTO:{socatHost}:{port}"];
            peer = PeerProcess.Start(tool, args, size, seed);
        }

        using (peer)
        {
            HashingStream received = pagefragSends ? peer.Output : pfOut;
            if (size == 0)
            {
                // Nothing to wait for: give a stray datagram time to show up.
                Thread.Sleep(300);
            }
            else
            {
                Assert.True(received.WaitFor(size, TimeSpan.FromSeconds(20)), $"only {received.Count} of {size} bytes arrived; pagefrag: {pf.Error}");
            }

            // A UDP receiver has no end of stream: stop both sides.
            pf.Cancel();
            int pfExit = pf.WaitExit();
            peer.Kill();
            Assert.True(pfExit == 0, $"pagefrag nc exited {pfExit}: {pf.Error}");
            Assert.Equal(size, received.Count);
            Assert.Equal(PatternStream.HashOf(size, seed), received.Hash());
            NcKit.AssertClean(allocator, pf.Error);
        }
    }
}
