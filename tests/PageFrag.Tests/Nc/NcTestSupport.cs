using System.Buffers.Binary;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using PageFrag.Cli.Infrastructure;
using PageFrag.Cli.Nc;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;

namespace PageFrag.Tests.Nc;

/// <summary>The netcat tests run one after another: each moves megabytes over loopback with several threads.</summary>
[CollectionDefinition("nc")]
public sealed class NcCollection
{
}

/// <summary>What the machine offers the netcat tests.</summary>
internal static class NcEnv
{
    public const string NoIPv6 = "skipped: this machine has no IPv6 loopback (Socket.OSSupportsIPv6 is false or ::1 cannot be bound)";

    /// <summary>True when ::1 can be bound (checked once).</summary>
    public static bool HasIPv6 { get; } = ProbeIPv6();

    /// <summary>How long any one run may take before the test fails instead of hanging.</summary>
    public static readonly TimeSpan Deadline = TimeSpan.FromSeconds(60);

    /// <summary>The full path of a tool the interop tests drive; fails with what to install when it is missing.</summary>
    public static string Tool(string name)
    {
        foreach (string dir in (Environment.GetEnvironmentVariable("PATH") ?? "").Split(Path.PathSeparator))
        {
            string path = Path.Combine(dir, name);
            if (File.Exists(path))
            {
                return path;
            }
        }

        Assert.Fail($"'{name}' is not installed: the netcat interop tests need netcat-openbsd and socat (./run-tests installs them with apt-get).");
        return name;
    }

    public static string Loopback(bool v6) => v6 ? "::1" : "127.0.0.1";

    /// <summary>A port nobody listens on right now (the kernel's pick for a socket bound to port 0, then closed).</summary>
    public static int FreePort(bool udp, bool v6)
    {
        using var s = new Socket(v6 ? AddressFamily.InterNetworkV6 : AddressFamily.InterNetwork, udp ? SocketType.Dgram : SocketType.Stream, udp ? ProtocolType.Udp : ProtocolType.Tcp);
        s.Bind(new IPEndPoint(v6 ? IPAddress.IPv6Loopback : IPAddress.Loopback, 0));
        return ((IPEndPoint)s.LocalEndPoint!).Port;
    }

    /// <summary>Waits until some process listens on (TCP) or has bound (UDP) <paramref name="port"/>, read from /proc/net.</summary>
    public static void WaitBound(int port, bool udp, bool v6, Process? owner = null)
    {
        string file = $"/proc/net/{(udp ? "udp" : "tcp")}{(v6 ? "6" : "")}";
        string portHex = $":{port:X4}";
        var clock = Stopwatch.StartNew();
        while (clock.Elapsed < TimeSpan.FromSeconds(10))
        {
            foreach (string line in File.ReadLines(file).Skip(1))
            {
                string[] fields = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                if (fields.Length > 3 && fields[1].EndsWith(portHex, StringComparison.Ordinal) && (udp || fields[3] == "0A"))
                {
                    return;
                }
            }

            if (owner is { HasExited: true })
            {
                Assert.Fail($"{owner.StartInfo.FileName} exited ({owner.ExitCode}) before binding port {port}: {owner.StandardError.ReadToEnd()}");
            }

            Thread.Sleep(10);
        }

        Assert.Fail($"nothing bound {(udp ? "udp" : "tcp")} port {port} within 10 s");
    }

    private static bool ProbeIPv6()
    {
        if (!Socket.OSSupportsIPv6)
        {
            return false;
        }

        try
        {
            using var s = new Socket(AddressFamily.InterNetworkV6, SocketType.Stream, ProtocolType.Tcp);
            s.Bind(new IPEndPoint(IPAddress.IPv6Loopback, 0));
            return true;
        }
        catch (SocketException)
        {
            return false;
        }
    }
}

/// <summary>A fact that is skipped, with the reason, on a machine without ::1.</summary>
public sealed class IPv6FactAttribute : FactAttribute
{
    public IPv6FactAttribute()
    {
        if (!NcEnv.HasIPv6)
        {
            Skip = NcEnv.NoIPv6;
        }
    }
}

