using System.Net.Sockets;
using System.Runtime.InteropServices;
using PageFrag.Frag;

namespace PageFrag.Cli.Nc;

/// <summary>
/// Gather sends and scatter receives on one connected socket: <c>writev</c>/<c>readv</c> on the socket's descriptor
/// on Linux (no allocation, no pinning: PageFrag memory is pinned already), <c>Socket.Send/Receive(IList&lt;ArraySegment&lt;byte&gt;&gt;)</c>
/// elsewhere.
/// </summary>
/// <remarks>
/// <para>Threading: one sender thread and one receiver thread may use it at once (a socket is full duplex);
/// <see cref="Send"/> is never called concurrently with itself, nor <see cref="Receive"/> with itself.</para>
/// <para>The descriptor is used under <see cref="SafeHandle.DangerousAddRef"/>, so closing the socket on another
/// thread never lets a call reach a recycled descriptor number; a call after the close fails cleanly.</para>
/// </remarks>
internal sealed unsafe class SocketIO
{
    private readonly Socket _socket;
    private readonly bool _native;
    private readonly List<ArraySegment<byte>> _sendSegments;
    private readonly List<ArraySegment<byte>> _receiveSegments;

    public SocketIO(Socket socket, bool forceManaged)
    {
        _socket = socket;
        _native = Posix.IsSupported && !forceManaged;
        _sendSegments = new List<ArraySegment<byte>>(NcOptions.MaxSkbFrags);
        _receiveSegments = new List<ArraySegment<byte>>(NcOptions.MaxSkbFrags);
    }

    public Socket Socket => _socket;

    /// <summary>True when sends and receives are single writev/readv calls on the descriptor.</summary>
    public bool IsNative => _native;

    /// <summary>Why the last failed call failed (null after a success). Built only on failure.</summary>
    public string? LastError { get; private set; }

    /// <summary>The last failure was the peer refusing (ICMP port unreachable for UDP, RST for TCP).</summary>
    public bool LastErrorWasRefused { get; private set; }

    /// <summary>
    /// Sends every byte of <paramref name="fragments"/> as one gather send (one datagram for UDP), looping only on
    /// short writes. False when the socket can no longer send (peer reset, shut down, closed): see <see cref="LastError"/>
    /// and <paramref name="sent"/>, the bytes that did go out.
    /// </summary>
    public bool Send(ReadOnlySpan<PageFragment> fragments, out long sent)
    {
        sent = 0;
        LastError = null;
        return _native ? SendNative(fragments, ref sent) : SendManaged(fragments, ref sent);
    }

    /// <summary>
    /// Receives into <paramref name="buffers"/> with one scatter receive (one datagram for UDP). Returns the bytes
    /// received, 0 at the end of a TCP stream (or for an empty datagram), -1 on an error (see <see cref="LastError"/>).
    /// </summary>
    public int Receive(ReadOnlySpan<ReceivedBuffer> buffers)
    {
        LastError = null;
        return _native ? ReceiveNative(buffers) : ReceiveManaged(buffers);
    }

    /// <summary>Bytes the socket holds now (FIONREAD; for UDP on Linux, the size of the next datagram); -1 once closed.</summary>
    public int Available()
    {
        try
        {
            return _socket.Available;
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            Fail(e);
            return -1;
        }
    }

    /// <summary>
    /// Waits up to <paramref name="timeoutMilliseconds"/> for something to read: data, the end, or a pending error
    /// (a UDP peer's ICMP "port unreachable" raises only POLLERR, which <c>Socket.Poll(SelectRead)</c> does not count).
    /// </summary>
    public bool WaitReadable(int timeoutMilliseconds)
    {
        if (!_native)
        {
            try
            {
                return _socket.Poll(timeoutMilliseconds * 1000, SelectMode.SelectRead) || _socket.Poll(0, SelectMode.SelectError);
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException)
            {
                Fail(e);
                return true; // the next call reports the failure
            }
        }

        SafeHandle handle = _socket.SafeHandle;
        bool added = false;
        try
        {
            handle.DangerousAddRef(ref added);
            var pfd = new Posix.PollFd { Fd = (int)handle.DangerousGetHandle(), Events = Posix.POLLIN };

            // POLLERR and POLLHUP come back whether asked for or not; either means the next receive has news.
            int ready = Posix.Poll(&pfd, 1, timeoutMilliseconds);
            return ready > 0 || (ready < 0 && Marshal.GetLastPInvokeError() != Posix.EINTR);
        }
        catch (ObjectDisposedException e)
        {
            Fail(e);
            return true;
        }
        finally
        {
            if (added)
            {
                handle.DangerousRelease();
            }
        }
    }

