using System.Diagnostics;
using System.Net;
using System.Net.Sockets;

namespace PageFrag.Cli.Nc;

/// <summary>
/// One run of <c>pagefrag nc</c>: resolves the address, connects or listens (accepting one connection after
/// another with -k), runs each connection, and reports failures as netcat users expect: one line on standard
/// error and a non-zero exit code, never a stack trace.
/// </summary>
/// <remarks>
/// Threading: <see cref="Run"/> blocks the calling thread, which also writes standard output; <see cref="Cancel"/>
/// may be called from any thread. The send path runs on its own thread (see <see cref="SendPath"/>), each
/// connection's reader on another.
/// </remarks>
internal sealed class NcSession
{
    private readonly NcOptions _options;
    private readonly NcStdin _stdin;
    private readonly NcStdout _stdout;
    private readonly TextWriter _error;
    private readonly NcStats _stats = new();
    private readonly object _lock = new();
    private SendPath? _sender;
    private bool _stdoutClosed;
    private long _firstStart;

    // ---- under _lock ----
    private bool _cancelled;
    private Socket? _pendingSocket;
    private NcConnection? _current;

    public NcSession(NcOptions options, NcStdin stdin, NcStdout stdout, TextWriter error)
    {
        _options = options;
        _stdin = stdin;
        _stdout = stdout;
        _error = error;
    }

    /// <summary>What the run did (complete once <see cref="Run"/> has returned).</summary>
    public NcStats Stats => _stats;

    /// <summary>Runs to the end; returns the exit code.</summary>
    public int Run(CancellationToken cancellationToken = default)
    {
        using CancellationTokenRegistration registration = cancellationToken.Register(Cancel);
        int code;
        try
        {
            code = _options.Listen ? RunListener() : RunClient();
        }
        catch (NcException e)
        {
            Report(e.Message);
            code = e.ExitCode;
        }
        finally
        {
            _sender?.RunOver();
        }

        if (_options.Verbose && _stats.Connections > 0)
        {
            _error.WriteLine(_stats.Report());
        }

        return code;
    }

    /// <summary>Ends the run: stops listening or connecting and ends the current connection.</summary>
    public void Cancel()
    {
        NcConnection? current;
        Socket? pending;
        lock (_lock)
        {
            _cancelled = true;
            current = _current;
            pending = _pendingSocket;
        }

        // The connection first: a UDP listener's socket is also its connection's, and closing it under a running
        // reader would read as a failure.
        current?.Abort();
        pending?.Dispose();
    }

    /// <summary>
    /// Waits for the send thread to end. It ends once the run is over and standard input has ended or a blocked
    /// read returned; false after <paramref name="timeout"/>.
    /// </summary>
    public bool WaitForSender(TimeSpan timeout) => _sender is null || _sender.WaitFinished(timeout);

    // ------------------------------------------------------------------ client

    private int RunClient()
    {
        string host = _options.Host!;
        IPAddress[] addresses = Resolve(host);
        Exception? last = null;
        foreach (IPAddress address in addresses)
        {
            var socket = new Socket(address.AddressFamily, _options.SocketType, _options.Protocol);
            if (address.IsIPv4MappedToIPv6)
            {
                // ::ffff:a.b.c.d reaches an IPv4 peer only through a dual-mode socket (IPV6_V6ONLY off), which
                // is what OpenBSD nc gets from Linux's default net.ipv6.bindv6only=0; .NET's sockets are v6-only.
                socket.DualMode = true;
            }

            if (!Track(socket))
            {
                return ExitCodes.Failure;
            }

            try
            {
                socket.Connect(new IPEndPoint(address, _options.Port));
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException)
            {
                Untrack(socket);
                socket.Dispose();
                if (IsCancelled)
                {
                    return ExitCodes.Failure;
                }

                last = e;
                continue;
            }

            Untrack(socket);
            if (_options.Verbose)
            {
                _error.WriteLine($"Connection to {host} ({address}) {_options.Port} port [{_options.ProtocolName}/*] succeeded!");
            }

            return RunConnection(socket, hasSendSide: true);
        }

        string reason = last is SocketException se ? Describe(se) : last?.Message ?? "no address";
        throw new NcException($"connect to {host} port {_options.Port} ({_options.ProtocolName}) failed: {reason}");
    }

