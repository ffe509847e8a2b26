using System.CommandLine;
using PageFrag.Cli.Infrastructure;
using PageFrag.Cli.Stress;

namespace PageFrag.Cli.Commands;

/// <summary>
/// <c>pagefrag stress</c>: a mixed multi-threaded workload over the fragment cache, the page pool, the buffer
/// writer and the memory pool, with fault windows and trims, invariant checks while it runs, a full accounting of
/// every page at each checkpoint and at the end. Exits 1 on any violation.
/// </summary>
internal static class StressCommand
{
    /// <summary>The command's definition; its action runs <see cref="Execute(StressOptions, CliIO)"/> with <paramref name="io"/>.</summary>
    public static Command Create(CliIO io)
    {
        var seconds = new Option<double>("--seconds")
        {
            Description = "How long the workload runs before the final accounting.",
            DefaultValueFactory = _ => 10,
        };
        var threads = new Option<int>("--threads")
        {
            Description = "Worker threads, at least 2: half allocate (each owns a cache, a pool and a writer), the rest free.",
            DefaultValueFactory = _ => 4,
        };
        var seed = new Option<int?>("--seed")
        {
            Description = "Seed of the threads' random choices (reported in the output); random when absent.",
        };
        var json = new Option<bool>("--json")
        {
            Description = "Write exactly one JSON object on standard output instead of a table.",
        };

        var command = new Command("stress", "Run a mixed multi-threaded workload with fault injection and check every invariant and every page.")
        {
            seconds, threads, seed, json,
        };
        command.SetAction(parse => Execute(
            new StressOptions
            {
                Seconds = parse.GetValue(seconds),
                Threads = parse.GetValue(threads),
                Seed = parse.GetValue(seed),
                Json = parse.GetValue(json),
            },
            io));
        return command;
    }

    /// <summary>Validates, runs and reports; returns the process exit code (0 pass, 1 violation, 2 bad usage).</summary>
    public static int Execute(StressOptions options, CliIO io) => Execute(options, io, out _);

    /// <summary>As <see cref="Execute(StressOptions, CliIO)"/>, and hands back the result for in-process callers.</summary>
    public static int Execute(StressOptions options, CliIO io, out StressResult? result)
    {
        result = null;
        if (options.Validate() is string problem)
        {
            return CliErrors.Report(io, "stress", problem, ExitCodes.Usage, options.Json);
        }

        int seed = options.Seed ?? Random.Shared.Next();
        if (!options.Json && io.Interactive)
        {
            io.Error.WriteLine($"pagefrag stress: running for {options.Seconds} s with {options.Threads} threads (seed {seed})...");
        }

        result = new StressRun(options, seed).Execute();
        if (options.Json)
        {
            StressReport.WriteJson(result, io.Out);
        }
        else
        {
            StressReport.WriteTable(result, io.CreateAnsiConsole());
        }

        if (result.Ok)
        {
            return ExitCodes.Success;
        }

        io.Error.WriteLine($"pagefrag stress: FAILED with {result.ViolationCount} violation(s) (seed {seed}): {result.Violations.FirstOrDefault()}");
        return ExitCodes.Failure;
    }
}
