using PageFrag.Pool;

namespace PageFrag.Cli.Nc;

// The receive path: the reader thread owns a page pool (the NAPI context of a receive queue), asks the socket how
// much it holds, sizes page pool buffers to that (whole pages, and a fragment for a small tail, each with its honest
// truesize), receives into them with one scatter receive, and queues them for the writer. Everything it holds is
// charged at truesize against the receive budget, the sk_rcvbuf idea: once the budget is used up the reader stops
// reading (and the kernel's socket buffer, then the sender, fill up behind it) until the writer frees.
//
//   socket --readv--> [pool buf][pool buf][frag] --queue--> writer --writev--> stdout
//                      charged += truesize                   free; charged -= truesize
internal sealed partial class NcConnection
{
    /// <summary>How long the reader waits for the socket before it looks at the connection's state again.</summary>
    private const int PollMilliseconds = 250;

    private void RunReader()
    {
        var pool = new PagePool(new PagePoolOptions
        {
            Allocator = _allocator,

            // Room in the ring for every page the budget can hold, so that pages freed by the writer come back.
            PoolSize = Math.Clamp(_options.ReceiveBudget / 4096 * 2, PagePoolOptions.DefaultPoolSize, PagePoolOptions.MaxPoolSize),
        });
        _receivePool = pool;
        var batch = new ReceivedBuffer[NcOptions.MaxSkbFrags];
        long iterations = 0;
        long allocStart = 0;
        long allocTop = 0;
        string? error = null;
        try
        {
            error = ReadLoop(pool, batch, ref iterations, ref allocStart, ref allocTop);
        }
        catch (Exception e)
        {
            error = $"receive path failed: {e.Message}";
        }
        finally
        {
            if (iterations > WarmUpIterations)
            {
                _stats.ReceiveLoopAllocatedBytes += allocTop - allocStart;
            }

            lock (_gate)
            {
                _netInEnded = true;
                if (error is not null && !_over)
                {
                    _netInError ??= error;
                }

                Monitor.PulseAll(_gate);
            }

            // Every buffer is freed by the writer (or by the tear-down) after this thread stops; the pool then
            // returns its pages when the last one comes back. Dispose is allowed here: the owner is done.
            pool.GetStats(ref _stats.PoolStats);
            _stats.PoolPagesHeld += pool.PagesHeld;
            pool.Dispose();
        }
    }

    /// <summary>The reader's loop; returns an error message, or null at the end of the stream or of the connection.</summary>
    private string? ReadLoop(PagePool pool, ReceivedBuffer[] batch, ref long iterations, ref long allocStart, ref long allocTop)
    {
        int pageSize = pool.PageSize;
        int maxBytes = NcOptions.MaxSkbFrags * pageSize;
        bool udp = _options.Udp;
        while (true)
        {
            iterations++;
            allocTop = GC.GetAllocatedBytesForCurrentThread();
            if (iterations == WarmUpIterations)
            {
                allocStart = allocTop;
            }

            long room = WaitForBudget();
            if (room < 0)
            {
                return null;
            }

            int available = _io.Available();
            if (available < 0)
            {
                return _io.LastError;
            }

            if (available == 0)
            {
                if (!_io.WaitReadable(PollMilliseconds))
                {
                    continue;
                }

                available = _io.Available();
                if (available < 0)
                {
                    return _io.LastError;
                }

                // Readable with nothing queued: the end of the stream, an error, or an empty datagram. One smallest
                // buffer is enough to learn which.
                available = Math.Max(available, 1);
            }

            // Sized from what the socket has; a TCP read is also held to the budget left (at least a page), while a
            // datagram must be taken whole.
            int want = udp ? available : (int)Math.Min(Math.Min(available, maxBytes), Math.Max(room, pageSize));
            int count = AllocateBuffers(pool, want, batch, pageSize);
            if (count == 0 || (udp && Sum(batch, count) < want))
            {
                FreeAll(batch, count);
                if (!WaitForFrees())
                {
                    return "out of memory: the page pool could not get a page for the receive path";
                }

                continue;
            }

            int n = _io.Receive(batch.AsSpan(0, count));
            if (n < 0)
            {
                FreeAll(batch, count);
                return _io.LastErrorWasRefused ? $"{_io.LastError} (nothing listens on the peer's {_options.ProtocolName} port)" : _io.LastError;
            }

            if (n == 0)
            {
                FreeAll(batch, count);
                if (udp)
                {
                    continue; // an empty datagram: nothing to write
                }

                return null; // the end of the stream
            }

            int used = Trim(batch, count, n);
            Enqueue(batch, used);
        }
    }