/// <summary>A theory that is skipped, with the reason, on a machine without ::1.</summary>
public sealed class IPv6TheoryAttribute : TheoryAttribute
{
    public IPv6TheoryAttribute()
    {
        if (!NcEnv.HasIPv6)
        {
            Skip = NcEnv.NoIPv6;
        }
    }
}

/// <summary>
/// A read-only stream of <c>length</c> deterministic pseudo-random bytes (xorshift64* from a seed), produced as it is
/// read: no file, no allocation per read.
/// </summary>
internal sealed class PatternStream : Stream
{
    private readonly long _length;
    private ulong _state;
    private long _position;
    private ulong _word;
    private int _wordLeft;

    public PatternStream(long length, ulong seed)
    {
        _length = length;
        _state = seed | 1;
    }

    public override bool CanRead => true;

    public override bool CanSeek => false;

    public override bool CanWrite => false;

    public override long Length => _length;

    public override long Position
    {
        get => _position;
        set => throw new NotSupportedException();
    }

    /// <summary>The SHA-256 of the bytes a stream with this length and seed produces.</summary>
    public static byte[] HashOf(long length, ulong seed)
    {
        using var stream = new PatternStream(length, seed);
        return SHA256.HashData(stream);
    }

    public override int Read(Span<byte> buffer)
    {
        int n = (int)Math.Min(buffer.Length, _length - _position);
        int i = 0;

        // Bytes go out low byte first, word after word, whatever the read sizes: the same sequence for any reader.
        for (; i < n && _wordLeft > 0; i++)
        {
            buffer[i] = (byte)_word;
            _word >>= 8;
            _wordLeft--;
        }

        for (; n - i >= 8; i += 8)
        {
            BinaryPrimitives.WriteUInt64LittleEndian(buffer[i..], Next());
        }

        for (; i < n; i++)
        {
            if (_wordLeft == 0)
            {
                _word = Next();
                _wordLeft = 8;
            }

            buffer[i] = (byte)_word;
            _word >>= 8;
            _wordLeft--;
        }

        _position += n;
        return n;
    }

    private ulong Next()
    {
        _state ^= _state >> 12;
        _state ^= _state << 25;
        _state ^= _state >> 27;
        return _state * 0x2545F4914F6CDD1DUL;
    }

    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

    public override void Flush()
    {
    }

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();

    public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();
}

/// <summary>
/// A write-only stream that hashes what it is given (SHA-256) and counts it; optionally slow, to play a consumer
/// that cannot keep up. One writer thread; <see cref="Count"/> may be read from any thread.
/// </summary>
internal sealed class HashingStream : Stream
{
    private readonly IncrementalHash _hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
    private readonly TimeSpan _delayPerWrite;
    private long _count;

    public HashingStream(TimeSpan delayPerWrite = default) => _delayPerWrite = delayPerWrite;

    public long Count => Interlocked.Read(ref _count);

    public override bool CanRead => false;

    public override bool CanSeek => false;

    public override bool CanWrite => true;

    public override long Length => Count;

    public override long Position
    {
        get => Count;
        set => throw new NotSupportedException();
    }

    public byte[] Hash() => _hash.GetHashAndReset();

    /// <summary>Waits until <paramref name="bytes"/> were written; false after <paramref name="timeout"/>.</summary>
    public bool WaitFor(long bytes, TimeSpan timeout)
    {
        var clock = Stopwatch.StartNew();
        while (Count < bytes)
        {
            if (clock.Elapsed > timeout)
            {
                return false;
            }

            Thread.Sleep(5);
        }

        return true;
    }

    public override void Write(ReadOnlySpan<byte> buffer)
    {
        _hash.AppendData(buffer);
        Interlocked.Add(ref _count, buffer.Length);
        if (_delayPerWrite > TimeSpan.Zero)
        {
            Thread.Sleep(_delayPerWrite);
        }
    }

    public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

    public override void Flush()
    {
    }

    public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();

    protected override void Dispose(bool disposing)
    {
        if (disposing)
        {
            _hash.Dispose();
        }

        base.Dispose(disposing);
    }
}

