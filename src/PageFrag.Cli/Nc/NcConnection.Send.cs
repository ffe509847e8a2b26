using PageFrag.Frag;

namespace PageFrag.Cli.Nc;

// The connection's half of the send path: a queue of committed fragments (the socket's write queue) and the
// transmit thread that sends them. The stdin thread (SendPath) commits into the queue; while the tail fragment is
// still queued, bytes read next into the same page are coalesced into it (commit_noref), which is what happens to
// a TCP socket's tail skb while earlier data is still going out. The transmit thread takes up to MAX_SKB_FRAGS
// fragments per gather send and frees them once sent.
//
//   stdin --read--> [prepared space] --commit/commit_noref--> queue [A][B][C+coalesced] --writev(≤17)--> socket
internal sealed partial class NcConnection
{
    /// <summary>Fragments the send queue holds at most: two full gather sends.</summary>
    private const int SendQueueCapacity = 2 * NcOptions.MaxSkbFrags;

    /// <summary>Truesize the send queue holds at most (the SO_SNDBUF idea): two sends of 17 order-3 pages.</summary>
    private const long SendQueueTrueSizeLimit = 2L * NcOptions.MaxSkbFrags * 32768;

    private readonly object _sendGate = new();
    private readonly PageFragment[] _sendQueue = new PageFragment[64];
    private Thread? _transmitter;

    // Bytes this connection sent (the transmit thread writes it; read after it stopped).
    private long _bytesSent;

    // ---- under _sendGate ----
    private int _sendHead;
    private int _sendCount;
    private int _sendInFlight;
    private long _sendQueuedTrueSize;
    private bool _inputEnded;
    private bool _sendBroken;
    private bool _producerWaiting;
    private bool _transmitterWaiting;

    // ------------------------------------------------------------------ called by the stdin thread

    /// <summary>Waits until the queue can take another fragment; false when the connection can send no more.</summary>
    public bool WaitForSendRoom()
    {
        lock (_sendGate)
        {
            while (!_over && !_sendBroken && (_sendCount >= SendQueueCapacity || _sendQueuedTrueSize >= SendQueueTrueSizeLimit))
            {
                _producerWaiting = true;
                Monitor.Wait(_sendGate, WaitSliceMilliseconds);
                _producerWaiting = false;
            }

            return !_over && !_sendBroken;
        }
    }

    /// <summary>
    /// Memory ran out: waits for a send to finish and free its pages. False when nothing is queued or in flight
    /// (no free is coming); true also when the connection can send no more (the caller's next wait notices).
    /// </summary>
    public bool WaitForSendProgress()
    {
        lock (_sendGate)
        {
            if (_over || _sendBroken)
            {
                return true;
            }

            if (_sendCount == 0 && _sendInFlight == 0)
            {
                return false;
            }

            long queued = _sendQueuedTrueSize;
            while (!_over && !_sendBroken && _sendQueuedTrueSize == queued)
            {
                _producerWaiting = true;
                Monitor.Wait(_sendGate, WaitSliceMilliseconds);
                _producerWaiting = false;
            }

            return true;
        }
    }

    /// <summary>
    /// Commits <paramref name="used"/> bytes of <paramref name="prepared"/> into the queued tail fragment when they
    /// follow it in the same page (skb_can_coalesce + page_frag_commit_noref). False when there is no such tail:
    /// the caller commits a new fragment.
    /// </summary>
    public bool TryCoalesce(PageFragCache cache, in PreparedFragment prepared, int used)
    {
        lock (_sendGate)
        {
            if (_sendCount == 0 || _over || _sendBroken)
            {
                return false;
            }

            ref PageFragment tail = ref _sendQueue[(_sendHead + _sendCount - 1) & (_sendQueue.Length - 1)];
            if (tail.Page != prepared.Page || tail.PageOffset + tail.Length != prepared.Offset)
            {
                return false;
            }

            _sendQueuedTrueSize += cache.CommitNoRef(prepared, used, ref tail);
            NoteSendPeakUnderGate();
            WakeTransmitterUnderGate();
            return true;
        }
    }

    /// <summary>Queues a committed fragment; false (the caller keeps it) when the connection can send no more.</summary>
    public bool TryEnqueue(in PageFragment fragment)
    {
        lock (_sendGate)
        {
            if (_over || _sendBroken)
            {
                return false;
            }

            _sendQueue[(_sendHead + _sendCount) & (_sendQueue.Length - 1)] = fragment;
            _sendCount++;
            _sendQueuedTrueSize += fragment.TrueSize;
            NoteSendPeakUnderGate();
            WakeTransmitterUnderGate();
            return true;
        }
    }

    /// <summary>Standard input ended: the transmit thread sends what is queued, then shuts down with -N.</summary>
    public void InputEnded()
    {
        lock (_sendGate)
        {
            _inputEnded = true;
            Monitor.PulseAll(_sendGate);
        }
    }

