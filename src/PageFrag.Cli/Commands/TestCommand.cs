using System.CommandLine;
using PageFrag.Cli.FragTest;
using PageFrag.Cli.Infrastructure;

namespace PageFrag.Cli.Commands;

/// <summary>
/// <c>pagefrag test</c>: the kernel's page_frag_test (tools/testing/selftests/mm/page_frag), a push thread
/// allocating fragments into a ring and a pop thread freeing them, over PageFrag or another allocator.
/// </summary>
internal static class TestCommand
{
    /// <summary>The command's definition; its action runs <see cref="Execute(TestOptions, CliIO)"/> with <paramref name="io"/>.</summary>
    public static Command Create(CliIO io)
    {
        var allocator = new Option<string>("--allocator")
        {
            Description = "Allocator under test; 'all' runs each and compares them with pagefrag.",
            DefaultValueFactory = _ => "pagefrag",
            HelpName = "pagefrag|arraypool|gc|native|all",
        };
        allocator.AcceptOnlyFromAmong(TestOptions.AllocatorNames);
        var allocLen = new Option<int>("--alloc-len")
        {
            Description = "Bytes per fragment, 1 to 4096 (the module's test_alloc_len).",
            DefaultValueFactory = _ => 12,
        };
        var nrTest = new Option<long>("--nr-test")
        {
            Description = "Fragments to push and free (the module's nr_test).",
            DefaultValueFactory = _ => 51_200_000,
        };
        var align = new Option<int>("--align")
        {
            Description = "Use the aligned API with this power-of-two alignment, up to 4096 (the module's test_align means 64).",
        };
        var prepare = new Option<bool>("--prepare")
        {
            Description = "Allocate with prepare + probe + commit, checking that probe agrees with prepare (pagefrag only).",
        };
        var ringSize = new Option<int>("--ring-size")
        {
            Description = $"Entries in the push/pop ring, a power of two from 2 to {TestOptions.MaxRingSize} (ptr_ring's limit).",
            DefaultValueFactory = _ => 512,
        };
        var pushCpu = new Option<int?>("--push-cpu")
        {
            Description = "Pin the push (allocating) thread to this CPU (Linux only).",
        };
        var popCpu = new Option<int?>("--pop-cpu")
        {
            Description = "Pin the pop (freeing) thread to this CPU (Linux only).",
        };
        var runs = new Option<int>("--runs")
        {
            Description = "Repeat the measurement and report the median time.",
            DefaultValueFactory = _ => 1,
        };
        var memoryLimit = new Option<long>("--memory-limit")
        {
            Description = "Bytes the run's private page allocator may hold, at least 32768 (pagefrag only). A small limit makes refills fail while fragments are in flight: the skip path.",
        };
        var json = new Option<bool>("--json")
        {
            Description = "Write exactly one JSON object on standard output instead of tables.",
        };

        var command = new Command("test", "Run the kernel's page_frag_test: one thread allocates fragments into a ring, another frees them.")
        {
            allocator, allocLen, nrTest, align, prepare, ringSize, pushCpu, popCpu, runs, memoryLimit, json,
        };
        command.SetAction(parse => Execute(
            new TestOptions
            {
                Allocator = TestOptions.ParseAllocator(parse.GetValue(allocator) ?? "pagefrag"),
                AllocLen = parse.GetValue(allocLen),
                NrTest = parse.GetValue(nrTest),
                Align = parse.GetValue(align),
                Prepare = parse.GetValue(prepare),
                RingSize = parse.GetValue(ringSize),
                PushCpu = parse.GetValue(pushCpu),
                PopCpu = parse.GetValue(popCpu),
                Runs = parse.GetValue(runs),
                MemoryLimit = parse.GetValue(memoryLimit),
                Json = parse.GetValue(json),
            },
            io));
        return command;
    }

    /// <summary>Validates, runs and reports; returns the process exit code (0 pass, 1 test failure, 2 bad usage).</summary>
    public static int Execute(TestOptions options, CliIO io) => Execute(options, io, out _);

    /// <summary>As <see cref="Execute(TestOptions, CliIO)"/>, and hands back the results for in-process callers.</summary>
    public static int Execute(TestOptions options, CliIO io, out IReadOnlyList<AllocatorResult> results)
    {
        results = [];
        if (options.Validate() is string problem)
        {
            return CliErrors.Report(io, "test", problem, ExitCodes.Usage, options.Json);
        }

        if ((options.PushCpu is not null || options.PopCpu is not null) && !ThreadAffinity.IsSupported)
        {
            io.Error.WriteLine("pagefrag test: warning: --push-cpu/--pop-cpu are ignored: pinning threads needs Linux (sched_setaffinity).");
        }

        bool tables = !options.Json;
        IRunMonitor monitor = tables && io.Interactive ? new ProgressMonitor(io.CreateAnsiConsole()) : SilentMonitor.Instance;
        results = FragTestRunner.Run(options, monitor);

        if (options.Json)
        {
            TestReport.WriteJson(options, results, io.Out);
        }
        else
        {
            TestReport.WriteTable(options, results, io.CreateAnsiConsole());
        }

        AllocatorResult? failed = results.FirstOrDefault(r => !r.Ok);
        if (failed is null)
        {
            return ExitCodes.Success;
        }

        io.Error.WriteLine($"pagefrag test: FAILED ({TestOptions.AllocatorName(failed.Allocator)}, {failed.Mode}): {failed.Failure}");
        return failed.UsageError ? ExitCodes.Usage : ExitCodes.Failure;
    }
}
