using PageFrag.Frag;
using PageFrag.Pages;

namespace PageFrag.Cli.Nc;

/// <summary>
/// The stdin half of the send path, shaped like tcp_sendmsg over sk_page_frag: one thread reads standard input
/// straight into the space a per-connection <see cref="PageFragCache"/> prepares (at least 32 bytes, and all the
/// page offers), commits what it read, and either grows the connection's queued tail fragment with commit_noref
/// (the bytes follow it in the same page: skb_can_coalesce) or queues a new fragment. The connection's transmit
/// thread sends the queue with gather sends of up to 17 fragments. No byte is copied between standard input and
/// the socket except by the two system calls.
/// </summary>
/// <remarks>
/// <para><b>One thread, many connections.</b> Standard input belongs to the run, not to a connection (with -k, one
/// connection after another reads it), so the thread lives as long as the run and takes each connection in turn;
/// it creates that connection's cache, owns it (allocation needs no lock), and drains it when the connection is
/// over. A read that was blocked when a connection ended keeps its bytes for the next connection.</para>
/// <para><b>UDP</b> sends every read as one datagram of at most <see cref="NcOptions.UdpMaxPayload"/> bytes, so it
/// prepares that much and never coalesces.</para>
/// </remarks>
internal sealed class SendPath
{
    private readonly NcOptions _options;
    private readonly NcStdin _stdin;
    private readonly NcStats _stats;
    private readonly PageAllocator _allocator;
    private readonly object _handoff = new();
    private readonly ManualResetEventSlim _finished = new();
    private readonly Thread _thread;

    // A fragment read while its connection was ending, kept for the next connection.
    private PageFragment _carried;
    private bool _eof;

    // ---- under _handoff ----
    private NcConnection? _next;
    private bool _runOver;

    public SendPath(NcOptions options, NcStdin stdin, NcStats stats)
    {
        _options = options;
        _stdin = stdin;
        _stats = stats;
        _allocator = options.Allocator ?? PageAllocator.Shared;

        // A background thread: a read of an interactive standard input may never return, and must not keep the
        // process alive once the last connection is over.
        _thread = new Thread(Run) { IsBackground = true, Name = "pagefrag nc stdin" };
        _thread.Start();
    }

    /// <summary>Hands the next connection to the stdin thread.</summary>
    public void Offer(NcConnection connection)
    {
        lock (_handoff)
        {
            _next = connection;
            Monitor.PulseAll(_handoff);
        }
    }

    /// <summary>No more connections: the thread frees what it holds and ends (once a blocked read returns).</summary>
    public void RunOver()
    {
        lock (_handoff)
        {
            _runOver = true;
            Monitor.PulseAll(_handoff);
        }
    }

    /// <summary>Waits for the thread to end; false if it is still blocked reading standard input.</summary>
    public bool WaitFinished(TimeSpan timeout) => _finished.Wait(timeout);

    private NcConnection? Take()
    {
        lock (_handoff)
        {
            while (_next is null && !_runOver)
            {
                Monitor.Wait(_handoff);
            }

            NcConnection? next = _next;
            _next = null;
            return next;
        }
    }

    private void Run()
    {
        NcConnection? connection = null;
        try
        {
            while ((connection = Take()) is not null)
            {
                if (_eof)
                {
                    // Standard input ended during an earlier connection: this one gets the end at once (-N shuts down).
                    connection.InputEnded();
                    continue;
                }

                var cache = new PageFragCache(_allocator);
                try
                {
                    Pump(connection, cache);
                }
                finally
                {
                    // A carried fragment keeps its page alive; the cache lets go of the rest.
                    cache.Drain();
                    _stats.SendPagesAllocated += cache.PagesAllocated;
                    _stats.SendPagesReused += cache.PagesReused;
                }
            }
        }
        catch (Exception e)
        {
            connection?.SenderCrashed(e is NcException ? e.Message : $"send path failed: {e.Message}");
        }
        finally
        {
            if (!_carried.IsEmpty)
            {
                PageFragCache.Free(_carried);
                _carried = default;
            }

            _finished.Set();
        }
    }

    /// <summary>Standard input to one connection, until the input ends, the connection is over, or it cannot send.</summary>
    private void Pump(NcConnection connection, PageFragCache cache)
    {
        bool udp = _options.Udp;
        int minPrepare = udp ? NcOptions.UdpMaxPayload : NcOptions.MinPrepare;
        if (!_carried.IsEmpty)
        {
            if (!connection.TryEnqueue(_carried))
            {
                return;
            }

            _carried = default;
        }

        long iterations = 0;
        long allocStart = 0;
        long allocTop = 0;
        try
        {
            while (connection.WaitForSendRoom())
            {
                iterations++;
                allocTop = GC.GetAllocatedBytesForCurrentThread();
                if (iterations == NcConnection.WarmUpIterations)
                {
                    allocStart = allocTop;
                }

                // sk_page_frag_refill: at least 32 bytes (a whole datagram for UDP), and take all the page offers.
                if (!cache.TryPrepare(minPrepare, out PreparedFragment prepared))
                {
                    // Out of pages: wait for the transmit thread to free some, unless nothing is out.
                    if (!connection.WaitForSendProgress())
                    {
                        throw new NcException("out of memory: the fragment cache could not get a page for the send path");
                    }

                    continue;
                }

                int space = udp ? Math.Min(prepared.Size, NcOptions.UdpMaxPayload) : prepared.Size;
                int n = _stdin.Read(prepared.Span[..space]);
                if (n == 0)
                {
                    _eof = true;
                    connection.InputEnded();
                    return;
                }

                _stats.StdinBytes += n;
                if (!udp && connection.TryCoalesce(cache, prepared, n))
                {
                    _stats.CoalescedCommits++;
                    continue;
                }

                PageFragment fragment = cache.Commit(prepared, n);
                _stats.Commits++;
                if (!connection.TryEnqueue(fragment))
                {
                    // The connection ended while the read was blocked: the bytes wait for the next connection.
                    _carried = fragment;
                    return;
                }
            }
        }
        finally
        {
            if (iterations > NcConnection.WarmUpIterations)
            {
                _stats.SendLoopAllocatedBytes += allocTop - allocStart;
            }
        }
    }
}
