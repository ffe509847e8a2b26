using System.Net;
using System.Net.Sockets;
using PageFrag.Cli;
using PageFrag.Cli.Commands;
using PageFrag.Cli.Nc;
using PageFrag.Pages;

namespace PageFrag.Tests.Nc;

/// <summary>
/// What a netcat user gets wrong, and what goes wrong around them: a clear one-line message on standard error, the
/// documented exit code, no stack trace, and no page taken.
/// </summary>
[Collection("nc")]
public class NcBadInputTests
{
    [Theory]
    [InlineData(new string[0], "missing host and port")]
    [InlineData(new[] { "-l" }, "missing port")]
    [InlineData(new[] { "localhost" }, "missing port")]
    [InlineData(new[] { "localhost", "http" }, "bad port 'http'")]
    [InlineData(new[] { "localhost", "70000" }, "bad port '70000': a port is a number from 1 to 65535")]
    [InlineData(new[] { "localhost", "0" }, "bad port '0': a port is a number from 1 to 65535")]
    [InlineData(new[] { "-l", "65536" }, "bad port '65536': a port is a number from 0 (any free port) to 65535")]
    [InlineData(new[] { "-4", "-6", "localhost", "1234" }, "-4 and -6 cannot be used together")]
    [InlineData(new[] { "-46", "localhost", "1234" }, "-4 and -6 cannot be used together")]
    [InlineData(new[] { "-k", "localhost", "1234" }, "-k only makes sense with -l")]
    [InlineData(new[] { "-l", "host", "1234", "extra" }, "too many arguments")]
    [InlineData(new[] { "-I", "100", "-l", "1234" }, "-I 100: the receive budget must be between 4096 and 1073741824 bytes")]
    [InlineData(new[] { "-l", "", "1234" }, "the host is empty")]
    [InlineData(new[] { "localhost", "-1" }, "bad port '-1': a port is a number from 1 to 65535")]
    [InlineData(new[] { "-l", "-1" }, "bad port '-1': a port is a number from 0 (any free port) to 65535")]
    public void A_bad_command_line_is_a_usage_error_with_a_clear_message(string[] args, string message)
    {
        var error = new StringWriter();
        int code = Program.Run(["nc", .. args], NcKit.IO(error));

        Assert.Equal(ExitCodes.Usage, code);
        string text = error.ToString();
        Assert.StartsWith("pagefrag nc: ", text, StringComparison.Ordinal);
        Assert.Contains(message, text, StringComparison.Ordinal);
        Assert.Contains("usage: pagefrag nc", text, StringComparison.Ordinal);
        Assert.DoesNotContain("   at ", text, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("-z", "pagefrag nc: unknown option '-z'")]
    [InlineData("--no-such-flag", "pagefrag nc: unknown option '--no-such-flag'")]
    [InlineData("-I", "pagefrag nc: -I: 'localhost' is not a whole number")]
    public void An_unknown_flag_or_a_flag_without_its_value_is_a_usage_error(string flag, string message)
    {
        var error = new StringWriter();
        int code = Program.Run(["nc", flag, "localhost", "1234"], NcKit.IO(error));

        Assert.Equal(ExitCodes.Usage, code);
        Assert.Contains(message, error.ToString(), StringComparison.Ordinal);
        Assert.DoesNotContain("   at ", error.ToString(), StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("nosuch.invalid", false, "unknown host 'nosuch.invalid'", ExitCodes.Failure)]
    [InlineData("::1", false, "'::1' is not an IPv4 address, but -4 was given", ExitCodes.Usage)]
    [InlineData("127.0.0.1", true, "'127.0.0.1' is not an IPv6 address, but -6 was given", ExitCodes.Usage)]
    public void A_host_that_does_not_resolve_is_a_connection_error_and_a_literal_of_the_wrong_family_a_usage_error(string host, bool v6, string message, int exitCode)
    {
        using PageAllocator allocator = NcKit.NewAllocator();
        var error = new StringWriter();
        var options = new NcOptions { Host = host, Port = 1234, Family = v6 ? NcFamily.V6 : NcFamily.V4, Allocator = allocator };

        int code = NcKit.Within(() => NcCommand.Execute(options, NcKit.IO(error)));

        Assert.Equal(exitCode, code);
        Assert.Contains($"pagefrag nc: {message}", error.ToString(), StringComparison.Ordinal);
        NcKit.AssertClean(allocator, error.ToString());
    }

    [Fact]
    public void The_command_line_reaches_the_same_unknown_host_check_and_exits_1_as_OpenBSD_nc_does()
    {
        var error = new StringWriter();
        int code = Program.Run(["nc", "-4", "nosuch.invalid", "80"], NcKit.IO(error));

        Assert.Equal(ExitCodes.Failure, code);
        Assert.Contains("pagefrag nc: unknown host 'nosuch.invalid'", error.ToString(), StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Connecting_where_nobody_listens_reports_connection_refused(bool viaCommandLine)
    {
        using PageAllocator allocator = NcKit.NewAllocator();
        int port = NcEnv.FreePort(udp: false, v6: false);
        var error = new StringWriter();

        int code = NcKit.Within(() => viaCommandLine
            ? Program.Run(["nc", "127.0.0.1", $"{port}"], NcKit.IO(error))
            : NcCommand.Execute(NcKit.Client(allocator, port), NcKit.IO(error)));

        Assert.Equal(ExitCodes.Failure, code);
        Assert.Equal($"pagefrag nc: connect to 127.0.0.1 port {port} (tcp) failed: Connection refused{Environment.NewLine}", error.ToString());
        NcKit.AssertClean(allocator, error.ToString());
    }

    [Fact]
    public void A_UDP_client_whose_peer_does_not_listen_reports_connection_refused()
    {
        // UDP has no handshake: the datagram goes out, loopback answers with ICMP port unreachable, and the next
        // receive fails with ECONNREFUSED.
        using PageAllocator allocator = NcKit.NewAllocator();
        int port = NcEnv.FreePort(udp: true, v6: false);
        var error = new StringWriter();
        using var input = new MemoryStream("hello\n"u8.ToArray());

        int code = NcKit.Within(() => NcCommand.Execute(NcKit.Client(allocator, port, udp: true), NcKit.IO(error, input)));

        Assert.Equal(ExitCodes.Failure, code);
        Assert.Equal($"pagefrag nc: Connection refused (nothing listens on the peer's udp port){Environment.NewLine}", error.ToString());
        NcKit.AssertClean(allocator, error.ToString());
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Listening_on_a_port_in_use_reports_address_already_in_use(bool udp)
    {
        using PageAllocator allocator = NcKit.NewAllocator();
        using var holder = new Socket(AddressFamily.InterNetwork, udp ? SocketType.Dgram : SocketType.Stream, udp ? ProtocolType.Udp : ProtocolType.Tcp);
        holder.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        if (!udp)
        {
            holder.Listen();
        }

        int port = ((IPEndPoint)holder.LocalEndPoint!).Port;
        var error = new StringWriter();

        int code = NcKit.Within(() => NcCommand.Execute(NcKit.Listener(allocator, udp) with { Port = port }, NcKit.IO(error)));

        Assert.Equal(ExitCodes.Failure, code);
        Assert.Equal($"pagefrag nc: cannot listen on 127.0.0.1 port {port} ({(udp ? "udp" : "tcp")}): Address already in use{Environment.NewLine}", error.ToString());
        NcKit.AssertClean(allocator, error.ToString());
    }

    [Fact]
    public void The_options_of_a_good_command_line_keep_netcats_meaning()
    {
        string? problem = NcOptions.TryCreate(["::1", "4242"], listen: true, keep: true, udp: true, v4: false, v6: true, shutdownOnEof: true, verbose: true, receiveBudget: 65536, out NcOptions? options);

        Assert.Null(problem);
        Assert.NotNull(options);
        Assert.True(options.Listen && options.KeepListening && options.Udp && options.ShutdownOnEof && options.Verbose);
        Assert.Equal(NcFamily.V6, options.Family);
        Assert.Equal("::1", options.Host);
        Assert.Equal(4242, options.Port);
        Assert.Equal(65536, options.ReceiveBudget);
    }
}
