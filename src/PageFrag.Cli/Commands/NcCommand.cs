using System.CommandLine;
using System.Runtime.InteropServices;
using PageFrag.Cli.Infrastructure;
using PageFrag.Cli.Nc;

namespace PageFrag.Cli.Commands;

/// <summary>
/// <c>pagefrag nc</c>: the seed's netcat test through PageFrag's buffers. The send path reads standard input into a
/// per-connection fragment cache (prepare, commit, commit_noref coalescing, gather sends of up to 17 fragments);
/// the receive path reads the socket into page pool buffers charged at truesize against a receive budget and
/// writes them to standard output. Flags keep OpenBSD netcat's meaning.
/// </summary>
internal static class NcCommand
{
    /// <summary>The command's definition; its action runs a <see cref="NcSession"/> on <paramref name="io"/>.</summary>
    public static Command Create(CliIO io)
    {
        var listen = new Option<bool>("-l", "--listen") { Description = "Listen for an incoming connection instead of connecting." };
        var keep = new Option<bool>("-k", "--keep-listening") { Description = "With -l, keep listening for another connection after a client leaves." };
        var udp = new Option<bool>("-u", "--udp") { Description = "UDP instead of TCP." };
        var ipv4 = new Option<bool>("-4") { Description = "IPv4 only." };
        var ipv6 = new Option<bool>("-6") { Description = "IPv6 only." };
        var shutdown = new Option<bool>("-N", "--shutdown-on-eof") { Description = "Shut down the sending side of the socket when standard input ends." };
        var verbose = new Option<bool>("-v", "--verbose") { Description = "Report connections, and at the end bytes, time, throughput, pages, fragments and truesize." };
        var budget = new Option<int?>("-I", "--receive-budget")
        {
            Description = $"Truesize the receive path may hold before it stops reading, in bytes (the SO_RCVBUF idea; default {NcOptions.DefaultReceiveBudget}).",
            HelpName = "length",
        };
        var destination = new Argument<string[]>("destination")
        {
            Description = "[host] port: where to connect, or with -l the port (and optionally the address) to listen on. Port 0 with -l picks a free port.",
            Arity = ArgumentArity.ZeroOrMore,
        };

        var command = new Command("nc", "Netcat through PageFrag: standard input goes out through a fragment cache, what arrives goes to standard output through a page pool.")
        {
            listen, keep, udp, ipv4, ipv6, shutdown, verbose, budget, destination,
        };
        command.SetAction(parse =>
        {
            string? problem = NcOptions.TryCreate(
                parse.GetValue(destination) ?? [],
                parse.GetValue(listen),
                parse.GetValue(keep),
                parse.GetValue(udp),
                parse.GetValue(ipv4),
                parse.GetValue(ipv6),
                parse.GetValue(shutdown),
                parse.GetValue(verbose),
                parse.GetValue(budget),
                out NcOptions? options);
            if (problem is not null)
            {
                return CliErrors.Report(io, "nc", $"{problem} (usage: pagefrag nc [-l] [-k] [-u] [-4|-6] [-N] [-v] [-I length] [host] port)", ExitCodes.Usage, json: false);
            }

            return Execute(options!, io);
        });
        return command;
    }

    /// <summary>Runs a session on <paramref name="io"/>'s streams, or on the process's standard input and output.</summary>
    public static int Execute(NcOptions options, CliIO io, CancellationToken cancellationToken = default)
    {
        NcStdin stdin = io.Input is Stream input ? new StreamStdin(input) : NcStdin.ForProcess(options.ForceManagedIO);
        NcStdout stdout = io.Output is Stream output ? new StreamStdout(output) : NcStdout.ForProcess(options.ForceManagedIO);
        var session = new NcSession(options, stdin, stdout, io.Error);
        if (io.Input is not null)
        {
            // A caller's stream (tests): once it has ended, the stdin thread has freed everything it held.
            int result = session.Run(cancellationToken);
            session.WaitForSender(TimeSpan.FromSeconds(10));
            return result;
        }

        if (OperatingSystem.IsWindows())
        {
            return session.Run(cancellationToken);
        }

        // Ctrl-C or a kill ends the run the way the end of a connection does, so that -v still reports (a UDP
        // listener has no other way to end). The exit code is the shell's 128 + signal.
        int signal = 0;
        void Stop(PosixSignalContext context)
        {
            context.Cancel = true;
            signal = context.Signal == PosixSignal.SIGINT ? 2 : 15;
            session.Cancel();
        }

        using PosixSignalRegistration sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, Stop);
        using PosixSignalRegistration sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, Stop);
        int code = session.Run(cancellationToken);
        return signal != 0 ? 128 + signal : code;
    }
}