/// <summary>One <c>pagefrag nc</c> session running in-process on its own thread.</summary>
internal sealed class NcRun
{
    private readonly NcSession _session;
    private readonly StringWriter _errorText = new();
    private readonly TextWriter _error;
    private readonly TaskCompletionSource<IPEndPoint> _listening = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly CancellationTokenSource _cancel = new();
    private readonly Thread _thread;
    private int _exitCode = -1;

    private NcRun(NcOptions options, NcStdin stdin, NcStdout stdout)
    {
        _error = TextWriter.Synchronized(_errorText);
        Options = options with { Listening = ep => _listening.TrySetResult(ep) };
        _session = new NcSession(Options, stdin, stdout, _error);
        _thread = new Thread(() => _exitCode = _session.Run(_cancel.Token)) { IsBackground = true, Name = "test nc session" };
        _thread.Start();
    }

    public NcOptions Options { get; }

    public NcStats Stats => _session.Stats;

    public string Error
    {
        get
        {
            // The synchronized writer locks itself around each write.
            lock (_error)
            {
                return _errorText.ToString();
            }
        }
    }

    public static NcRun Start(NcOptions options, Stream stdin, Stream stdout) => new(options, new StreamStdin(stdin), new StreamStdout(stdout));

    public static NcRun Start(NcOptions options, NcStdin stdin, NcStdout stdout) => new(options, stdin, stdout);

    /// <summary>A listener's bound address (it listens on port 0).</summary>
    public IPEndPoint WaitListening()
    {
        if (!_listening.Task.Wait(TimeSpan.FromSeconds(10)))
        {
            Assert.Fail($"the listener did not start within 10 s; stderr: {Error}");
        }

        return _listening.Task.Result;
    }

    /// <summary>Ends the run from outside (a UDP receiver never ends by itself).</summary>
    public void Cancel() => _cancel.Cancel();

    /// <summary>Waits for the run to end on its own and for its stdin thread to finish; returns the exit code.</summary>
    public int WaitExit()
    {
        if (!_thread.Join(NcEnv.Deadline))
        {
            _cancel.Cancel();
            _thread.Join(TimeSpan.FromSeconds(5));
            Assert.Fail($"pagefrag nc did not end within {NcEnv.Deadline.TotalSeconds} s; stderr: {Error}");
        }

        Assert.True(_session.WaitForSender(TimeSpan.FromSeconds(10)), "the stdin thread did not finish after standard input ended");
        return _exitCode;
    }
}

/// <summary>A peer process (OpenBSD nc or socat) with its standard input fed from a pattern and its output hashed.</summary>
internal sealed class PeerProcess : IDisposable
{
    private readonly Process _process;
    private readonly Task _feed;
    private readonly Task _drain;
    private readonly Task<string> _stderr;

    private PeerProcess(string tool, IEnumerable<string> args, long inputLength, ulong seed)
    {
        var info = new ProcessStartInfo(NcEnv.Tool(tool))
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (string a in args)
        {
            info.ArgumentList.Add(a);
        }

        _process = Process.Start(info) ?? throw new InvalidOperationException($"{tool} did not start");
        Output = new HashingStream();
        _stderr = _process.StandardError.ReadToEndAsync();
        Stream stdin = _process.StandardInput.BaseStream;
        _feed = Task.Run(() =>
        {
            try
            {
                using var pattern = new PatternStream(inputLength, seed);
                pattern.CopyTo(stdin, 64 * 1024);
            }
            catch (IOException)
            {
                // The peer stopped reading (it exited or closed): the test's checks say whether that was expected.
            }
            finally
            {
                try
                {
                    stdin.Dispose();
                }
                catch (IOException)
                {
                }
            }
        });
        Stream stdout = _process.StandardOutput.BaseStream;
        _drain = Task.Run(() => stdout.CopyTo(Output, 64 * 1024));
    }

    public HashingStream Output { get; }

    public Process Process => _process;

    public static PeerProcess Start(string tool, IEnumerable<string> args, long inputLength = 0, ulong seed = 1) => new(tool, args, inputLength, seed);

