using System.Diagnostics;
using System.Globalization;
using PageFrag.Cli.FragTest;

namespace PageFrag.Cli.Bench;

/// <summary>Where the runner reports what it is doing; the progress display implements it.</summary>
internal interface IBenchProgress
{
    /// <summary>The monitor that long two-thread runs report to.</summary>
    public IRunMonitor Monitor { get; }

    /// <summary>Announces the measurements to come.</summary>
    public void Begin(int measurements);

    /// <summary>One measurement is about to start.</summary>
    public void Step(string label);
}

/// <summary>Shows nothing (JSON output, tests, redirected output).</summary>
internal sealed class SilentBenchProgress : IBenchProgress
{
    public static readonly SilentBenchProgress Instance = new();

    public IRunMonitor Monitor => SilentMonitor.Instance;

    public void Begin(int measurements)
    {
    }

    public void Step(string label)
    {
    }
}

/// <summary>
/// Runs the chosen scenarios. Within a scenario and case, the runs are taken in rounds: round 1 measures
/// every peer once, then round 2, and so on, so that each ratio to PageFrag compares figures taken a few
/// seconds apart, under the same load. Each peer is warmed up once before its first round.
/// </summary>
internal static class BenchRunner
{
    private static readonly TimeSpan s_childTimeout = TimeSpan.FromMinutes(10);
    private static readonly TimeSpan s_warmUpTime = TimeSpan.FromMilliseconds(500);

    public static BenchReportData Run(BenchOptions options, PeerResources peers, IBenchProgress progress)
    {
        var report = new BenchReportData { Options = options, LoadBefore = Statistics.LoadAverage() };
        long start = Stopwatch.GetTimestamp();
        progress.Begin(CountMeasurements(options));
        foreach (BenchScenario scenario in options.Scenarios)
        {
            ScenarioResult result = scenario switch
            {
                BenchScenario.PushPop => RunSized(scenario, "Mops/s", lowerIsBetter: false, options, progress,
                    (peer, size, ops, label) => PushPopScenario.Run(peer, size, ops, peers, progress.Monitor, label, options.Watchdog)),
                BenchScenario.SingleThread => RunSized(scenario, "ns per alloc+free", lowerIsBetter: true, options, progress,
                    (peer, size, ops, label) => SingleThreadScenario.Run(peer, size, ops, peers)),
                BenchScenario.BothWays => RunSized(scenario, "Mops/s", lowerIsBetter: false, options, progress,
                    (peer, size, ops, label) => BothWaysScenario.Run(peer, size, ops, peers, progress.Monitor, label, options.Watchdog)),
                BenchScenario.Writer => RunWriter(options, peers, progress),
                BenchScenario.Memory => RunMemory(options, peers, progress),
                _ => throw new ArgumentOutOfRangeException(nameof(options), scenario, null),
            };
            result.ComputeAdvantages();
            report.Scenarios.Add(result);
        }

        report.Aims.AddRange(Aims.Evaluate(report));
        report.LoadAfter = Statistics.LoadAverage();
        report.Elapsed = Stopwatch.GetElapsedTime(start);
        return report;
    }

    /// <summary>How many measurements the options ask for (warm-ups excluded), for the progress display.</summary>
    public static int CountMeasurements(BenchOptions options) => options.Scenarios.Sum(s => s switch
    {
        BenchScenario.Writer => options.PeersFor(s).Count,
        BenchScenario.Memory => options.PeersFor(s).Count * options.Orders.Count,
        _ => options.PeersFor(s).Count * options.SizesFor(s).Count,
    }) * options.Runs;

    private delegate RunFigures SizedMeasure(BenchPeer peer, int size, long ops, string label);

    private static ScenarioResult RunSized(BenchScenario scenario, string unit, bool lowerIsBetter, BenchOptions options, IBenchProgress progress, SizedMeasure measure)
    {
        var result = new ScenarioResult(scenario, unit, lowerIsBetter);
        string what = scenario switch
        {
            BenchScenario.PushPop => "fragments pushed and freed per run (ring of 512, the seed's drop rule)",
            BenchScenario.SingleThread => "alloc + touch + free pairs per run",
            _ => "buffers per thread per run (two rings of 512)",
        };
        result.Notes.Add(string.Create(CultureInfo.InvariantCulture, $"{options.Ops:N0} {what}; median of {options.Runs} run(s); each peer warmed up first with runs of {WarmUpOps(options.Ops):N0}{(options.Quick ? "" : " for at least 0.5 s")}."));
        IReadOnlyList<BenchPeer> peers = options.PeersFor(scenario);
        foreach (int size in options.SizesFor(scenario))
        {
            var c = new CaseResult($"{size} B", size);
            result.Cases.Add(c);
            foreach (BenchPeer peer in peers)
            {
                c.Rows.Add(new PeerResult(peer));
            }

            for (int round = 0; round <= options.Runs; round++)
            {
                foreach (PeerResult row in c.Rows.Where(r => r.Ok))
                {
                    bool warmUp = round == 0;
                    string label = $"{(int)scenario}. {BenchPeers.Name(row.Peer)} {size} B" + (warmUp ? " (warm-up)" : $" ({round}/{options.Runs})");
                    if (!warmUp)
                    {
                        progress.Step(label);
                    }

                    long count = warmUp ? WarmUpOps(options.Ops) : options.Ops;
                    Measure(row, warmUp, options.Quick, () => measure(row.Peer, size, count, label));
                }
            }
        }

        return result;
    }