    // ------------------------------------------------------------------ listener

    private int RunListener()
    {
        IPAddress address = ListenAddress(out bool dualMode);
        var listener = new Socket(address.AddressFamily, _options.SocketType, _options.Protocol);
        if (!Track(listener))
        {
            return ExitCodes.Failure;
        }

        try
        {
            if (dualMode)
            {
                listener.DualMode = true;
            }

            try
            {
                listener.Bind(new IPEndPoint(address, _options.Port));
                if (!_options.Udp)
                {
                    listener.Listen(1);
                }
            }
            catch (SocketException e)
            {
                throw new NcException($"cannot listen on {Show(address)} port {_options.Port} ({_options.ProtocolName}): {Describe(e)}");
            }

            var bound = (IPEndPoint)listener.LocalEndPoint!;
            if (_options.Verbose)
            {
                _error.WriteLine($"Listening on {Show(bound.Address)} {bound.Port}");
            }

            _options.Listening?.Invoke(bound);
            return _options.Udp ? RunUdpListener(listener) : RunTcpListener(listener);
        }
        finally
        {
            Untrack(listener);
            listener.Dispose();
        }
    }

    private int RunTcpListener(Socket listener)
    {
        int code = ExitCodes.Success;
        do
        {
            Socket socket;
            try
            {
                socket = listener.Accept();
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException)
            {
                if (IsCancelled)
                {
                    return code;
                }

                throw new NcException($"accept failed: {(e is SocketException se ? Describe(se) : e.Message)}");
            }

            if (_options.Verbose && socket.RemoteEndPoint is IPEndPoint remote)
            {
                _error.WriteLine($"Connection received on {Show(remote.Address)} {remote.Port}");
            }

            int result = RunConnection(socket, hasSendSide: true);
            code = Math.Max(code, result);
        }
        while (_options.KeepListening && !IsCancelled && !_stdoutClosed);

        return code;
    }

    private int RunUdpListener(Socket socket)
    {
        // Wait for the first datagram, as OpenBSD netcat does: without -k, learn who sent it and connect to that
        // peer, so that standard input has somewhere to go; with -k, stay unconnected and receive from anyone.
        while (!IsCancelled)
        {
            try
            {
                if (socket.Poll(250_000, SelectMode.SelectRead))
                {
                    break;
                }
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException)
            {
                if (IsCancelled)
                {
                    return ExitCodes.Success;
                }

                throw new NcException($"receive failed: {(e is SocketException se ? Describe(se) : e.Message)}");
            }
        }

        if (IsCancelled)
        {
            return ExitCodes.Success;
        }

        if (_options.KeepListening)
        {
            return RunConnection(socket, hasSendSide: false);
        }

        EndPoint peer = new IPEndPoint(socket.AddressFamily == AddressFamily.InterNetworkV6 ? IPAddress.IPv6Any : IPAddress.Any, 0);
        try
        {
            socket.ReceiveFrom(new byte[ushort.MaxValue], SocketFlags.Peek, ref peer);
            socket.Connect(peer);
        }
        catch (SocketException e)
        {
            throw new NcException($"receive failed: {Describe(e)}");
        }

        if (_options.Verbose && peer is IPEndPoint remote)
        {
            _error.WriteLine($"Connection received on {Show(remote.Address)} {remote.Port}");
        }

        return RunConnection(socket, hasSendSide: true);
    }

    // ------------------------------------------------------------------ connections

