using System.Runtime.InteropServices;

namespace PageFrag.Cli.Nc;

/// <summary>
/// The few Linux system calls the netcat needs for real gather I/O: <c>readv</c>/<c>writev</c> on sockets and on
/// the standard descriptors, <c>read</c> on standard input and <c>poll</c>.
/// </summary>
/// <remarks>
/// <para>Why not the .NET APIs: <c>Socket.Send(IList&lt;ArraySegment&lt;byte&gt;&gt;)</c> pins every segment with a
/// <c>GCHandle</c> and, above 8 segments (Linux's UIO_FASTIOV), allocates its iovec and handle arrays on every
/// call, so a 17-fragment send allocates; <c>RandomAccess.Write(handle, IReadOnlyList&lt;ReadOnlyMemory&lt;byte&gt;&gt;,
/// offset)</c> allocates an array of memory handles per call and always uses <c>pwritev</c>, which a pipe refuses
/// (ESPIPE). PageFrag's memory is pinned for its whole life, so an iovec is just its address and length.</para>
/// <para>Linux only: the errno values below are Linux's. Other systems take the managed fallbacks
/// (<see cref="StreamStdout"/>, <see cref="StreamStdin"/>, <c>Socket</c> list sends).</para>
/// </remarks>
internal static unsafe partial class Posix
{
    public const int EINTR = 4;
    public const int EAGAIN = 11;
    public const int EPIPE = 32;
    public const int ECONNREFUSED = 111;
    public const int ECONNRESET = 104;

    public const short POLLIN = 0x001;
    public const short POLLOUT = 0x004;

    /// <summary>The limit on iovecs per call (IOV_MAX on Linux); the netcat never needs more than a few dozen.</summary>
    public const int IovMax = 1024;

    /// <summary>True where the native paths are used.</summary>
    public static bool IsSupported => OperatingSystem.IsLinux();

    /// <summary><c>struct iovec</c>.</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct IoVec
    {
        public void* Base;
        public nuint Length;
    }

    /// <summary><c>struct pollfd</c>.</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct PollFd
    {
        public int Fd;
        public short Events;
        public short REvents;
    }

    [LibraryImport("libc", EntryPoint = "read", SetLastError = true)]
    public static partial nint Read(int fd, byte* buffer, nuint count);

    [LibraryImport("libc", EntryPoint = "readv", SetLastError = true)]
    public static partial nint ReadV(int fd, IoVec* iov, int count);

    [LibraryImport("libc", EntryPoint = "writev", SetLastError = true)]
    public static partial nint WriteV(int fd, IoVec* iov, int count);

    /// <summary>fcntl's F_SETPIPE_SZ: the capacity of a pipe (Linux, up to /proc/sys/fs/pipe-max-size).</summary>
    public const int F_SETPIPE_SZ = 1031;

    /// <summary>fcntl's F_GETPIPE_SZ.</summary>
    public const int F_GETPIPE_SZ = 1032;

    [LibraryImport("libc", EntryPoint = "fcntl", SetLastError = true)]
    public static partial int Fcntl(int fd, int command, int argument);

    /// <summary>
    /// Grows the pipe behind <paramref name="fd"/> to <paramref name="bytes"/> when it is a pipe (a no-op otherwise,
    /// and when the system refuses): fewer, larger reads and writes, and the process at the other end blocks less.
    /// </summary>
    public static void TryGrowPipe(int fd, int bytes)
    {
        if (Fcntl(fd, F_GETPIPE_SZ, 0) is int current && current > 0 && current < bytes)
        {
            Fcntl(fd, F_SETPIPE_SZ, bytes);
        }
    }

    [LibraryImport("libc", EntryPoint = "poll", SetLastError = true)]
    public static partial int Poll(PollFd* fds, nuint count, int timeoutMilliseconds);

    /// <summary>Waits until <paramref name="fd"/> is ready for <paramref name="events"/> (or has an error or hang-up).</summary>
    public static void WaitFor(int fd, short events)
    {
        var pfd = new PollFd { Fd = fd, Events = events };
        while (Poll(&pfd, 1, -1) < 0 && Marshal.GetLastPInvokeError() == EINTR)
        {
        }
    }

    /// <summary>The message of an errno value, without allocating more than the string itself.</summary>
    public static string Describe(int errno) => Marshal.GetPInvokeErrorMessage(errno);
}
