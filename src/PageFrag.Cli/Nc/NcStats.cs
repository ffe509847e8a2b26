using System.Globalization;
using System.Text;
using PageFrag.Pool;

namespace PageFrag.Cli.Nc;

/// <summary>
/// What one <c>pagefrag nc</c> run did, summed over its connections. Each counter has one writer thread (the send
/// side's stdin thread, a connection's reader or its writer); read them once the run is over.
/// </summary>
internal sealed class NcStats
{
    // ---- send path (stdin thread) ----
    public long BytesSent;
    public long StdinBytes;
    public long GatherSends;
    public long FragmentsSent;
    public long CoalescedCommits;
    public long Commits;
    public long SendPagesAllocated;
    public long SendPagesReused;
    public long SendTrueSizePeak;
    public long BytesNotSent;

    /// <summary>GC heap bytes the stdin thread allocated in its loop after warm-up (should be 0).</summary>
    public long SendLoopAllocatedBytes;

    /// <summary>GC heap bytes the transmit threads allocated in their loops after warm-up (should be 0).</summary>
    public long TransmitLoopAllocatedBytes;

    // ---- receive path (reader and writer threads) ----
    public long BytesReceived;
    public long Receives;
    public long BuffersReceived;
    public long ReceiveTrueSizePeak;
    public long BudgetStalls;
    public long StdoutWrites;
    public int ReceiveBudget;
    public PagePoolStats PoolStats;
    public long PoolPagesHeld;

    /// <summary>GC heap bytes the reader allocated in its loop after warm-up (should be 0).</summary>
    public long ReceiveLoopAllocatedBytes;

    /// <summary>GC heap bytes the writer allocated in its loop after warm-up (should be 0).</summary>
    public long WriteLoopAllocatedBytes;

    public int Connections;
    public TimeSpan Elapsed;
    public bool GatherStdout;
    public bool NativeSocket;

    /// <summary>Pool pages reused: every allocation that did not go to the page allocator.</summary>
    public long PoolPagesReused => PoolStats.AllocFast + PoolStats.AllocRefill;

    /// <summary>The <c>-v</c> report for standard error: a summary line, then a line per direction that moved bytes.</summary>
    public string Report()
    {
        CultureInfo c = CultureInfo.InvariantCulture;
        double seconds = Math.Max(Elapsed.TotalSeconds, 1e-9);
        long bytes = BytesSent + BytesReceived;
        string rate = (bytes / seconds / 1e6).ToString("F1", c);
        var report = new StringBuilder();
        report.Append(c, $"pagefrag nc: {BytesSent:N0} bytes sent, {BytesReceived:N0} bytes received in {Elapsed.TotalSeconds:F3} s ({rate} MB/s), {Connections} connection(s)");
        if (StdinBytes > 0 || GatherSends > 0)
        {
            report.AppendLine();
            report.Append(c, $"  send:    {FragmentsSent:N0} fragments in {GatherSends:N0} gather sends ({Avg(FragmentsSent, GatherSends)} per send, at most {NcOptions.MaxSkbFrags}), {Commits:N0} commits + {CoalescedCommits:N0} coalesced commits (commit_noref); cache pages allocated {SendPagesAllocated:N0}, reused in place {SendPagesReused:N0}; truesize peak {SendTrueSizePeak:N0} B");
            if (BytesNotSent > 0)
            {
                report.Append(c, $"; {BytesNotSent:N0} bytes not sent");
            }
        }

        if (Receives > 0)
        {
            report.AppendLine();
            report.Append(c, $"  receive: {BuffersReceived:N0} page pool buffers in {Receives:N0} receives ({Avg(BuffersReceived, Receives)} per receive), {StdoutWrites:N0} {(GatherStdout ? "gather writes (writev)" : "stream writes")}; pool pages allocated {PoolPagesHeld:N0}, reused {PoolPagesReused:N0}; truesize peak {ReceiveTrueSizePeak:N0} B of a {ReceiveBudget:N0} B budget, reader stopped {BudgetStalls:N0} times for it");
        }

        return report.ToString();
    }

    private static string Avg(long a, long b) => b == 0 ? "0" : ((double)a / b).ToString("F1", CultureInfo.InvariantCulture);
}
