using System.Diagnostics;

namespace PageFrag.Cli.Bench;

/// <summary>A check inside a bench loop failed (wrong checksum, leaked pages, a stuck thread).</summary>
internal sealed class BenchFailureException(string message) : Exception(message);

/// <summary>What one measurement of one peer gave.</summary>
internal sealed record RunFigures
{
    /// <summary>The scenario's headline figure (its unit is the scenario's).</summary>
    public required double Value { get; init; }

    /// <summary>Bytes allocated on the GC heap by the measured threads during the measurement.</summary>
    public long GcBytes { get; init; }

    public int Gen0 { get; init; }
    public int Gen1 { get; init; }
    public int Gen2 { get; init; }

    /// <summary>PageFrag rows: pages still in use once everything was freed and drained; null for peers.</summary>
    public long? LeakedPages { get; init; }

    /// <summary>Secondary figures, named as in the JSON output.</summary>
    public IReadOnlyList<KeyValuePair<string, double>> Extra { get; init; } = [];

    public double? ExtraValue(string name)
    {
        foreach (KeyValuePair<string, double> pair in Extra)
        {
            if (pair.Key == name)
            {
                return pair.Value;
            }
        }

        return null;
    }
}

/// <summary>Collection counts and the calling thread's allocated bytes, to subtract later.</summary>
internal readonly record struct GcSnapshot(long ThreadBytes, int Gen0, int Gen1, int Gen2)
{
    public static GcSnapshot Take() => new(GC.GetAllocatedBytesForCurrentThread(), GC.CollectionCount(0), GC.CollectionCount(1), GC.CollectionCount(2));

    /// <summary>Collections since this snapshot, with <paramref name="gcBytes"/> as the bytes.</summary>
    public RunFigures Since(double value, long gcBytes) => new()
    {
        Value = value,
        GcBytes = gcBytes,
        Gen0 = GC.CollectionCount(0) - Gen0,
        Gen1 = GC.CollectionCount(1) - Gen1,
        Gen2 = GC.CollectionCount(2) - Gen2,
    };

    /// <summary>Collections and this thread's bytes since this snapshot.</summary>
    public RunFigures Since(double value) => Since(value, GC.GetAllocatedBytesForCurrentThread() - ThreadBytes);
}

/// <summary>One peer in one case of a scenario: every run, then the median.</summary>
internal sealed class PeerResult(BenchPeer peer)
{
    public BenchPeer Peer { get; } = peer;

    /// <summary>Figures of each run, in run order (index = round).</summary>
    public List<RunFigures> Runs { get; } = [];

    public string? Failure { get; set; }

    public bool Ok => Failure is null;

    /// <summary>Median over the runs.</summary>
    public double Median => Statistics.Median(Runs.Select(r => r.Value));

    /// <summary>The run whose value is the (lower) median: where secondary figures are read.</summary>
    public RunFigures? MedianRun => Runs.Count == 0 ? null : Runs.OrderBy(r => r.Value).ElementAt((Runs.Count - 1) / 2);

    /// <summary>
    /// How many times better PageFrag's baseline row did than this row: the median over the runs of the
    /// ratio taken within each run (above 1: PageFrag better). 1 for the baseline itself; null when either
    /// side failed.
    /// </summary>
    public double? Advantage { get; set; }

    /// <summary>The most any run allocated on the GC heap, so that one allocating run cannot hide.</summary>
    public long GcBytes => Runs.Count == 0 ? 0 : Runs.Max(r => r.GcBytes);

    public int Gen0 => Runs.Count == 0 ? 0 : Runs.Max(r => r.Gen0);
    public int Gen1 => Runs.Count == 0 ? 0 : Runs.Max(r => r.Gen1);
    public int Gen2 => Runs.Count == 0 ? 0 : Runs.Max(r => r.Gen2);

    /// <summary>Pages leaked over every run (PageFrag rows), or null.</summary>
    public long? LeakedPages => Runs.Any(r => r.LeakedPages is not null) ? Runs.Sum(r => r.LeakedPages ?? 0) : null;
}

/// <summary>One case of a scenario (a size, or a release order) with its rows.</summary>
internal sealed class CaseResult(string name, int? size)
{
    public string Name { get; } = name;

