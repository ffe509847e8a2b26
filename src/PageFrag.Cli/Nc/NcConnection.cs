using System.Net.Sockets;
using PageFrag.Pages;
using PageFrag.Pool;

namespace PageFrag.Cli.Nc;

/// <summary>
/// One connection (or one UDP peer) of <c>pagefrag nc</c>: the receive path (a reader thread that owns a page pool,
/// charges truesize against the receive budget and queues buffers) and the writer (the caller's thread, which
/// writes the queue to standard output and frees the buffers). The send path (<see cref="SendPath"/>) attaches
/// from its own thread.
/// </summary>
/// <remarks>
/// <para>When a connection is over follows OpenBSD netcat's <c>readwrite()</c>: when both inputs are gone (the
/// network sent its end and standard input ended), when the network input is gone in listen mode, or when both
/// outputs are gone (the network input is gone and the send side failed). A closed standard output, a reset or
/// a refused peer end it at once with a message.</para>
/// <para>Threading: the state below <see cref="_gate"/> is shared by the reader, the writer and the sender and is
/// only touched under it; the reader and the writer wait on it (the reader for budget, the writer for data).</para>
/// </remarks>
internal sealed partial class NcConnection
{
    /// <summary>How long a waiting thread sleeps before it looks again, so that no lost wake-up can hang a run.</summary>
    private const int WaitSliceMilliseconds = 1000;

    /// <summary>Loop iterations before the zero-allocation measurement starts (tiering, first pages, first lists).</summary>
    internal const int WarmUpIterations = 64;

    private readonly object _gate = new();
    private readonly NcOptions _options;
    private readonly NcStats _stats;
    private readonly NcStdout _stdout;
    private readonly SocketIO _io;
    private readonly PageAllocator _allocator;

    // The receive path's page pool, disposed by the reader when it stops; the tear-down drives its release.
    private PagePool? _receivePool;
    private readonly bool _hasSendSide;
    private readonly ReceivedBuffer[] _ring;
    private readonly ReceivedBuffer[] _writeBatch = new ReceivedBuffer[NcStdout.MaxBatch];
    private Thread? _reader;

    // ---- under _gate ----
    private int _ringHead;
    private int _ringCount;
    private long _charged;
    private bool _readerWaiting;
    private bool _writerWaiting;
    private bool _netInEnded;
    private bool _stdinEnded;
    private bool _sendFailed;
    private string? _failure;
    private string? _netInError;
    private string? _sendError;
    private string? _sendFailure;
    private bool _aborted;
    private volatile bool _stdoutClosed;

    // Written under _gate (and _sendGate), read without it by the other threads between operations.
    private volatile bool _over;

    public NcConnection(NcOptions options, Socket socket, NcStats stats, NcStdout stdout, bool hasSendSide)
    {
        _options = options;
        _stats = stats;
        _stdout = stdout;
        _hasSendSide = hasSendSide;
        _stdinEnded = !hasSendSide;
        _allocator = options.Allocator ?? PageAllocator.Shared;
        _io = new SocketIO(socket, options.ForceManagedIO);

        // Enough entries for the whole budget in page-sized buffers; small buffers stop the reader on the ring
        // before the budget, which bounds the queue either way.
        int entries = Math.Clamp(options.ReceiveBudget / 4096 * 2, 256, 8192);
        _ring = new ReceivedBuffer[(int)System.Numerics.BitOperations.RoundUpToPowerOf2((uint)entries)];
        stats.NativeSocket = _io.IsNative;
        stats.GatherStdout = stdout.IsGather;
        stats.ReceiveBudget = options.ReceiveBudget;
    }

    public SocketIO IO => _io;

    public bool HasSendSide => _hasSendSide;

    /// <summary>True once the connection is being torn down: the sender stops using it.</summary>
    public bool IsOver => _over;

    /// <summary>
    /// What went wrong, one message per line, or null: a fatal failure (closed standard output), a receive error
    /// (reset, refused), standard input that could not all be sent.
    /// </summary>
    public string? Failure
    {
        get
        {
            lock (_gate)
            {
                string?[] all = [_failure, _netInError, _sendError];
                string[] present = [.. all.Where(m => m is not null).Distinct()!];
                return present.Length == 0 ? null : string.Join(Environment.NewLine, present);
            }
        }
    }