    /// <summary>Runs one connection on this thread; the connection closes <paramref name="socket"/> when it is over.</summary>
    private int RunConnection(Socket socket, bool hasSendSide)
    {
        var connection = new NcConnection(_options, socket, _stats, _stdout, hasSendSide);
        lock (_lock)
        {
            if (_cancelled)
            {
                socket.Dispose();
                return ExitCodes.Failure;
            }

            _current = connection;
        }

        if (_firstStart == 0)
        {
            _firstStart = Stopwatch.GetTimestamp();
        }

        _stats.Connections++;
        connection.Start();
        if (hasSendSide)
        {
            _sender ??= new SendPath(_options, _stdin, _stats);
            _sender.Offer(connection);
        }

        int code = connection.RunWriter();
        _stats.Elapsed = Stopwatch.GetElapsedTime(_firstStart);
        lock (_lock)
        {
            _current = null;
        }

        if (connection.Failure is string failure)
        {
            foreach (string line in failure.Split(Environment.NewLine))
            {
                Report(line);
            }

        }

        _stdoutClosed |= connection.StdoutClosed;

        return code;
    }

    // ------------------------------------------------------------------ addresses

    private IPAddress[] Resolve(string host)
    {
        IPAddress[] all;
        if (IPAddress.TryParse(host, out IPAddress? literal))
        {
            all = [literal];
        }
        else
        {
            try
            {
                all = Dns.GetHostAddresses(host);
            }
            catch (SocketException e)
            {
                throw new NcException($"unknown host '{host}': {Describe(e)}", ExitCodes.Failure);
            }
            catch (ArgumentException e)
            {
                throw new NcException($"bad host '{host}': {e.Message}", ExitCodes.Failure);
            }
        }

        IPAddress[] wanted = _options.Family switch
        {
            NcFamily.V4 => [.. all.Where(a => a.AddressFamily == AddressFamily.InterNetwork)],
            NcFamily.V6 => [.. all.Where(a => a.AddressFamily == AddressFamily.InterNetworkV6)],
            _ => all,
        };
        if (wanted.Length == 0)
        {
            string family = _options.Family == NcFamily.V4 ? "IPv4" : "IPv6";
            throw new NcException(
                literal is not null
                    ? $"'{host}' is not an {family} address, but -{(_options.Family == NcFamily.V4 ? 4 : 6)} was given"
                    : $"host '{host}' has no {family} address",
                literal is not null ? ExitCodes.Usage : ExitCodes.Failure);
        }

        return wanted;
    }

    private IPAddress ListenAddress(out bool dualMode)
    {
        dualMode = false;
        if (_options.Host is string host)
        {
            return Resolve(host)[0];
        }

        switch (_options.Family)
        {
            case NcFamily.V4:
                return IPAddress.Any;
            case NcFamily.V6:
                return IPAddress.IPv6Any;
            default:
                // No host and no family: IPv4 and IPv6 clients alike, with one dual-stack socket where IPv6 exists.
                dualMode = Socket.OSSupportsIPv6;
                return dualMode ? IPAddress.IPv6Any : IPAddress.Any;
        }
    }

    private static string Show(IPAddress address) => address.IsIPv4MappedToIPv6 ? address.MapToIPv4().ToString() : address.ToString();

    /// <summary>The socket error in netcat's words ("Connection refused", "Address already in use").</summary>
    private static string Describe(SocketException e) => e.SocketErrorCode switch
    {
        SocketError.ConnectionRefused => "Connection refused",
        SocketError.AddressAlreadyInUse => "Address already in use",
        SocketError.AddressNotAvailable => "Cannot assign requested address",
        SocketError.AccessDenied => "Permission denied",
        SocketError.HostNotFound => "Name or service not known",
        SocketError.TimedOut => "Connection timed out",
        SocketError.NetworkUnreachable => "Network is unreachable",
        SocketError.HostUnreachable => "No route to host",
        _ => e.Message,
    };

    private void Report(string message) => _error.WriteLine($"pagefrag nc: {message}");

    private bool IsCancelled
    {
        get
        {
            lock (_lock)
            {
                return _cancelled;
            }
        }
    }

    private bool Track(Socket socket)
    {
        lock (_lock)
        {
            if (_cancelled)
            {
                socket.Dispose();
                return false;
            }

            _pendingSocket = socket;
            return true;
        }
    }

    private void Untrack(Socket socket)
    {
        lock (_lock)
        {
            if (ReferenceEquals(_pendingSocket, socket))
            {
                _pendingSocket = null;
            }
        }
    }
}
