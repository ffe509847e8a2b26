using System.Runtime.InteropServices;
using PageFrag.Pool;

namespace PageFrag.Cli.Nc;

/// <summary>A received buffer on its way to standard output: the page pool buffer and the bytes the socket put in it.</summary>
internal readonly struct ReceivedBuffer
{
    public ReceivedBuffer(PagePoolBuffer buffer, int length)
    {
        Buffer = buffer;
        Length = length;
    }

    public PagePoolBuffer Buffer { get; }

    public int Length { get; }
}

/// <summary>
/// Where the send path reads: standard input, read straight into the fragment cache's prepared space (no
/// intermediate buffer). One reader thread.
/// </summary>
internal abstract class NcStdin
{
    /// <summary>Reads at most <paramref name="buffer"/>.Length bytes; 0 at the end of the input. Blocks until data or the end.</summary>
    /// <exception cref="NcException">Standard input cannot be read.</exception>
    public abstract int Read(Span<byte> buffer);

    /// <summary>The process's standard input: the descriptor itself on Linux, the console stream elsewhere.</summary>
    public static NcStdin ForProcess(bool forceManaged) =>
        Posix.IsSupported && !forceManaged ? new FdStdin(0) : new StreamStdin(Console.OpenStandardInput(bufferSize: 1));
}

/// <summary>Standard input as a descriptor: <c>read(2)</c> into the caller's span.</summary>
internal sealed unsafe class FdStdin : NcStdin
{
    private readonly int _fd;

    public FdStdin(int fd)
    {
        _fd = fd;

        // One fragment cache page is 32 KiB; a 64 KiB pipe rarely holds more than half of one when read.
        Posix.TryGrowPipe(fd, PipeSize);
    }

    /// <summary>The pipe capacity asked for when standard input is a pipe (Linux's default maximum).</summary>
    public const int PipeSize = 1 << 20;

    public override int Read(Span<byte> buffer)
    {
        fixed (byte* p = buffer)
        {
            while (true)
            {
                nint n = Posix.Read(_fd, p, (nuint)buffer.Length);
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
                    // A non-blocking descriptor inherited from the shell: wait as a blocking read would.
                    Posix.WaitFor(_fd, Posix.POLLIN);
                    continue;
                }

                throw new NcException($"cannot read standard input: {Posix.Describe(errno)}");
            }
        }
    }
}

/// <summary>Standard input as any <see cref="Stream"/> (tests, and systems without the Linux calls).</summary>
internal sealed class StreamStdin : NcStdin
{
    private readonly Stream _stream;

    public StreamStdin(Stream stream) => _stream = stream;

    public override int Read(Span<byte> buffer)
    {
        try
        {
            return _stream.Read(buffer);
        }
        catch (ObjectDisposedException)
        {
            return 0;
        }
        catch (IOException e)
        {
            throw new NcException($"cannot read standard input: {e.Message}", e);
        }
    }
}

/// <summary>
/// Where the receive path writes: standard output. One writer thread. A reader that went away raises
/// <see cref="StdoutClosedException"/>.
/// </summary>
internal abstract class NcStdout
{
    /// <summary>The most buffers one <see cref="Write"/> is given.</summary>
    public const int MaxBatch = 64;

    /// <summary>Writes every buffer, in order, completely.</summary>
    /// <exception cref="StdoutClosedException">The reader of standard output is gone.</exception>
    /// <exception cref="NcException">Another write error (disk full, ...).</exception>
    public abstract void Write(ReadOnlySpan<ReceivedBuffer> buffers);

    /// <summary>True when <see cref="Write"/> hands the whole batch to one system call (writev).</summary>
    public abstract bool IsGather { get; }

    /// <summary>The process's standard output: the descriptor with <c>writev</c> on Linux, the console stream elsewhere.</summary>
    public static NcStdout ForProcess(bool forceManaged) =>
        Posix.IsSupported && !forceManaged ? new FdStdout(1) : new StreamStdout(Console.OpenStandardOutput(bufferSize: 1));
}

/// <summary>Standard output as a descriptor: one <c>writev(2)</c> per batch, looping only on short writes.</summary>
internal sealed unsafe class FdStdout : NcStdout
{
    private readonly int _fd;

    public FdStdout(int fd)
    {
        _fd = fd;
        Posix.TryGrowPipe(fd, FdStdin.PipeSize);
    }

    public override bool IsGather => true;

    public override void Write(ReadOnlySpan<ReceivedBuffer> buffers)
    {
        if (buffers.Length > MaxBatch)
        {
            throw new ArgumentOutOfRangeException(nameof(buffers), buffers.Length, $"At most {MaxBatch} buffers per write.");
        }

        Posix.IoVec* iov = stackalloc Posix.IoVec[MaxBatch];
        int count = 0;
        foreach (ref readonly ReceivedBuffer b in buffers)
        {
            if (b.Length > 0)
            {
                // Pool pages are pinned for their whole life: the address is stable without a GCHandle.
                iov[count].Base = b.Buffer.Pointer;
                iov[count].Length = (nuint)b.Length;
                count++;
            }
        }

        int first = 0;
        while (first < count)
        {
            nint n = Posix.WriteV(_fd, iov + first, count - first);
            if (n < 0)
            {
                int errno = Marshal.GetLastPInvokeError();
                if (errno == Posix.EINTR)
                {
                    continue;
                }

                if (errno == Posix.EAGAIN)
                {
                    Posix.WaitFor(_fd, Posix.POLLOUT);
                    continue;
                }

                if (errno == Posix.EPIPE)
                {
                    throw new StdoutClosedException("broken pipe");
                }

                throw new NcException($"cannot write standard output: {Posix.Describe(errno)}");
            }

            first = Advance(iov, first, count, (nuint)n);
        }
    }

    /// <summary>Moves past <paramref name="written"/> bytes of the iovecs from <paramref name="first"/>; returns the new first.</summary>
    internal static int Advance(Posix.IoVec* iov, int first, int count, nuint written)
    {
        while (first < count && written >= iov[first].Length)
        {
            written -= iov[first].Length;
            first++;
        }

        if (written > 0)
        {
            iov[first].Base = (byte*)iov[first].Base + written;
            iov[first].Length -= written;
        }

        return first;
    }
}

/// <summary>
/// Standard output as any <see cref="Stream"/>: one <see cref="Stream.Write(ReadOnlySpan{byte})"/> per buffer and a
/// flush per batch. Not a gather write: streams have none (see <see cref="IsGather"/>).
/// </summary>
internal sealed class StreamStdout : NcStdout
{
    private readonly Stream _stream;

    public StreamStdout(Stream stream) => _stream = stream;

    public override bool IsGather => false;

    public override void Write(ReadOnlySpan<ReceivedBuffer> buffers)
    {
        try
        {
            foreach (ref readonly ReceivedBuffer b in buffers)
            {
                if (b.Length > 0)
                {
                    _stream.Write(b.Buffer.Span[..b.Length]);
                }
            }

            _stream.Flush();
        }
        catch (ObjectDisposedException e)
        {
            throw new StdoutClosedException("the stream was closed", e);
        }
        catch (IOException e) when (e is not StdoutClosedException)
        {
            // A pipe whose reader left surfaces as an IOException (EPIPE) from the console stream.
            throw new StdoutClosedException(e.Message, e);
        }
    }
}