    /// <summary>True when standard output was found closed: no later connection can write either.</summary>
    public bool StdoutClosed => _stdoutClosed;

    /// <summary>Starts the reader thread, and the transmit thread when the connection sends.</summary>
    public void Start()
    {
        _reader = new Thread(RunReader) { IsBackground = true, Name = "pagefrag nc receive" };
        _reader.Start();
        if (_hasSendSide)
        {
            _transmitter = new Thread(RunTransmitter) { IsBackground = true, Name = "pagefrag nc transmit" };
            _transmitter.Start();
        }
    }

    /// <summary>
    /// Runs the writer on the calling thread until the connection is over, then tears it down: stops the reader,
    /// frees what is still queued, releases the pool, closes the socket. Returns the exit code.
    /// </summary>
    public int RunWriter()
    {
        try
        {
            WriteLoop();
        }
        finally
        {
            TearDown();
        }

        return Failure is null ? ExitCodes.Success : ExitCodes.Failure;
    }

    /// <summary>Ends the connection from outside (cancellation): the writer returns, the reader and the sender stop.</summary>
    public void Abort()
    {
        lock (_gate)
        {
            _aborted = true;
        }

        SetOver();

        ShutdownSocket(SocketShutdown.Both);
    }

    // ------------------------------------------------------------------ the sender's side

    /// <summary>Standard input ended and everything was sent: shut the send side down with -N, and let the end rules see it.</summary>
    private void SenderFinished()
    {
        if (_options.ShutdownOnEof && !_over)
        {
            ShutdownSocket(SocketShutdown.Send);
        }

        lock (_gate)
        {
            _stdinEnded = true;
            Monitor.PulseAll(_gate);
        }
    }

    /// <summary>The socket refused a send: the network output is gone, and what was not sent is lost.</summary>
    private void SendFailed(string reason, long unsentOfBatch)
    {
        _stats.BytesNotSent += unsentOfBatch + DropSendQueue();
        lock (_gate)
        {
            _sendFailed = true;
            _sendFailure ??= reason;
            Monitor.PulseAll(_gate);
        }
    }

    /// <summary>
    /// At the end: when the network failed us (a reset, a refused send) before standard input ended, say that not
    /// all of it was sent, as a write to a closed pipe would. The end of a listener's network input is no failure.
    /// </summary>
    private void ReportUnsentInput()
    {
        bool inputEnded;
        lock (_sendGate)
        {
            inputEnded = _inputEnded && _sendCount == 0;
        }

        lock (_gate)
        {
            // UDP has no connection for a peer to close: a receive error there (ICMP port unreachable) says
            // nothing about input not sent, and the sender may simply not have seen the end of input yet.
            bool peerGone = _sendFailed || (_netInError is not null && !_options.Udp);
            if (_hasSendSide && !_aborted && !inputEnded && peerGone)
            {
                string reason = _sendFailure ?? _netInError ?? "the connection failed";
                _sendError = reason == _netInError
                    ? $"the peer closed the connection before all of standard input was sent ({_bytesSent:N0} bytes sent)"
                    : $"{reason}: the peer closed the connection before all of standard input was sent ({_bytesSent:N0} bytes sent)";
            }
        }
    }

    /// <summary>The stdin thread hit an unexpected error (standard input unreadable): end the connection with its message.</summary>
    public void SenderCrashed(string message) => Fail(message);

    // ------------------------------------------------------------------ writer

    private void WriteLoop()
    {
        ReceivedBuffer[] batch = _writeBatch;
        long iterations = 0;
        long allocStart = 0;
        long allocTop = 0;
        try
        {
            while (true)
            {
                iterations++;
                allocTop = GC.GetAllocatedBytesForCurrentThread();
                if (iterations == WarmUpIterations)
                {
                    allocStart = allocTop;
                }

                int count = TakeBatch(batch);
                if (count == 0)
                {
                    return;
                }

                long bytes = 0;
                long trueSize = 0;
                for (int i = 0; i < count; i++)
                {
                    bytes += batch[i].Length;
                }

                bool written = false;
                try
                {
                    _stdout.Write(batch.AsSpan(0, count));
                    written = true;
                }
                catch (StdoutClosedException e)
                {
                    _stdoutClosed = true;
                    Fail(e.Message);
                }
                catch (NcException e)
                {
                    Fail(e.Message);
                }
                finally
                {
                    for (int i = 0; i < count; i++)
                    {
                        trueSize += batch[i].Buffer.TrueSize;

                        // Not the pool's owner thread: the page goes back through the recycle ring, as a page freed
                        // by a process reading its socket does in the kernel.
                        PagePool.Free(batch[i].Buffer);
                        batch[i] = default;
                    }

                    lock (_gate)
                    {
                        _charged -= trueSize;
                        if (_readerWaiting)
                        {
                            Monitor.PulseAll(_gate);
                        }
                    }
                }

                if (written)
                {
                    _stats.BytesReceived += bytes;
                    _stats.StdoutWrites++;
                }
            }
        }
        finally
        {
            if (iterations > WarmUpIterations)
            {
                _stats.WriteLoopAllocatedBytes += allocTop - allocStart;
            }
        }
    }

