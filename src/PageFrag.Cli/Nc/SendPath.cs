using PageFrag.Frag;
using PageFrag.Pages;

namespace PageFrag.Cli.Nc;

/// <summary>
/// The send path of <c>pagefrag nc</c>, shaped like tcp_sendmsg over sk_page_frag: one thread reads standard input
/// straight into the space a per-connection <see cref="PageFragCache"/> prepares, commits what it read, coalesces it
/// into the previous fragment when it is contiguous (commit_noref, the skb_can_coalesce case), and sends up to
/// <see cref="NcOptions.MaxSkbFrags"/> fragments with one gather send. No byte is copied between standard input and
/// the socket except by the two system calls.
/// </summary>
/// <remarks>
/// <para><b>One thread, many connections.</b> Standard input belongs to the run, not to a connection (with -k, one
/// connection after another reads it), so the thread lives as long as the run and takes each connection in turn;
/// it creates that connection's cache, owns it (allocation needs no lock), and drains it when the connection is
/// over. A read that was blocked when a connection ended keeps its bytes for the next connection.</para>
/// <para><b>When to send.</b> After a short read (standard input had no more for now, the interactive case), after
/// the seventeenth fragment, and at the end of the input; a full read of a page's space goes on to the next page.
/// UDP sends every read as one datagram of at most <see cref="NcOptions.UdpMaxPayload"/> bytes.</para>
/// </remarks>
internal sealed class SendPath
{
    private readonly NcOptions _options;
    private readonly NcStdin _stdin;
    private readonly NcStats _stats;
    private readonly PageAllocator _allocator;
    private readonly PageFragment[] _batch = new PageFragment[NcOptions.MaxSkbFrags];
    private readonly object _handoff = new();
    private readonly ManualResetEventSlim _finished = new();
    private readonly Thread _thread;

    private int _count;
    private long _batchTrueSize;
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
        _thread = new Thread(Run) { IsBackground = true, Name = "pagefrag nc send" };
        _thread.Start();
    }

    /// <summary>Hands the next connection to the send thread.</summary>
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
                if (!connection.HasSendSide)
                {
                    continue;
                }

                if (_eof)
                {
                    // Standard input ended during an earlier connection: this one gets the end at once (-N shuts down).
                    connection.SenderFinished();
                    continue;
                }

                var cache = new PageFragCache(_allocator);
                try
                {
                    Pump(connection, cache);
                }
                finally
                {
                    // Fragments carried to the next connection keep their page alive; the cache lets go of the rest.
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
            FreeBatch(null);
            _finished.Set();
        }
    }

    /// <summary>Standard input to one connection, until the input ends, the connection is over, or a send fails.</summary>
    private void Pump(NcConnection connection, PageFragCache cache)
    {
        bool udp = _options.Udp;
        int minPrepare = udp ? NcOptions.UdpMaxPayload : NcOptions.MinPrepare;
        long iterations = 0;
        long allocStart = 0;
        long allocTop = 0;
        try
        {
            if (_count > 0 && !Send(connection, cache))
            {
                return; // carried bytes from a read that outlived the previous connection
            }

            while (!connection.IsOver)
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
                    if (_count > 0)
                    {
                        // Out of pages: sending frees the batch's, then try again.
                        if (!Send(connection, cache))
                        {
                            return;
                        }

                        continue;
                    }

                    throw new NcException("out of memory: the fragment cache could not get a page for the send path");
                }

                int space = udp ? Math.Min(prepared.Size, NcOptions.UdpMaxPayload) : prepared.Size;
                int n = _stdin.Read(prepared.Span[..space]);
                if (n == 0)
                {
                    _eof = true;
                    if (_count > 0 && !connection.IsOver && !Send(connection, cache))
                    {
                        return;
                    }

                    if (!connection.IsOver)
                    {
                        connection.SenderFinished();
                    }

                    return;
                }

                _stats.StdinBytes += n;
                Commit(cache, prepared, n, udp);
                if (connection.IsOver)
                {
                    return; // the bytes stay in the batch for the next connection
                }

                connection.SenderPending(_count);
                if ((udp || _count == NcOptions.MaxSkbFrags || n < space) && !Send(connection, cache))
                {
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

    /// <summary>Takes the bytes just read: grows the previous fragment when they follow it in the same page, else a new fragment.</summary>
    private void Commit(PageFragCache cache, in PreparedFragment prepared, int n, bool udp)
    {
        if (_count > 0 && !udp)
        {
            ref PageFragment last = ref _batch[_count - 1];

            // skb_can_coalesce: same page, and the new bytes start where the fragment ends.
            if (last.Page == prepared.Page && last.PageOffset + last.Length == prepared.Offset)
            {
                _batchTrueSize += cache.CommitNoRef(prepared, n, ref last);
                _stats.CoalescedCommits++;
                NotePeak();
                return;
            }
        }

        PageFragment fragment = cache.Commit(prepared, n);
        _batch[_count++] = fragment;
        _batchTrueSize += fragment.TrueSize;
        _stats.Commits++;
        NotePeak();
    }

    private void NotePeak()
    {
        if (_batchTrueSize > _stats.SendTrueSizePeak)
        {
            _stats.SendTrueSizePeak = _batchTrueSize;
        }
    }

    /// <summary>One gather send of the batch, then its fragments are freed. False when the connection cannot send any more.</summary>
    private bool Send(NcConnection connection, PageFragCache cache)
    {
        ReadOnlySpan<PageFragment> fragments = _batch.AsSpan(0, _count);
        long bytes = 0;
        foreach (ref readonly PageFragment f in fragments)
        {
            bytes += f.Length;
        }

        bool ok = connection.IO.Send(fragments, out long sent);
        _stats.BytesSent += sent;
        if (ok)
        {
            _stats.GatherSends++;
            _stats.FragmentsSent += _count;
        }

        FreeBatch(cache);
        if (!ok)
        {
            _stats.BytesNotSent += bytes - sent;
            connection.SendFailed(connection.IO.LastError ?? "send failed", bytes - sent);
            return false;
        }

        connection.SenderPending(0);
        return true;
    }

    /// <summary>Frees the batch: on the cache's own page with no atomic (FreeLocal), elsewhere as any thread would.</summary>
    private void FreeBatch(PageFragCache? cache)
    {
        for (int i = 0; i < _count; i++)
        {
            if (cache is null)
            {
                PageFragCache.Free(_batch[i]);
            }
            else
            {
                cache.FreeLocal(_batch[i]);
            }

            _batch[i] = default;
        }

        _count = 0;
        _batchTrueSize = 0;
    }
}
