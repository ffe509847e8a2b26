using System.Globalization;

namespace PageFrag.Cli.Bench;

/// <summary>
/// The aims, checked against what was measured. Only the peers are compared with, never PageFrag's
/// other rows; a scenario with a failed row, or without a peer, has no verdict.
/// </summary>
internal static class Aims
{
    public const double PushPopFactor = 10;
    public const double MemoryLimit = 1.15;

    public static IEnumerable<AimResult> Evaluate(BenchReportData report)
    {
        foreach (ScenarioResult scenario in report.Scenarios)
        {
            AimResult? aim = scenario.Scenario switch
            {
                BenchScenario.PushPop => PushPop(scenario),
                BenchScenario.SingleThread => SingleThread(scenario),
                BenchScenario.Memory => Memory(scenario),
                _ => null,
            };
            if (aim is not null)
            {
                yield return aim;
            }
        }
    }

    private static AimResult? PushPop(ScenarioResult scenario)
    {
        const string Aim = "PageFrag at least 10x every peer";
        var details = new List<string>();
        bool met = true;
        foreach (CaseResult c in scenario.Cases)
        {
            if (Weakest(c) is not PeerResult weakest)
            {
                return null;
            }

            met &= weakest.Advantage >= PushPopFactor;
            details.Add(F($"{c.Name}: lowest {weakest.Advantage:0.0}x ({BenchPeers.Name(weakest.Peer)})"));
        }

        return new AimResult(scenario.Scenario, Aim, met, string.Join("; ", details));
    }

    private static AimResult? SingleThread(ScenarioResult scenario)
    {
        const string Aim = "PageFrag (FreeLocal) not slower than the fastest peer";
        var details = new List<string>();
        bool met = true;
        foreach (CaseResult c in scenario.Cases)
        {
            if (Weakest(c) is not PeerResult fastest)
            {
                return null;
            }

            met &= fastest.Advantage >= 1;
            details.Add(F($"{c.Name}: {c.Baseline!.Median:0.00} ns vs {fastest.Median:0.00} ns {BenchPeers.Name(fastest.Peer)} ({fastest.Advantage:0.00}x)"));
        }

        return new AimResult(scenario.Scenario, Aim, met, string.Join("; ", details));
    }

    private static AimResult? Memory(ScenarioResult scenario)
    {
        const string Aim = "under 1.15 bytes kept per byte requested, better than every peer, no GC collection";
        var details = new List<string>();
        bool met = true;
        foreach (CaseResult c in scenario.Cases)
        {
            PeerResult? baseline = c.Baseline;
            if (baseline is null || !baseline.Ok || Weakest(c) is not PeerResult best)
            {
                return null;
            }

            int collections = baseline.Gen0 + baseline.Gen1 + baseline.Gen2;
            met &= baseline.Median < MemoryLimit && best.Advantage > 1 && collections == 0;
            details.Add(F($"{c.Name}: {baseline.Median:0.000} kept/requested, best peer {BenchPeers.Name(best.Peer)} {best.Median:0.000} ({best.Advantage:0.00}x), {collections} GC(s)"));
        }

        return new AimResult(scenario.Scenario, Aim, met, string.Join("; ", details));
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