    /// <summary>Takes up to a batch of queued buffers; 0 when the connection is over.</summary>
    private int TakeBatch(ReceivedBuffer[] batch)
    {
        lock (_gate)
        {
            while (true)
            {
                if (_failure is null && _ringCount > 0)
                {
                    int count = Math.Min(_ringCount, batch.Length);
                    int mask = _ring.Length - 1;
                    for (int i = 0; i < count; i++)
                    {
                        ref ReceivedBuffer slot = ref _ring[(_ringHead + i) & mask];
                        batch[i] = slot;
                        slot = default;
                    }

                    _ringHead = (_ringHead + count) & mask;
                    _ringCount -= count;
                    return count;
                }

                if (IsDoneUnderGate())
                {
                    return 0;
                }

                _writerWaiting = true;
                Monitor.Wait(_gate, WaitSliceMilliseconds);
                _writerWaiting = false;
            }
        }
    }

    /// <summary>OpenBSD netcat's three ways out of readwrite(), plus failures and cancellation.</summary>
    private bool IsDoneUnderGate()
    {
        if (_over || _failure is not null)
        {
            return true;
        }

        if (!_netInEnded || _ringCount > 0)
        {
            return false;
        }

        // The network input is gone and drained. It failed (reset, refused); or both inputs are gone; or listening
        // ("listen and net in gone, queues empty"); or both outputs are gone (standard output is done with once the
        // network input is).
        return _netInError is not null || _stdinEnded || _sendFailed || (_options.Listen && SendIdle);
    }

    private void SetOver()
    {
        lock (_gate)
        {
            _over = true;
            Monitor.PulseAll(_gate);
        }

        lock (_sendGate)
        {
            Monitor.PulseAll(_sendGate);
        }
    }

    private void Fail(string message)
    {
        lock (_gate)
        {
            if (!_over)
            {
                _failure ??= message;
            }

            _over = true;
            Monitor.PulseAll(_gate);
        }

        lock (_sendGate)
        {
            Monitor.PulseAll(_sendGate);
        }
    }

    private void TearDown()
    {
        SetOver();

        // Wakes the reader's poll and a transmit blocked in a send; the descriptor stays valid until both let go.
        ShutdownSocket(SocketShutdown.Both);
        _reader?.Join();
        _transmitter?.Join();
        ReportUnsentInput();
        _stats.BytesNotSent += DropSendQueue();

        // A failure can leave buffers queued: free them before the pool goes.
        lock (_gate)
        {
            int mask = _ring.Length - 1;
            for (int i = 0; i < _ringCount; i++)
            {
                ref ReceivedBuffer slot = ref _ring[(_ringHead + i) & mask];
                _charged -= slot.Buffer.TrueSize;
                PagePool.Free(slot.Buffer);
                slot = default;
            }

            _ringCount = 0;
        }

        // Every receive buffer is back now, but a put that raced the reader's Dispose went into the pool's ring,
        // which the pool's release timer scrubs up to a second later (page_pool_release_retry): the command would
        // end with a page still out. One release attempt now gives the pool's pages back before the command ends.
        if (_receivePool is PagePool pool && pool.IsDisposed)
        {
            pool.RetryRelease();
        }

        _io.Socket.Dispose();
    }

    private void ShutdownSocket(SocketShutdown how)
    {
        try
        {
            _io.Socket.Shutdown(how);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            // Already closed, or never connected (a UDP listener with -k): nothing to shut down.
        }
    }
}
