using System.Net;
using System.Net.Sockets;
using PageFrag.Pages;

namespace PageFrag.Cli.Nc;

/// <summary>Which address family <c>-4</c> / <c>-6</c> asked for.</summary>
internal enum NcFamily
{
    /// <summary>Neither flag: whatever the host name resolves to (listening without a host: IPv4 and IPv6).</summary>
    Any,
    V4,
    V6,
}

/// <summary>
/// What <c>pagefrag nc</c> was asked to do, with OpenBSD netcat's meaning for each flag, plus the buffer sizes of
/// the two paths.
/// </summary>
/// <remarks>
/// Defaults: client mode, TCP, any family, no shutdown on EOF, quiet, a receive budget of
/// <see cref="DefaultReceiveBudget"/> bytes of truesize, <see cref="PageAllocator.Shared"/>.
/// </remarks>
internal sealed record NcOptions
{
    /// <summary>MAX_SKB_FRAGS: the most fragments one skb, and so one gather send, carries.</summary>
    public const int MaxSkbFrags = 17;

    /// <summary>The least space a send prepares: what tcp_sendmsg asks of sk_page_frag before copying.</summary>
    public const int MinPrepare = 32;

    /// <summary>Bytes of one UDP datagram at most: OpenBSD netcat's buffer size, so each read is one datagram.</summary>
    public const int UdpMaxPayload = 16384;

    /// <summary>The receive budget when <c>-I</c> is not given: truesize the reader may hold before it stops.</summary>
    public const int DefaultReceiveBudget = 2 << 20;

    /// <summary>The smallest budget <c>-I</c> accepts: one page, so that the reader can always make progress.</summary>
    public const int MinReceiveBudget = 4096;

    /// <summary>The largest budget <c>-I</c> accepts (1 GiB).</summary>
    public const int MaxReceiveBudget = 1 << 30;

    public bool Listen { get; init; }

    public bool KeepListening { get; init; }

    public bool Udp { get; init; }

    public NcFamily Family { get; init; }

    /// <summary>-N: shut down the send side of the socket once standard input ends.</summary>
    public bool ShutdownOnEof { get; init; }

    public bool Verbose { get; init; }

    /// <summary>The host to connect to, or the address to listen on (null: every local address).</summary>
    public string? Host { get; init; }

    /// <summary>The port; 0 only when listening (the kernel picks one, reported with -v).</summary>
    public int Port { get; init; }

    /// <summary>-I: truesize the receive path may hold before it stops reading (the SO_RCVBUF idea).</summary>
    public int ReceiveBudget { get; init; } = DefaultReceiveBudget;

    /// <summary>Where the send cache and the receive pool take pages. Null: <see cref="PageAllocator.Shared"/>.</summary>
    public PageAllocator? Allocator { get; init; }

    /// <summary>Called with the bound address once a listening socket is ready (tests listen on port 0).</summary>
    public Action<IPEndPoint>? Listening { get; init; }

    /// <summary>Use the managed socket and stream calls even where the Linux gather calls are available.</summary>
    public bool ForceManagedIO { get; init; }

    public SocketType SocketType => Udp ? SocketType.Dgram : SocketType.Stream;

    public ProtocolType Protocol => Udp ? ProtocolType.Udp : ProtocolType.Tcp;

    public string ProtocolName => Udp ? "udp" : "tcp";

    /// <summary>Parses the positional arguments <c>[host] port</c> and the flags; returns a usage problem or null.</summary>
    public static string? TryCreate(
        IReadOnlyList<string> positional, bool listen, bool keep, bool udp, bool v4, bool v6, bool shutdownOnEof, bool verbose,
        int? receiveBudget, out NcOptions? options)
    {
        options = null;
        if (v4 && v6)
        {
            return "-4 and -6 cannot be used together: pick one address family.";
        }

        if (keep && !listen)
        {
            return "-k only makes sense with -l (keep listening after a client leaves).";
        }

        if (receiveBudget is int budget && (budget < MinReceiveBudget || budget > MaxReceiveBudget))
        {
            return $"-I {budget}: the receive budget must be between {MinReceiveBudget} and {MaxReceiveBudget} bytes.";
        }

        // A negative number is a bad port (as OpenBSD nc says "port number invalid"), not an option.
        if (positional.FirstOrDefault(a => a.Length > 1 && a[0] == '-' && !long.TryParse(a, System.Globalization.NumberStyles.AllowLeadingSign, System.Globalization.CultureInfo.InvariantCulture, out _)) is string unknown)
        {
            return $"unknown option '{unknown}'.";
        }

        string? host;
        string portText;
        switch (positional.Count)
        {
            case 0:
                return listen ? "missing port: usage is 'pagefrag nc -l [host] port'." : "missing host and port: usage is 'pagefrag nc host port'.";
            case 1:
                if (!listen)
                {
                    return $"missing port: usage is 'pagefrag nc host port' (got only '{positional[0]}').";
                }

                host = null;
                portText = positional[0];
                break;
            case 2:
                host = positional[0];
                portText = positional[1];
                break;
            default:
                return $"too many arguments: expected [host] port, got '{string.Join(' ', positional)}'.";
        }

        if (!int.TryParse(portText, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int port) ||
            port > IPEndPoint.MaxPort || (port == 0 && !listen))
        {
            return listen
                ? $"bad port '{portText}': a port is a number from 0 (any free port) to 65535."
                : $"bad port '{portText}': a port is a number from 1 to 65535.";
        }

        if (host is not null && host.Length == 0)
        {
            return "the host is empty.";
        }

        options = new NcOptions
        {
            Listen = listen,
            KeepListening = keep,
            Udp = udp,
            Family = v4 ? NcFamily.V4 : v6 ? NcFamily.V6 : NcFamily.Any,
            ShutdownOnEof = shutdownOnEof,
            Verbose = verbose,
            Host = host,
            Port = port,
            ReceiveBudget = receiveBudget ?? DefaultReceiveBudget,
        };
        return null;
    }
}
