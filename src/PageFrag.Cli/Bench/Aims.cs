using System.Globalization;

namespace PageFrag.Cli.Bench;

/// <summary>
/// The aims, checked case by case against what was measured. Only the peers are compared with, never
/// PageFrag's other rows; a case with a failed row, or without a peer, has no verdict.
/// </summary>
internal static class Aims
{
    public const double PushPopFactor = 10;
    public const double MemoryLimit = 1.15;

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

    private static IEnumerable<AimResult> Memory(ScenarioResult scenario)
    {
        foreach (CaseResult c in scenario.Cases)
        {
            if (Weakest(c) is PeerResult best)
            {
                PeerResult baseline = c.Baseline!;
                int collections = baseline.Gen0 + baseline.Gen1 + baseline.Gen2;
                yield return new AimResult(scenario.Scenario, c.Name, "under 1.15 bytes kept per byte requested, better than every peer, no GC collection",
                    baseline.Median < MemoryLimit && best.Advantage > 1 && collections == 0,
                    F($"{baseline.Median:0.000} kept/requested; best peer {BenchPeers.Name(best.Peer)} {best.Median:0.000} ({best.Advantage:0.00}x); {collections} GC(s)"));
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