    private bool SendNative(ReadOnlySpan<PageFragment> fragments, ref long sent)
    {
        int count = fragments.Length;
        Posix.IoVec* iov = stackalloc Posix.IoVec[NcOptions.MaxSkbFrags];
        if (count > NcOptions.MaxSkbFrags)
        {
            throw new ArgumentOutOfRangeException(nameof(fragments), count, $"At most {NcOptions.MaxSkbFrags} fragments per send (MAX_SKB_FRAGS).");
        }

        for (int i = 0; i < count; i++)
        {
            iov[i].Base = fragments[i].Pointer;
            iov[i].Length = (nuint)fragments[i].Length;
        }

        SafeHandle handle = _socket.SafeHandle;
        bool added = false;
        try
        {
            handle.DangerousAddRef(ref added);
            int fd = (int)handle.DangerousGetHandle();
            int first = 0;
            while (first < count)
            {
                nint n = Posix.WriteV(fd, iov + first, count - first);
                if (n < 0)
                {
                    int errno = Marshal.GetLastPInvokeError();
                    if (errno == Posix.EINTR)
                    {
                        continue;
                    }

                    if (errno == Posix.EAGAIN)
                    {
                        Posix.WaitFor(fd, Posix.POLLOUT);
                        continue;
                    }

                    FailErrno(errno);
                    return false;
                }

                sent += n;
                first = FdStdout.Advance(iov, first, count, (nuint)n);
            }

            return true;
        }
        catch (ObjectDisposedException e)
        {
            Fail(e);
            return false;
        }
        finally
        {
            if (added)
            {
                handle.DangerousRelease();
            }
        }
    }

    private int ReceiveNative(ReadOnlySpan<ReceivedBuffer> buffers)
    {
        int count = buffers.Length;
        Posix.IoVec* iov = stackalloc Posix.IoVec[NcOptions.MaxSkbFrags];
        if (count > NcOptions.MaxSkbFrags)
        {
            throw new ArgumentOutOfRangeException(nameof(buffers), count, $"At most {NcOptions.MaxSkbFrags} buffers per receive.");
        }

        for (int i = 0; i < count; i++)
        {
            iov[i].Base = buffers[i].Buffer.Pointer;
            iov[i].Length = (nuint)buffers[i].Length;
        }

        SafeHandle handle = _socket.SafeHandle;
        bool added = false;
        try
        {
            handle.DangerousAddRef(ref added);
            int fd = (int)handle.DangerousGetHandle();
            while (true)
            {
                nint n = Posix.ReadV(fd, iov, count);
                if (n >= 0)
                {
                    return (int)n;
                }

                int errno = Marshal.GetLastPInvokeError();
                if (errno == Posix.EINTR)
                {
                    continue;
                }

                if (errno == Posix.EAGAIN)
                {
                    Posix.WaitFor(fd, Posix.POLLIN);
                    continue;
                }

                FailErrno(errno);
                return -1;
            }
        }
        catch (ObjectDisposedException e)
        {
            Fail(e);
            return -1;
        }
        finally
        {
            if (added)
            {
                handle.DangerousRelease();
            }
        }
    }

    private bool SendManaged(ReadOnlySpan<PageFragment> fragments, ref long sent)
    {
        List<ArraySegment<byte>> segments = _sendSegments;
        segments.Clear();
        long total = 0;
        foreach (ref readonly PageFragment f in fragments)
        {
            segments.Add(f.ArraySegment);
            total += f.Length;
        }

        try
        {
            // Socket.Send(IList) sends everything on a blocking socket; a datagram socket sends one datagram.
            while (sent < total)
            {
                int n = _socket.Send(segments, SocketFlags.None);
                sent += n;
                if (sent < total)
                {
                    TrimFront(segments, n);
                }
            }

            return true;
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            Fail(e);
            return false;
        }
    }

    private int ReceiveManaged(ReadOnlySpan<ReceivedBuffer> buffers)
    {
        List<ArraySegment<byte>> segments = _receiveSegments;
        segments.Clear();
        foreach (ref readonly ReceivedBuffer b in buffers)
        {
            ArraySegment<byte> whole = b.Buffer.ArraySegment;
            segments.Add(new ArraySegment<byte>(whole.Array!, whole.Offset, b.Length));
        }

        try
        {
            return _socket.Receive(segments, SocketFlags.None);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            Fail(e);
            return -1;
        }
    }

    private static void TrimFront(List<ArraySegment<byte>> segments, int bytes)
    {
        while (bytes > 0)
        {
            ArraySegment<byte> s = segments[0];
            if (bytes >= s.Count)
            {
                bytes -= s.Count;
                segments.RemoveAt(0);
            }
            else
            {
                segments[0] = s.Slice(bytes);
                bytes = 0;
            }
        }
    }

    private void FailErrno(int errno)
    {
        LastErrorWasRefused = errno == Posix.ECONNREFUSED;
        LastError = Posix.Describe(errno);
    }

    private void Fail(Exception e)
    {
        LastErrorWasRefused = e is SocketException { SocketErrorCode: SocketError.ConnectionRefused };
        LastError = e is ObjectDisposedException ? "the socket was closed" : e.Message;
    }
}