    /// <summary>Buffers for <paramref name="want"/> bytes: whole pages, and a fragment or page for the tail.</summary>
    private static int AllocateBuffers(PagePool pool, int want, ReceivedBuffer[] batch, int pageSize)
    {
        int count = 0;
        while (want > 0 && count < batch.Length)
        {
            int size = Math.Min(want, pageSize);

            // page_pool_alloc: a whole page above half a page, else a fragment whose truesize includes a tail too
            // small for another fragment.
            if (!pool.TryAlloc(size, out PagePoolBuffer buffer))
            {
                break;
            }

            batch[count++] = new ReceivedBuffer(buffer, size);
            want -= size;
        }

        return count;
    }

    private static long Sum(ReceivedBuffer[] batch, int count)
    {
        long sum = 0;
        for (int i = 0; i < count; i++)
        {
            sum += batch[i].Length;
        }

        return sum;
    }

    /// <summary>Keeps the buffers the <paramref name="received"/> bytes landed in (the last one trimmed) and frees the rest.</summary>
    private static int Trim(ReceivedBuffer[] batch, int count, int received)
    {
        int used = 0;
        for (int i = 0; i < count; i++)
        {
            if (received == 0)
            {
                // The owner thread: straight back into the pool's cache.
                PagePool.Free(batch[i].Buffer);
                batch[i] = default;
                continue;
            }

            int take = Math.Min(received, batch[i].Length);
            batch[i] = new ReceivedBuffer(batch[i].Buffer, take);
            received -= take;
            used++;
        }

        return used;
    }

    private static void FreeAll(ReceivedBuffer[] batch, int count)
    {
        for (int i = 0; i < count; i++)
        {
            PagePool.Free(batch[i].Buffer);
            batch[i] = default;
        }
    }

    /// <summary>Waits until the budget has room and the queue can take a full receive; the room left, or -1 once over.</summary>
    private long WaitForBudget()
    {
        int budget = _options.ReceiveBudget;
        int ringLimit = _ring.Length - NcOptions.MaxSkbFrags;
        lock (_gate)
        {
            bool counted = false;
            while (!_over && (_charged >= budget || _ringCount > ringLimit))
            {
                if (!counted && _charged >= budget)
                {
                    _stats.BudgetStalls++;
                    counted = true;
                }

                _readerWaiting = true;
                Monitor.Wait(_gate, WaitSliceMilliseconds);
                _readerWaiting = false;
            }

            return _over ? -1 : budget - _charged;
        }
    }

    /// <summary>Memory ran out: wait for the writer to free something. False when nothing is out to be freed.</summary>
    private bool WaitForFrees()
    {
        lock (_gate)
        {
            if (_over)
            {
                return true; // the loop notices and ends
            }

            if (_charged == 0)
            {
                return false;
            }

            long charged = _charged;
            _readerWaiting = true;
            while (!_over && _charged == charged)
            {
                Monitor.Wait(_gate, WaitSliceMilliseconds);
            }

            _readerWaiting = false;
            return true;
        }
    }

    private void Enqueue(ReceivedBuffer[] batch, int count)
    {
        long trueSize = 0;
        lock (_gate)
        {
            int mask = _ring.Length - 1;
            int tail = _ringHead + _ringCount;
            for (int i = 0; i < count; i++)
            {
                _ring[(tail + i) & mask] = batch[i];
                trueSize += batch[i].Buffer.TrueSize;
                batch[i] = default;
            }

            _ringCount += count;
            _charged += trueSize;
            if (_charged > _stats.ReceiveTrueSizePeak)
            {
                _stats.ReceiveTrueSizePeak = _charged;
            }

            if (_writerWaiting)
            {
                Monitor.PulseAll(_gate);
            }
        }

        _stats.Receives++;
        _stats.BuffersReceived += count;
    }
}