    /// <summary>Waits for the peer to exit on its own; returns its exit code.</summary>
    public int WaitExit()
    {
        if (!_process.WaitForExit(NcEnv.Deadline))
        {
            Kill();
            Assert.Fail($"{_process.StartInfo.FileName} did not exit within {NcEnv.Deadline.TotalSeconds} s");
        }

        _drain.Wait(NcEnv.Deadline);
        _feed.Wait(NcEnv.Deadline);
        return _process.ExitCode;
    }

    public string StandardError => _stderr.Wait(TimeSpan.FromSeconds(5)) ? _stderr.Result : "";

    public void Kill()
    {
        try
        {
            _process.Kill(entireProcessTree: true);
        }
        catch (InvalidOperationException)
        {
            // Already gone.
        }

        _process.WaitForExit(5000);
    }

    public void Dispose()
    {
        Kill();
        _process.Dispose();
        Output.Dispose();
    }
}

/// <summary>Shared set-up and final checks of the netcat tests.</summary>
internal static class NcKit
{
    /// <summary>A private allocator (4 MiB arenas) so that each test can prove it leaked no page.</summary>
    public static PageAllocator NewAllocator() => Leaks.NewAllocator(arenaSize: 4 << 20);

    public static NcOptions Listener(PageAllocator allocator, bool udp = false, bool v6 = false) => new()
    {
        Listen = true,
        Udp = udp,
        Family = v6 ? NcFamily.V6 : NcFamily.V4,
        Host = NcEnv.Loopback(v6),
        Port = 0,
        ShutdownOnEof = true,
        Allocator = allocator,
    };

    public static NcOptions Client(PageAllocator allocator, int port, bool udp = false, bool v6 = false) => new()
    {
        Udp = udp,
        Family = v6 ? NcFamily.V6 : NcFamily.V4,
        Host = NcEnv.Loopback(v6),
        Port = port,
        ShutdownOnEof = true,
        Allocator = allocator,
    };

    /// <summary>A CLI I/O whose standard streams are <paramref name="input"/> and <paramref name="output"/>.</summary>
    public static CliIO IO(StringWriter error, Stream? input = null, Stream? output = null) =>
        new(new StringWriter(), error, Interactive: false) { Input = input ?? Stream.Null, Output = output ?? Stream.Null };

    /// <summary>Sizes for the byte-exact tests: a few random ones per seed, up to <paramref name="max"/>.</summary>
    public static long RandomSize(int seed, long max) => new Random(seed).NextInt64(2, max + 1);

    /// <summary>Runs <paramref name="run"/> on its own thread and fails instead of hanging past the deadline.</summary>
    public static int Within(Func<int> run)
    {
        int result = -1;
        Exception? failure = null;
        var thread = new Thread(() =>
        {
            try
            {
                result = run();
            }
            catch (Exception e)
            {
                failure = e;
            }
        })
        { IsBackground = true, Name = "test nc command" };
        thread.Start();
        Assert.True(thread.Join(NcEnv.Deadline), $"the command did not end within {NcEnv.Deadline.TotalSeconds} s");
        if (failure is not null)
        {
            throw new InvalidOperationException("the command threw", failure);
        }

        return result;
    }

    /// <summary>No page leaked, and no message looks like a stack trace.</summary>
    public static void AssertClean(PageAllocator allocator, string stderr)
    {
        Assert.DoesNotContain("   at ", stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("Exception", stderr, StringComparison.Ordinal);
        long inUse = allocator.GetStats().PagesInUse;
        if (inUse != 0)
        {
            // Still a failure, but one that says which kind (a CI run once saw 1 page here and it never came back
            // in a rerun): a page given back late by a thread of the command, or one that never comes back.
            var clock = System.Diagnostics.Stopwatch.StartNew();
            while (allocator.GetStats().PagesInUse != 0 && clock.ElapsedMilliseconds < 2000)
            {
                Thread.Sleep(10);
            }

            PageAllocatorStats later = allocator.GetStats();
            Assert.Fail($"{inUse} page(s) in use when both ends had exited; " +
                (later.PagesInUse == 0 ? $"all back {clock.ElapsedMilliseconds} ms later (a late release)" : $"{later.PagesInUse} still in use 2 s later (a leak)") +
                $"; cached {later.CachedPages}, free {later.FreePages}, total {later.TotalPages}.");
        }

        Leaks.AssertNone(allocator);
    }
}
