using System.Diagnostics;
using System.IO.Pipes;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using PageFrag.Cli.Nc;
using PageFrag.Pages;

namespace PageFrag.Tests.Nc;

/// <summary>
/// How <c>pagefrag nc</c> behaves around the transfer: a consumer slower than the network (the receive budget), a
/// peer that leaves early, a standard output that closes, signals, and the hot paths' allocations.
/// </summary>
[Collection("nc")]
public class NcBehaviourTests
{
    [Fact]
    public void A_slow_consumer_stops_the_reader_at_the_budget_and_loses_nothing()
    {
        using PageAllocator allocator = NcKit.NewAllocator();
        const int budget = 64 * 1024;
        const long size = 4 << 20;
        using var slowOut = new HashingStream(delayPerWrite: TimeSpan.FromMilliseconds(2));
        NcRun listener = NcRun.Start(NcKit.Listener(allocator) with { ReceiveBudget = budget }, Stream.Null, slowOut);
        int port = listener.WaitListening().Port;
        using var input = new PatternStream(size, 5);
        NcRun client = NcRun.Start(NcKit.Client(allocator, port), input, Stream.Null);

        Assert.True(client.WaitExit() == 0, client.Error);
        Assert.True(listener.WaitExit() == 0, listener.Error);
        Assert.Equal(PatternStream.HashOf(size, 5), slowOut.Hash());
        NcStats s = listener.Stats;
        Assert.True(s.BudgetStalls > 0, "the reader never waited for the budget");

        // The reader reads only while the budget has room, and then at most that room rounded up to a page: it can
        // overshoot by less than one page, like sk_rcvbuf overshoots by one skb.
        Assert.InRange(s.ReceiveTrueSizePeak, budget, budget + 4096);
        NcKit.AssertClean(allocator, client.Error + listener.Error);
    }

    [Fact]
    public void A_peer_that_closes_early_ends_the_run_with_the_bytes_not_sent()
    {
        using PageAllocator allocator = NcKit.NewAllocator();
        using var server = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        server.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        server.Listen();
        var peer = new Thread(() =>
        {
            using Socket s = server.Accept();
            byte[] buffer = new byte[64 * 1024];
            int total = 0;
            while (total < buffer.Length)
            {
                total += s.Receive(buffer.AsSpan(total));
            }

            // Leaves with data still unread: the kernel answers with a reset.
        });
        peer.Start();
        const long size = 64L << 20;
        using var input = new PatternStream(size, 6);
        NcRun client = NcRun.Start(NcKit.Client(allocator, ((IPEndPoint)server.LocalEndPoint!).Port), input, Stream.Null);

        int code = client.WaitExit();
        Assert.True(peer.Join(NcEnv.Deadline));

        Assert.Equal(1, code);
        Assert.Contains("the peer closed the connection before all of standard input was sent", client.Error, StringComparison.Ordinal);
        Assert.Contains($"({client.Stats.BytesSent:N0} bytes sent)", client.Error, StringComparison.Ordinal);
        Assert.True(client.Stats.BytesSent < size);
        NcKit.AssertClean(allocator, client.Error);
    }

    [Fact]
    public void A_peer_that_resets_mid_transfer_ends_the_listener_with_a_prefix_of_its_bytes()
    {
        using PageAllocator allocator = NcKit.NewAllocator();
        using var output = new HashingStream();
        NcRun listener = NcRun.Start(NcKit.Listener(allocator), Stream.Null, output);
        int port = listener.WaitListening().Port;
        const long size = 2 << 20;
        using (var peer = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp))
        {
            peer.Connect(IPAddress.Loopback, port);
            using var pattern = new PatternStream(size, 8);
            byte[] all = new byte[size];
            pattern.ReadExactly(all);
            peer.Send(all);
            peer.LingerState = new LingerOption(true, 0); // close with a reset, not a FIN
        }

        int code = listener.WaitExit();

        // Whether the reset overtakes the last bytes is the kernel's business; what arrived must be a prefix, and a
        // failure must say what happened.
        long got = output.Count;
        Assert.InRange(got, 0, size);
        using var prefix = new PatternStream(got, 8);
        Assert.Equal(SHA256.HashData(prefix), output.Hash());
        if (code != 0)
        {
            Assert.Equal(1, code);
            Assert.Contains("reset", listener.Error, StringComparison.OrdinalIgnoreCase);
        }

