using System.Globalization;

namespace PageFrag.Cli.Bench;

/// <summary>
/// The aims, checked case by case against what was measured. Only the peers are compared with, never
/// PageFrag's other rows; a case with a failed row, or without a peer, has no verdict.
/// </summary>
internal static class Aims
{
    public const double PushPopFactor = 10;

    public static IEnumerable<AimResult> Evaluate(BenchReportData report)
    {
        foreach (ScenarioResult scenario in report.Scenarios)
        {
            IEnumerable<AimResult> aims = scenario.Scenario switch
            {
                BenchScenario.PushPop => PushPop(scenario),
                BenchScenario.SingleThread => SingleThread(scenario),
                BenchScenario.Memory => Memory(scenario),
                _ => [],
            };
            foreach (AimResult aim in aims)
            {
                yield return aim;
            }
        }
    }

    private static IEnumerable<AimResult> PushPop(ScenarioResult scenario)
    {
        foreach (CaseResult c in scenario.Cases)
        {
            if (Weakest(c) is PeerResult weakest)
            {
                yield return new AimResult(scenario.Scenario, c.Name, "PageFrag at least 10x every peer", weakest.Advantage >= PushPopFactor,
                    F($"lowest {weakest.Advantage:0.00}x ({BenchPeers.Name(weakest.Peer)})"));
            }
        }
    }

    private static IEnumerable<AimResult> SingleThread(ScenarioResult scenario)
    {
        foreach (CaseResult c in scenario.Cases)
        {
            if (Weakest(c) is PeerResult fastest)
            {
                yield return new AimResult(scenario.Scenario, c.Name, "PageFrag (FreeLocal) not slower than the fastest peer", fastest.Advantage >= 1,
                    F($"{c.Baseline!.Median:0.00} ns vs {fastest.Median:0.00} ns {BenchPeers.Name(fastest.Peer)} ({fastest.Advantage:0.00}x)"));
            }
        }
    }

    /// <summary>Issue 14, aim 5: FIFO release at most this many bytes kept per byte requested (the fragment cache).</summary>
    public const double FifoMemoryLimit = 1.05;

    /// <summary>Issue 14, aim 5: random release at most this many bytes kept per byte requested (PageFrag's best row).</summary>
    public const double RandomMemoryLimit = 1.6;

    /// <summary>
    /// Issue 14, aim 5. FIFO: the fragment cache keeps at most 1.05 bytes per byte. Random release: PageFrag's
    /// best row (the fragment cache or the slab cache, whichever a receive path with that release pattern would
    /// use) keeps at most 1.6 bytes per byte and less than every pooling peer (ArrayPool, Kestrel, DotNetty).
    /// The collections are shown, not judged: growing the arenas (pinned arrays) is what triggers them.
    /// </summary>
    private static IEnumerable<AimResult> Memory(ScenarioResult scenario)
    {
        foreach (CaseResult c in scenario.Cases)
        {
            PeerResult? baseline = c.Baseline;
            if (baseline is not { Ok: true })
            {
                continue;
            }

            PeerResult[] pools = [.. c.Rows.Where(r => BenchPeers.IsPooling(r.Peer))];
            if (pools.Length == 0 || pools.Any(p => !p.Ok))
            {
                continue;
            }

            PeerResult bestPool = pools.MinBy(p => p.Median)!;
            if (c.Name.StartsWith("FIFO", StringComparison.Ordinal))
            {
                int collections = baseline.Gen0 + baseline.Gen1 + baseline.Gen2;
                yield return new AimResult(scenario.Scenario, c.Name, "fragment cache at most 1.05 bytes kept per byte requested",
                    baseline.Median <= FifoMemoryLimit,
                    F($"{baseline.Median:0.000} kept/requested; best pool {BenchPeers.Name(bestPool.Peer)} {bestPool.Median:0.000}; {collections} GC(s)"));
            }
            else
            {
                PeerResult ours = c.Rows.Where(r => r.Ok && r.Peer is BenchPeer.PageFrag or BenchPeer.Slab).MinBy(r => r.Median)!;
                int collections = ours.Gen0 + ours.Gen1 + ours.Gen2;
                yield return new AimResult(scenario.Scenario, c.Name, "PageFrag's best row at most 1.6 bytes kept per byte requested, below every pooling peer",
                    ours.Median <= RandomMemoryLimit && ours.Median < bestPool.Median,
                    F($"{BenchPeers.Name(ours.Peer)} {ours.Median:0.000} kept/requested; best pool {BenchPeers.Name(bestPool.Peer)} {bestPool.Median:0.000} ({bestPool.Median / ours.Median:0.00}x); {collections} GC(s)"));
            }
        }
    }

    /// <summary>The peer PageFrag beats by the least (its advantage is smallest), or null when there is none or one failed.</summary>
    private static PeerResult? Weakest(CaseResult c)
    {
        PeerResult[] peers = [.. c.Rows.Where(r => !BenchPeers.IsPageFrag(r.Peer))];
        if (peers.Length == 0 || c.Baseline is not { Ok: true } || peers.Any(p => p.Advantage is null))
        {
            return null;
        }

        return peers.MinBy(p => p.Advantage!.Value);
    }

    private static string F(FormattableString s) => s.ToString(CultureInfo.InvariantCulture);
}