    private static ScenarioResult RunWriter(BenchOptions options, PeerResources peers, IBenchProgress progress)
    {
        var result = new ScenarioResult(BenchScenario.Writer, "ns per message", lowerIsBetter: true);
        int[] sizes = WriterScenario.MessageSizes(options.Messages, options.Seed);
        long total = sizes.Sum(s => (long)s);
        result.Notes.Add(string.Create(CultureInfo.InvariantCulture,
            $"{options.Messages:N0} messages of {WriterScenario.MinMessage}-{WriterScenario.MaxMessage} B ({total:N0} B) per run, serialized, the sequence walked, then released; median of {options.Runs} run(s); each writer warmed up first{(options.Quick ? " with one run" : " for at least 0.5 s")}."));
        var c = new CaseResult($"{options.Messages:N0} messages", null);
        result.Cases.Add(c);
        var writers = new Dictionary<BenchPeer, WriterScenario.IWriterPeer>();
        try
        {
            foreach (BenchPeer peer in options.PeersFor(BenchScenario.Writer))
            {
                var row = new PeerResult(peer);
                c.Rows.Add(row);
                try
                {
                    writers[peer] = WriterScenario.Create(peer, peers);
                }
                catch (Exception e)
                {
                    row.Failure = Describe(e);
                }
            }

            for (int round = 0; round <= options.Runs; round++)
            {
                foreach (PeerResult row in c.Rows.Where(r => r.Ok))
                {
                    bool warmUp = round == 0;
                    if (!warmUp)
                    {
                        progress.Step($"4. {BenchPeers.Name(row.Peer)} ({round}/{options.Runs})");
                    }

                    Measure(row, warmUp, options.Quick, () => WriterScenario.Run(writers[row.Peer], sizes, total));
                }
            }
        }
        finally
        {
            foreach ((BenchPeer peer, WriterScenario.IWriterPeer writer) in writers)
            {
                writer.Dispose();
                PeerResult row = c.Rows.First(r => r.Peer == peer);
                if (writer.LeakedPages is long leaked && row.Runs.Count > 0)
                {
                    // The writer's pages are checked once, after its last run: the cache keeps its page in between.
                    row.Runs[^1] = row.Runs[^1] with { LeakedPages = leaked };
                }
            }
        }

        return result;
    }

    private static ScenarioResult RunMemory(BenchOptions options, PeerResources peers, IBenchProgress progress)
    {
        var result = new ScenarioResult(BenchScenario.Memory, "bytes kept per byte requested", lowerIsBetter: true);
        result.Notes.Add($"Mix: {MemoryScenario.MixDescription}.");
        result.Notes.Add(string.Create(CultureInfo.InvariantCulture,
            $"Window of {options.Window:N0} live buffers, renewed {options.Renewals} times over; kept/requested sampled after the first renewal, median of the samples; median of {options.Runs} run(s); {(options.InProcess ? "measured in this process (working sets are not isolated)" : "each peer and run in a child process of its own")}."));
        IReadOnlyList<BenchPeer> peerList = options.PeersFor(BenchScenario.Memory);
        foreach (ReleaseOrder order in options.Orders)
        {
            var c = new CaseResult(order == ReleaseOrder.Fifo ? "FIFO window" : "random release", null);
            result.Cases.Add(c);
            foreach (BenchPeer peer in peerList)
            {
                c.Rows.Add(new PeerResult(peer));
            }

            for (int round = 1; round <= options.Runs; round++)
            {
                foreach (PeerResult row in c.Rows.Where(r => r.Ok))
                {
                    progress.Step($"5. {BenchPeers.Name(row.Peer)} {MemoryScenario.OrderName(order)} ({round}/{options.Runs})");
                    Measure(row, warmUp: false, quick: true, () => options.InProcess
                        ? MemoryScenario.RunHere(row.Peer, order, options.Window, options.Renewals, options.Seed, peers, isolated: false)
                        : MemoryScenario.RunInChild(row.Peer, order, options.Window, options.Renewals, options.Seed, s_childTimeout));
                }
            }
        }

        return result;
    }

    /// <summary>
    /// Takes one measurement into <paramref name="row"/>, or records why it failed. A warm-up is repeated until
    /// it has run for <see cref="s_warmUpTime"/> (at most ten times, once with <paramref name="quick"/>): a
    /// peer's library code starts out in the JIT's quick tier and is recompiled optimized after about a
    /// hundred milliseconds of calls, and every peer must be measured in its optimized form.
    /// </summary>
    private static void Measure(PeerResult row, bool warmUp, bool quick, Func<RunFigures> measure)
    {
        long start = Stopwatch.GetTimestamp();
        int repetitions = 0;
        try
        {
            do
            {
                RunFigures figures = measure();
                if (!warmUp)
                {
                    row.Runs.Add(figures);
                    return;
                }

                if (figures.LeakedPages is > 0)
                {
                    row.Runs.Add(figures);
                    row.Failure = $"{figures.LeakedPages} page(s) leaked in the warm-up.";
                    return;
                }
            }
            while (!quick && ++repetitions < 10 && Stopwatch.GetElapsedTime(start) < s_warmUpTime);
        }
        catch (Exception e)
        {
            row.Failure = Describe(e);
        }
    }

    private static string Describe(Exception e) => e is BenchFailureException ? e.Message : $"{e.GetType().Name}: {e.Message}";

    private static long WarmUpOps(long ops) => Math.Min(ops, 200_000);
}