        NcKit.AssertClean(allocator, listener.Error);
    }

    [LinuxFact]
    public void Stdin_and_stdout_on_pipe_descriptors_move_the_bytes_with_no_GC_allocation_in_the_loops()
    {
        // The native paths: read(2) from a descriptor into prepared fragments, writev(2) of pool buffers to a
        // descriptor, readv/writev on the sockets. Each loop measures its own thread after a warm-up; the runtime's
        // tiering can charge a one-off few KB to a thread, so one clean run out of three is required. 128 MiB gives
        // every loop hundreds of measured iterations whatever the batching (17 fragments, 64 buffers at most).
        NcStats? clean = null;
        var seen = new List<string>();
        for (int attempt = 0; attempt < 3 && clean is null; attempt++)
        {
            NcStats s = RunOverPipes(128L << 20, (ulong)(50 + attempt));
            seen.Add($"stdin {s.SendLoopAllocatedBytes}, transmit {s.TransmitLoopAllocatedBytes}, receive {s.ReceiveLoopAllocatedBytes}, write {s.WriteLoopAllocatedBytes}");
            if (s.SendLoopAllocatedBytes == 0 && s.TransmitLoopAllocatedBytes == 0 && s.ReceiveLoopAllocatedBytes == 0 && s.WriteLoopAllocatedBytes == 0)
            {
                clean = s;
            }
        }

        Assert.True(clean is not null, $"every run allocated in a loop: {string.Join("; ", seen)}");
        Assert.True(clean.GatherStdout && clean.NativeSocket);
    }

    [LinuxFact]
    public void A_closed_standard_output_ends_the_process_with_a_message_and_no_stack_trace()
    {
        using Process pf = StartCli("nc", "-v", "-l", "127.0.0.1", "0");
        int port = WaitForListeningLine(pf);
        using var peer = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        peer.Connect(IPAddress.Loopback, port);
        var sending = new Thread(() =>
        {
            byte[] chunk = new byte[64 * 1024];
            try
            {
                for (int i = 0; i < 1024; i++)
                {
                    peer.Send(chunk);
                }
            }
            catch (SocketException)
            {
                // pagefrag nc went away: expected.
            }
        });
        sending.Start();

        // Read a little of its output, then close the pipe: its next write gets EPIPE.
        Stream stdout = pf.StandardOutput.BaseStream;
        byte[] some = new byte[100];
        stdout.ReadExactly(some);
        stdout.Dispose();

        Assert.True(pf.WaitForExit(NcEnv.Deadline), "pagefrag nc did not exit after its standard output closed");
        string stderr = pf.StandardError.ReadToEnd();
        peer.Close();
        Assert.True(sending.Join(NcEnv.Deadline));
        Assert.Equal(1, pf.ExitCode);
        Assert.Contains("pagefrag nc: standard output is closed (broken pipe)", stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("   at ", stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("Exception", stderr, StringComparison.Ordinal);
    }

    [LinuxFact]
    public void SIGTERM_ends_a_UDP_listener_which_reports_with_v_and_exits_143()
    {
        using Process pf = StartCli("nc", "-v", "-u", "-l", "127.0.0.1", "0");
        int port = WaitForListeningLine(pf);
        using (var sender = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp))
        {
            sender.Connect(IPAddress.Loopback, port);
            sender.Send(new byte[1000]);
        }

        // Once the datagram is out on standard output, ask the process to stop.
        byte[] datagram = new byte[1000];
        var read = new Thread(() => pf.StandardOutput.BaseStream.ReadExactly(datagram));
        read.Start();
        Assert.True(read.Join(NcEnv.Deadline), "the datagram never reached standard output");
        using (Process kill = Process.Start("sh", ["-c", $"kill -TERM {pf.Id}"]))
        {
            kill.WaitForExit();
        }

        Assert.True(pf.WaitForExit(NcEnv.Deadline), "pagefrag nc did not exit on SIGTERM");
        string stderr = pf.StandardError.ReadToEnd();
        Assert.Equal(143, pf.ExitCode);
        Assert.Contains("1,000 bytes received", stderr, StringComparison.Ordinal);
        Assert.Contains("page pool buffers", stderr, StringComparison.Ordinal);
    }

    // ------------------------------------------------------------------ helpers

    private static NcStats RunOverPipes(long size, ulong seed)
    {
        using PageAllocator allocator = NcKit.NewAllocator();
        using var stdinPipe = new AnonymousPipeServerStream(PipeDirection.Out, HandleInheritability.None);
        using var stdoutPipe = new AnonymousPipeServerStream(PipeDirection.In, HandleInheritability.None);
        int stdinFd = (int)stdinPipe.ClientSafePipeHandle.DangerousGetHandle();
        int stdoutFd = (int)stdoutPipe.ClientSafePipeHandle.DangerousGetHandle();
        using var received = new HashingStream();
        Task drain = Task.Run(() => stdoutPipe.CopyTo(received, 64 * 1024));

        NcRun listener = NcRun.Start(NcKit.Listener(allocator), new StreamStdin(Stream.Null), new FdStdout(stdoutFd));
        int port = listener.WaitListening().Port;
        NcRun client = NcRun.Start(NcKit.Client(allocator, port), new FdStdin(stdinFd), new StreamStdout(Stream.Null));
        using (var pattern = new PatternStream(size, seed))
        {
            pattern.CopyTo(stdinPipe, 64 * 1024);
        }

        stdinPipe.Dispose(); // end of standard input
        Assert.True(client.WaitExit() == 0, client.Error);
        Assert.True(listener.WaitExit() == 0, listener.Error);
        stdoutPipe.DisposeLocalCopyOfClientHandle();
        Assert.True(drain.Wait(NcEnv.Deadline));
        Assert.Equal(PatternStream.HashOf(size, seed), received.Hash());
        NcKit.AssertClean(allocator, client.Error + listener.Error);

        // One loop each: the client's stdin and transmit threads, the listener's reader and writer.
        NcStats c = client.Stats;
        NcStats l = listener.Stats;
        int warm = 2 * NcConnection.WarmUpIterations;
        Assert.True(c.Commits + c.CoalescedCommits > warm && c.GatherSends > warm && l.Receives > warm && l.StdoutWrites > warm,
            $"too few iterations to measure: reads {c.Commits + c.CoalescedCommits}, sends {c.GatherSends}, receives {l.Receives}, writes {l.StdoutWrites}");
        return new NcStats
        {
            SendLoopAllocatedBytes = c.SendLoopAllocatedBytes,
            TransmitLoopAllocatedBytes = c.TransmitLoopAllocatedBytes,
            ReceiveLoopAllocatedBytes = l.ReceiveLoopAllocatedBytes,
            WriteLoopAllocatedBytes = l.WriteLoopAllocatedBytes,
            GatherStdout = l.GatherStdout,
            NativeSocket = c.NativeSocket && l.NativeSocket,
        };
    }

    /// <summary>The built <c>pagefrag</c> tool as a child process, standard streams redirected.</summary>
    private static Process StartCli(params string[] args)
    {
        string dll = Path.Combine(AppContext.BaseDirectory, "PageFrag.Cli.dll");
        Assert.True(File.Exists(dll), $"the CLI is not next to the tests: {dll}");
        var info = new ProcessStartInfo("dotnet")
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        info.ArgumentList.Add(dll);
        foreach (string a in args)
        {
            info.ArgumentList.Add(a);
        }

        Process process = Process.Start(info) ?? throw new InvalidOperationException("dotnet did not start");
        process.StandardInput.Close(); // standard input at its end
        return process;
    }

    /// <summary>Reads standard error until "Listening on ADDRESS PORT" and returns the port.</summary>
    private static int WaitForListeningLine(Process process)
    {
        Task<string?> line = process.StandardError.ReadLineAsync();
        if (!line.Wait(NcEnv.Deadline) || line.Result is not string text || !text.StartsWith("Listening on ", StringComparison.Ordinal))
        {
            process.Kill();
            Assert.Fail($"no 'Listening on' line from pagefrag nc: '{(line.IsCompleted ? line.Result : "(nothing)")}'");
            return 0;
        }

        return int.Parse(text[(text.LastIndexOf(' ') + 1)..], System.Globalization.CultureInfo.InvariantCulture);
    }

    [Fact]
    public void A_client_given_an_IPv4_mapped_IPv6_address_reaches_an_IPv4_listener_as_OpenBSD_nc_does()
    {
        using PageAllocator allocator = NcKit.NewAllocator();
        using var server = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        server.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        server.Listen(1);
        long received = 0;
        var peer = new Thread(() =>
        {
            try
            {
                using Socket s = server.Accept();
                byte[] buffer = new byte[64 * 1024];
                int n;
                while ((n = s.Receive(buffer)) > 0)
                {
                    received += n;
                }
            }
            catch (SocketException)
            {
                // No client came (the server closed below): the assertions on the exit code say why.
            }
        })
        { IsBackground = true };
        peer.Start();
        const long size = 1 << 20;
        using var input = new PatternStream(size, 11);
        NcOptions options = NcKit.Client(allocator, ((IPEndPoint)server.LocalEndPoint!).Port) with
        {
            Host = "::ffff:127.0.0.1",
            Family = NcFamily.Any,
        };
        NcRun client = NcRun.Start(options, input, Stream.Null);

        int code = client.WaitExit();
        if (code != 0)
        {
            server.Close();
        }

        Assert.True(peer.Join(NcEnv.Deadline));

        Assert.True(code == 0, client.Error);
        Assert.Equal(size, received);
        NcKit.AssertClean(allocator, client.Error);
    }
}

/// <summary>A fact that needs Linux (descriptors, /proc, signals): skipped elsewhere, with the reason.</summary>
public sealed class LinuxFactAttribute : FactAttribute
{
    public LinuxFactAttribute()
    {
        if (!OperatingSystem.IsLinux())
        {
            Skip = "skipped: this test drives Linux descriptors, /proc or signals";
        }
    }
}