    /// <summary>The buffer size of the case, or null when the case is not a size.</summary>
    public int? Size { get; } = size;

    public List<PeerResult> Rows { get; } = [];

    public PeerResult? Baseline => Rows.FirstOrDefault(r => r.Peer == BenchPeer.PageFrag);
}

/// <summary>The results of one scenario.</summary>
internal sealed class ScenarioResult(BenchScenario scenario, string unit, bool lowerIsBetter)
{
    public BenchScenario Scenario { get; } = scenario;

    /// <summary>Unit of <see cref="RunFigures.Value"/>.</summary>
    public string Unit { get; } = unit;

    public bool LowerIsBetter { get; } = lowerIsBetter;

    /// <summary>What the scenario ran: counts, window, definitions; printed above its table.</summary>
    public List<string> Notes { get; } = [];

    public List<CaseResult> Cases { get; } = [];

    /// <summary>Fills every row's <see cref="PeerResult.Advantage"/> from the runs it shares with the baseline.</summary>
    public void ComputeAdvantages()
    {
        foreach (CaseResult c in Cases)
        {
            PeerResult? baseline = c.Baseline;
            foreach (PeerResult row in c.Rows)
            {
                row.Advantage = null;
                if (baseline is null || !baseline.Ok || !row.Ok)
                {
                    continue;
                }

                int runs = Math.Min(baseline.Runs.Count, row.Runs.Count);
                var ratios = new List<double>(runs);
                for (int i = 0; i < runs; i++)
                {
                    double b = baseline.Runs[i].Value;
                    double p = row.Runs[i].Value;
                    if (b > 0 && p > 0)
                    {
                        ratios.Add(LowerIsBetter ? p / b : b / p);
                    }
                }

                row.Advantage = ratios.Count == 0 ? null : Statistics.Median(ratios);
            }
        }
    }
}

/// <summary>Whether PageFrag met one of the aims, as measured.</summary>
internal sealed record AimResult(BenchScenario Scenario, string Case, string Aim, bool Met, string Detail);

/// <summary>Everything one <c>pagefrag bench</c> run measured.</summary>
internal sealed class BenchReportData
{
    public required BenchOptions Options { get; init; }

    public List<ScenarioResult> Scenarios { get; } = [];

    public List<AimResult> Aims { get; } = [];

    public string? LoadBefore { get; init; }

    public string? LoadAfter { get; set; }

    public TimeSpan Elapsed { get; set; }

    public bool Ok => Scenarios.All(s => s.Cases.All(c => c.Rows.All(r => r.Ok && (r.LeakedPages ?? 0) == 0)));

    /// <summary>The first failure, for the exit message.</summary>
    public string? FirstFailure()
    {
        foreach (ScenarioResult s in Scenarios)
        {
            foreach (CaseResult c in s.Cases)
            {
                foreach (PeerResult r in c.Rows)
                {
                    if (!r.Ok)
                    {
                        return $"scenario {(int)s.Scenario}, {c.Name}, {BenchPeers.Name(r.Peer)}: {r.Failure}";
                    }

                    if ((r.LeakedPages ?? 0) != 0)
                    {
                        return $"scenario {(int)s.Scenario}, {c.Name}, {BenchPeers.Name(r.Peer)}: {r.LeakedPages} page(s) leaked.";
                    }
                }
            }
        }

        return null;
    }
}

internal static class Statistics
{
    public static double Median(IEnumerable<double> values)
    {
        double[] sorted = [.. values.Order()];
        if (sorted.Length == 0)
        {
            return double.NaN;
        }

        int mid = sorted.Length / 2;
        return sorted.Length % 2 == 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
    }

    /// <summary>The load average as /proc/loadavg gives it ("0.38 0.80 1.06"), or null off Linux.</summary>
    public static string? LoadAverage()
    {
        try
        {
            if (!File.Exists("/proc/loadavg"))
            {
                return null;
            }

            string[] parts = File.ReadAllText("/proc/loadavg").Split(' ', StringSplitOptions.RemoveEmptyEntries);
            return parts.Length >= 3 ? $"{parts[0]} {parts[1]} {parts[2]}" : null;
        }
        catch (IOException)
        {
            return null;
        }
    }

    public static double Seconds(long ticks) => (double)ticks / Stopwatch.Frequency;
}