    /// <summary>True when the sender has nothing read and not yet sent (OpenBSD's empty stdin buffer).</summary>
    private bool SendIdle
    {
        get
        {
            lock (_sendGate)
            {
                return _sendCount == 0 && _sendInFlight == 0;
            }
        }
    }

    // ------------------------------------------------------------------ transmit thread

    private void RunTransmitter()
    {
        var batch = new PageFragment[NcOptions.MaxSkbFrags];
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

                int count = TakeSendBatch(batch, out long trueSize);
                if (count == 0)
                {
                    break;
                }

                long bytes = 0;
                for (int i = 0; i < count; i++)
                {
                    bytes += batch[i].Length;
                }

                bool ok = _io.Send(batch.AsSpan(0, count), out long sent);
                _stats.BytesSent += sent;
                _bytesSent += sent;
                for (int i = 0; i < count; i++)
                {
                    // Not the cache's owner: the atomic free of page_frag_free.
                    PageFragCache.Free(batch[i]);
                    batch[i] = default;
                }

                if (ok)
                {
                    _stats.GatherSends++;
                    _stats.FragmentsSent += count;
                }

                bool idle = SendDone(trueSize, ok);
                if (!ok)
                {
                    SendFailed(_io.LastError ?? "send failed", bytes - sent);
                    break;
                }

                if (idle && _options.Listen)
                {
                    // A listener whose network input ended waits for the sender to be idle: tell it.
                    lock (_gate)
                    {
                        Monitor.PulseAll(_gate);
                    }
                }
            }
        }
        catch (Exception e)
        {
            Fail($"send path failed: {e.Message}");
        }
        finally
        {
            if (iterations > WarmUpIterations)
            {
                _stats.TransmitLoopAllocatedBytes += allocTop - allocStart;
            }
        }

        bool finished;
        lock (_sendGate)
        {
            finished = _inputEnded && !_sendBroken && _sendCount == 0;
        }

        if (finished && !_over)
        {
            SenderFinished();
        }
    }

    /// <summary>Takes up to 17 queued fragments; 0 when the input ended and the queue is empty, or the connection is over.</summary>
    private int TakeSendBatch(PageFragment[] batch, out long trueSize)
    {
        trueSize = 0;
        lock (_sendGate)
        {
            while (_sendCount == 0 && !_inputEnded && !_over)
            {
                _transmitterWaiting = true;
                Monitor.Wait(_sendGate, WaitSliceMilliseconds);
                _transmitterWaiting = false;
            }

            if (_over || _sendCount == 0)
            {
                return 0;
            }

            // A UDP send is one datagram: one fragment, one read of standard input. TCP takes up to 17.
            int count = _options.Udp ? 1 : Math.Min(_sendCount, batch.Length);
            int mask = _sendQueue.Length - 1;
            for (int i = 0; i < count; i++)
            {
                ref PageFragment slot = ref _sendQueue[(_sendHead + i) & mask];
                batch[i] = slot;
                trueSize += slot.TrueSize;
                slot = default;
            }

            _sendHead = (_sendHead + count) & mask;
            _sendCount -= count;
            _sendInFlight = count;
            return count;
        }
    }

    /// <summary>A send finished: release its truesize, wake the stdin thread; true when nothing is left to send.</summary>
    private bool SendDone(long trueSize, bool ok)
    {
        lock (_sendGate)
        {
            _sendInFlight = 0;
            _sendQueuedTrueSize -= trueSize;
            if (!ok)
            {
                _sendBroken = true;
            }

            if (_producerWaiting || !ok)
            {
                Monitor.PulseAll(_sendGate);
            }

            return _sendCount == 0;
        }
    }

    /// <summary>Frees what is still queued (the connection is over or the socket refused): those bytes are not sent.</summary>
    private long DropSendQueue()
    {
        long bytes = 0;
        lock (_sendGate)
        {
            int mask = _sendQueue.Length - 1;
            for (int i = 0; i < _sendCount; i++)
            {
                ref PageFragment slot = ref _sendQueue[(_sendHead + i) & mask];
                bytes += slot.Length;
                _sendQueuedTrueSize -= slot.TrueSize;
                PageFragCache.Free(slot);
                slot = default;
            }

            _sendCount = 0;
            Monitor.PulseAll(_sendGate);
        }

        return bytes;
    }

    private void NoteSendPeakUnderGate()
    {
        if (_sendQueuedTrueSize > _stats.SendTrueSizePeak)
        {
            _stats.SendTrueSizePeak = _sendQueuedTrueSize;
        }
    }

    private void WakeTransmitterUnderGate()
    {
        if (_transmitterWaiting)
        {
            Monitor.PulseAll(_sendGate);
        }
    }
}
