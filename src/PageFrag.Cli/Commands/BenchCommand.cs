using System.CommandLine;
using PageFrag.Cli.Bench;
using PageFrag.Cli.Infrastructure;
using Spectre.Console;

namespace PageFrag.Cli.Commands;

/// <summary>
/// <c>pagefrag bench</c>: PageFrag against every allocator a .NET developer would pick instead, in speed and in
/// memory, in five scenarios. Each figure is a median of several runs; each ratio to PageFrag is taken within
/// a run.
/// </summary>
internal static class BenchCommand
{
    /// <summary>The command's definition; its action runs <see cref="Execute(BenchOptions, CliIO)"/> with <paramref name="io"/>.</summary>
    public static Command Create(CliIO io)
    {
        var scenario = new Option<string[]>("--scenario")
        {
            Description = "Scenarios to run: 1 pushpop, 2 single, 3 bothways, 4 writer, 5 memory (numbers or names, comma-separated or repeated), or all.",
            DefaultValueFactory = _ => ["all"],
            HelpName = "1-5|name|all",
            AllowMultipleArgumentsPerToken = false,
        };
        var quick = new Option<bool>("--quick")
        {
            Description = "Small counts (a few seconds in all) and one run unless --runs says otherwise: for CI and tests, not for figures.",
        };
        var runs = new Option<int?>("--runs")
        {
            Description = $"Runs per figure; the median is shown (default {BenchOptions.DefaultRuns}, 1 with --quick).",
        };
        var sizes = new Option<string?>("--sizes")
        {
            Description = "Buffer sizes for scenarios 1-3, comma-separated, 1 to 4096 (default 12,2048 for 1 and 3; 12,256,1500,4096 for 2).",
            HelpName = "n,n,...",
        };
        var ops = new Option<long?>("--ops")
        {
            Description = $"Operations per run of scenarios 1-3 (default {BenchOptions.DefaultOps:N0}; {BenchOptions.QuickOps:N0} with --quick).",
        };
        var messages = new Option<int?>("--messages")
        {
            Description = $"Messages per run of scenario 4 (default {BenchOptions.DefaultMessages:N0}; {BenchOptions.QuickMessages:N0} with --quick).",
        };
        var window = new Option<int?>("--window")
        {
            Description = $"Live buffers in scenario 5's window (default {BenchOptions.DefaultWindow:N0}; {BenchOptions.QuickWindow:N0} with --quick).",
        };
        var renewals = new Option<int?>("--renewals")
        {
            Description = "Times scenario 5 renews the whole window once it is full (default 5; 2 with --quick).",
        };
        var peers = new Option<string?>("--peers")
        {
            Description = $"Peers to measure besides PageFrag's baseline, comma-separated: {string.Join(", ", BenchPeers.Names)}.",
            HelpName = "name,name,...",
        };
        var seed = new Option<int>("--seed")
        {
            Description = "Seed of the message and packet size sequences.",
            DefaultValueFactory = _ => 42,
        };
        var inProcess = new Option<bool>("--in-process")
        {
            Description = "Measure scenario 5 in this process instead of a child process per peer and run (working sets are then not isolated).",
        };
        var json = new Option<bool>("--json")
        {
            Description = "Write exactly one JSON object on standard output instead of tables.",
        };
        var child = new Option<string?>("--child") { Hidden = true };
        var childOrder = new Option<string?>("--child-order") { Hidden = true };

        var command = new Command("bench", "Compare PageFrag with ArrayPool, Kestrel's pool, DotNetty, RecyclableMemoryStream, new byte[] and NativeMemory, in speed and in memory.")
        {
            scenario, quick, runs, sizes, ops, messages, window, renewals, peers, seed, inProcess, json, child, childOrder,
        };
        command.SetAction(parse =>
        {
            bool isQuick = parse.GetValue(quick);
            bool asJson = parse.GetValue(json);
            if (!BenchOptions.TryParseScenarios(parse.GetValue(scenario) ?? ["all"], out List<BenchScenario> scenarios, out string? error))
            {
                return Usage(io, error!, asJson);
            }

            List<int>? sizeList = null;
            if (parse.GetValue(sizes) is string sizeText && !BenchOptions.TryParseSizes(sizeText, out sizeList, out error))
            {
                return Usage(io, error!, asJson);
            }

            HashSet<BenchPeer>? peerSet = null;
            if (parse.GetValue(peers) is string peerText)
            {
                peerSet = [];
                foreach (string name in peerText.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
                {
                    if (!BenchPeers.TryParse(name, out BenchPeer peer))
                    {
                        return Usage(io, $"--peers: unknown peer '{name}'; use {string.Join(", ", BenchPeers.Names)}.", asJson);
                    }

                    peerSet.Add(peer);
                }
            }

            var options = new BenchOptions
            {
                Scenarios = scenarios,
                Quick = isQuick,
                Runs = parse.GetValue(runs) ?? (isQuick ? 1 : BenchOptions.DefaultRuns),
                Sizes = sizeList,
                Ops = parse.GetValue(ops) ?? (isQuick ? BenchOptions.QuickOps : BenchOptions.DefaultOps),
                Messages = parse.GetValue(messages) ?? (isQuick ? BenchOptions.QuickMessages : BenchOptions.DefaultMessages),
                Window = parse.GetValue(window) ?? (isQuick ? BenchOptions.QuickWindow : BenchOptions.DefaultWindow),
                Renewals = parse.GetValue(renewals) ?? (isQuick ? 2 : 5),
                Peers = peerSet,
                Seed = parse.GetValue(seed),
                InProcess = parse.GetValue(inProcess),
                Json = parse.GetValue(json),
            };

            if (parse.GetValue(child) is string childPeer)
            {
                return ExecuteChild(options, childPeer, parse.GetValue(childOrder) ?? "fifo", io);
            }

            return Execute(options, io);
        });
        return command;
    }

    /// <summary>Validates, runs and reports; returns the process exit code (0 ran clean, 1 a measurement failed or leaked, 2 bad usage).</summary>
    public static int Execute(BenchOptions options, CliIO io) => Execute(options, io, out _);

    /// <summary>As <see cref="Execute(BenchOptions, CliIO)"/>, and hands back the results for in-process callers.</summary>
    public static int Execute(BenchOptions options, CliIO io, out BenchReportData? report)
    {
        report = null;
        if (options.Validate() is string problem)
        {
            return CliErrors.Report(io, "bench", $"{problem} (see 'pagefrag bench --help')", ExitCodes.Usage, options.Json);
        }

        using var peers = new PeerResources();
        if (!options.Json && io.Interactive)
        {
            BenchReportData? result = null;
            io.CreateAnsiConsole().Progress()
                .AutoClear(true)
                .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn(), new SpinnerColumn())
                .Start(context =>
                {
                    var live = new LiveBenchProgress(context);
                    result = BenchRunner.Run(options, peers, live);
                    live.Finish();
                });
            report = result!;
        }
        else
        {
            report = BenchRunner.Run(options, peers, SilentBenchProgress.Instance);
        }

        if (options.Json)
        {
            BenchReport.WriteJson(report, io.Out);
        }
        else
        {
            BenchReport.WriteTables(report, io.CreateAnsiConsole());
        }

        if (report.FirstFailure() is string failure)
        {
            io.Error.WriteLine($"pagefrag bench: FAILED: {failure}");
            return ExitCodes.Failure;
        }

        return ExitCodes.Success;
    }

    /// <summary>One measurement of scenario 5 for the parent process: its figures as one JSON object.</summary>
    private static int ExecuteChild(BenchOptions options, string peerName, string orderName, CliIO io)
    {
        if (options.Validate() is string problem)
        {
            return Usage(io, problem, options.Json);
        }

        if (!BenchPeers.TryParse(peerName, out BenchPeer peer) || !BenchPeers.For(BenchScenario.Memory).Contains(peer))
        {
            return Usage(io, $"--child: '{peerName}' is not an allocator of scenario 5.", options.Json);
        }

        if (!MemoryScenario.TryParseOrder(orderName, out ReleaseOrder order))
        {
            return Usage(io, $"--child-order: use fifo or random, not '{orderName}'.", options.Json);
        }

        using var peers = new PeerResources();
        try
        {
            RunFigures figures = MemoryScenario.RunHere(peer, order, options.Window, options.Renewals, options.Seed, peers, isolated: true);
            MemoryScenario.WriteFigures(figures, io.Out);
            return ExitCodes.Success;
        }
        catch (BenchFailureException e)
        {
            io.Error.WriteLine(e.Message);
            return ExitCodes.Failure;
        }
    }

    private static int Usage(CliIO io, string problem, bool json = false) =>
        CliErrors.Report(io, "bench", $"{problem} (see 'pagefrag bench --help')", ExitCodes.Usage, json);
}
