using System.Text.Json;
using PageFrag.Cli;
using PageFrag.Cli.Commands;
using PageFrag.Cli.FragTest;
using PageFrag.Cli.Infrastructure;

namespace PageFrag.Tests.Cli;

public class TestCommandTests
{
    private const string Small = "200000";

    [Theory]
    [InlineData("pagefrag", new string[0], 0, false)]
    [InlineData("pagefrag", new[] { "--align", "64" }, 64, false)]
    [InlineData("pagefrag", new[] { "--prepare" }, 0, true)]
    [InlineData("pagefrag", new[] { "--prepare", "--align", "64" }, 64, true)]
    [InlineData("native", new string[0], 0, false)]
    [InlineData("native", new[] { "--align", "64" }, 64, false)]
    public void A_pagefrag_or_native_run_frees_every_fragment_and_allocates_nothing_on_the_GC_heap(string allocator, string[] mode, int align, bool prepare)
    {
        // The runtime can charge a thread a one-off few KB while a loop method moves through tiered PGO
        // (see Infrastructure/ZeroAlloc); a real allocation in the loops shows in every run, so one clean run
        // out of five is required.
        CliRun run = default!;
        JsonElement json = default;
        for (int attempt = 0; attempt < 5; attempt++)
        {
            run = CliRun.Of([.. (string[])["test", "--json", "--nr-test", Small, "--alloc-len", "75", "--allocator", allocator], .. mode]);
            Assert.True(run.ExitCode == ExitCodes.Success, run.Error);
            json = run.Json();
            if (json.GetProperty("gc_allocated_bytes").GetInt64() == 0)
            {
                break;
            }
        }

        AssertCommonFields(json, allocator, align, prepare);
        Assert.True(0 == json.GetProperty("gc_allocated_bytes").GetInt64(), run.Out);
        Assert.Equal(0, json.GetProperty("failed_allocs").GetInt64());
        if (allocator == "pagefrag")
        {
            Assert.Equal(0, json.GetProperty("leaked_pages").GetInt64());
            Assert.True(json.GetProperty("pages_allocated").GetInt64() > 0);
            Assert.True(json.GetProperty("pages_reused").GetInt64() >= 0);
        }
        else
        {
            Assert.Equal(JsonValueKind.Null, json.GetProperty("leaked_pages").ValueKind);
            Assert.Equal(JsonValueKind.Null, json.GetProperty("pages_allocated").ValueKind);
        }
    }

    [Theory]
    [InlineData("arraypool")]
    [InlineData("gc")]
    public void A_managed_allocator_run_pushes_and_frees_nr_test_arrays(string allocator)
    {
        CliRun run = CliRun.Of("test", "--json", "--nr-test", Small, "--allocator", allocator);

        Assert.True(run.ExitCode == ExitCodes.Success, run.Error);
        JsonElement json = run.Json();
        AssertCommonFields(json, allocator, 0, false);
        if (allocator == "gc")
        {
            // Every fragment is a new array: at least its 12 bytes each, whatever the object overhead.
            Assert.True(json.GetProperty("gc_allocated_bytes").GetInt64() >= 200_000 * 12);
        }
    }

    [Fact]
    public void The_all_allocator_runs_each_allocator_and_reports_its_speed_against_pagefrag_in_one_object()
    {
        CliRun run = CliRun.Of("test", "--json", "--nr-test", "100000", "--allocator", "all");

        Assert.True(run.ExitCode == ExitCodes.Success, run.Error);
        JsonElement json = run.Json();
        Assert.True(json.GetProperty("ok").GetBoolean());
        JsonElement[] results = [.. json.GetProperty("results").EnumerateArray()];
        Assert.Equal(["pagefrag", "arraypool", "gc", "native"], results.Select(r => r.GetProperty("allocator").GetString()));
        Assert.All(results, r => Assert.Equal(100_000, r.GetProperty("nr_test").GetInt64()));
        Assert.Equal(1.0, results[0].GetProperty("pagefrag_advantage").GetDouble());
        Assert.All(results, r => Assert.True(r.GetProperty("pagefrag_advantage").GetDouble() > 0));
    }

    [Fact]
    public void Repeated_runs_report_every_time_and_their_median()
    {
        CliRun run = CliRun.Of("test", "--json", "--nr-test", "50000", "--runs", "3");

        Assert.True(run.ExitCode == ExitCodes.Success, run.Error);
        JsonElement json = run.Json();
        double[] times = [.. json.GetProperty("elapsed_s_runs").EnumerateArray().Select(e => e.GetDouble())];
        Assert.Equal(3, times.Length);
        Assert.Equal(times.Order().ElementAt(1), json.GetProperty("elapsed_s").GetDouble());
        Assert.Equal(0, json.GetProperty("leaked_pages").GetInt64());
    }

    [Fact]
    public void Under_a_memory_limit_failed_allocations_are_skipped_and_counted_and_nr_test_fragments_still_go_through()
    {
        CliRun run = CliRun.Of("test", "--json", "--nr-test", "20000", "--alloc-len", "2048", "--memory-limit", "65536");

        Assert.True(run.ExitCode == ExitCodes.Success, run.Error);
        JsonElement json = run.Json();
        Assert.Equal(20_000, json.GetProperty("nr_test").GetInt64());
        Assert.True(json.GetProperty("failed_allocs").GetInt64() > 0);
        Assert.Equal(0, json.GetProperty("leaked_pages").GetInt64());
    }

    [Fact]
    public void The_watchdog_fails_the_run_when_the_push_thread_makes_no_progress()
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        var options = new TestOptions { NrTest = 1000, FailEvery = 1, Watchdog = TimeSpan.FromMilliseconds(300), WarmUp = false, Json = true };

        int code = TestCommand.Execute(options, new CliIO(stdout, stderr, Interactive: false), out IReadOnlyList<AllocatorResult> results);

        Assert.Equal(ExitCodes.Failure, code);
        Assert.Contains("watchdog: the push thread made no progress", stderr.ToString());
        AllocatorResult result = Assert.Single(results);
        Assert.False(result.Ok);
        Assert.True(result.FailedAllocs > 0);
        Assert.Equal(0, result.LeakedPages);
        using JsonDocument doc = JsonDocument.Parse(stdout.ToString());
        Assert.False(doc.RootElement.GetProperty("ok").GetBoolean());
        Assert.Contains("watchdog", doc.RootElement.GetProperty("error").GetString());
    }

    [Fact]
    public void Without_json_the_result_is_a_table_with_the_kernel_modules_timing_line()
    {
        CliRun run = CliRun.Of("test", "--nr-test", "100000", "--align", "64");

        Assert.True(run.ExitCode == ExitCodes.Success, run.Error);
        Assert.Contains("100000 of iterations for aligned testing took:", run.Out);
        Assert.Contains("PASS", run.Out);
        Assert.Contains("leaked pages", run.Out);
    }

    [Fact]
    public void Threads_pinned_to_an_existing_cpu_run_and_a_missing_cpu_is_a_usage_error()
    {
        if (!OperatingSystem.IsLinux())
        {
            return;
        }

        CliRun pinned = CliRun.Of("test", "--json", "--nr-test", "100000", "--push-cpu", "0", "--pop-cpu", "0");
        Assert.True(pinned.ExitCode == ExitCodes.Success, pinned.Error);
        Assert.Equal(0, pinned.Json().GetProperty("push_cpu").GetInt32());

        CliRun missing = CliRun.Of("test", "--json", "--nr-test", "1000", "--pop-cpu", "1000");
        Assert.Equal(ExitCodes.Usage, missing.ExitCode);
        Assert.Contains("cannot pin the pop thread to CPU 1000", missing.Error);
    }

    [Theory]
    [InlineData(new[] { "--alloc-len", "0" }, "--alloc-len must be from 1 to 4096 bytes (a page), got 0.")]
    [InlineData(new[] { "--alloc-len", "4097" }, "--alloc-len must be from 1 to 4096 bytes (a page), got 4097.")]
    [InlineData(new[] { "--nr-test", "0" }, "--nr-test must be positive, got 0.")]
    [InlineData(new[] { "--align", "3" }, "--align must be a power of two from 1 to 4096, got 3.")]
    [InlineData(new[] { "--align", "8192" }, "--align must be a power of two from 1 to 4096, got 8192.")]
    [InlineData(new[] { "--ring-size", "1" }, "--ring-size must be a power of two from 2 to 524288 (ptr_ring's limit, KMALLOC_MAX_SIZE / sizeof(void *)), got 1.")]
    [InlineData(new[] { "--ring-size", "500" }, "--ring-size must be a power of two from 2 to 524288 (ptr_ring's limit, KMALLOC_MAX_SIZE / sizeof(void *)), got 500.")]
    [InlineData(new[] { "--ring-size", "1073741824" }, "--ring-size must be a power of two from 2 to 524288 (ptr_ring's limit, KMALLOC_MAX_SIZE / sizeof(void *)), got 1073741824.")]
    [InlineData(new[] { "--ring-size", "1048576" }, "--ring-size must be a power of two from 2 to 524288")]
    [InlineData(new[] { "--runs", "0" }, "--runs must be positive, got 0.")]
    [InlineData(new[] { "--memory-limit", "4096" }, "--memory-limit must be 0 (none) or at least 32768 bytes (one 32 KiB page), got 4096.")]
    [InlineData(new[] { "--no-double-free-check" }, "unknown option '--no-double-free-check'")]
    [InlineData(new[] { "--prepare", "--allocator", "native" }, "--prepare uses PageFrag's prepare/probe/commit API, which --allocator native does not have.")]
    [InlineData(new[] { "--align", "64", "--allocator", "gc" }, "--align is not available with --allocator gc")]
    [InlineData(new[] { "--allocator", "slab" }, "'slab' is not one of pagefrag, arraypool, gc, native, all")]
    [InlineData(new[] { "--alloc-len", "twelve" }, "--alloc-len: 'twelve' is not a whole number")]
    [InlineData(new[] { "--runs", "abc" }, "--runs: 'abc' is not a whole number")]
    [InlineData(new[] { "--push-cpu", "x" }, "--push-cpu: 'x' is not a whole number")]
    [InlineData(new[] { "--no-such-option" }, "unknown option '--no-such-option'")]
    public void Bad_arguments_exit_with_code_2_say_what_is_wrong_and_print_one_JSON_error_object(string[] args, string message)
    {
        CliRun run = CliRun.Of([.. (string[])["test", "--json"], .. args]);

        Assert.Equal(ExitCodes.Usage, run.ExitCode);
        Assert.StartsWith("pagefrag test: ", run.Error, StringComparison.Ordinal);
        Assert.Contains(message, run.Error);
        Assert.Single(run.Error.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.DoesNotContain("System.", run.Error, StringComparison.Ordinal);
        JsonElement json = run.Json();
        Assert.False(json.GetProperty("ok").GetBoolean());
        Assert.Equal("test", json.GetProperty("command").GetString());
        Assert.Contains(message, json.GetProperty("error").GetString(), StringComparison.Ordinal);
        Assert.Equal(ExitCodes.Usage, json.GetProperty("exit_code").GetInt32());
    }

    [Fact]
    public void Without_json_a_bad_argument_writes_nothing_on_standard_output()
    {
        CliRun run = CliRun.Of("test", "--runs", "abc");

        Assert.Equal(ExitCodes.Usage, run.ExitCode);
        Assert.Equal("", run.Out);
        Assert.Equal($"pagefrag test: --runs: 'abc' is not a whole number (see 'pagefrag test --help'){Environment.NewLine}", run.Error);
    }

    [Fact]
    public void The_PASS_line_says_what_was_checked_and_shows_the_kernels_time_beside_ours()
    {
        CliRun run = CliRun.Of("test", "--nr-test", "100000");

        Assert.True(run.ExitCode == ExitCodes.Success, run.Error);
        string pass = run.Out.Split('\n').Single(l => l.StartsWith("PASS ", StringComparison.Ordinal));
        Assert.Contains("100,000 x 12 B allocated and freed across threads", pass, StringComparison.Ordinal);
        Assert.Contains("0 pages leaked", pass, StringComparison.Ordinal);
        Assert.Contains("GC", pass, StringComparison.Ordinal);
        Assert.Contains("0.935 s", pass, StringComparison.Ordinal);
    }

    [Fact]
    public void Help_lists_the_options_of_the_test_command()
    {
        CliRun run = CliRun.Of("test", "--help");

        Assert.Equal(ExitCodes.Success, run.ExitCode);
        Assert.Contains("--alloc-len", run.Out);
        Assert.Contains("--nr-test", run.Out);
        Assert.Contains("--allocator", run.Out);
    }

    private static void AssertCommonFields(JsonElement json, string allocator, int align, bool prepare)
    {
        Assert.Equal("test", json.GetProperty("command").GetString());
        Assert.True(json.GetProperty("ok").GetBoolean());
        Assert.Equal(allocator, json.GetProperty("allocator").GetString());
        Assert.Equal(200_000, json.GetProperty("nr_test").GetInt64());
        Assert.Equal(align, json.GetProperty("align").GetInt32());
        Assert.Equal(prepare, json.GetProperty("prepare").GetBoolean());
        Assert.Equal(512, json.GetProperty("ring_size").GetInt32());
        Assert.True(json.GetProperty("alloc_len").GetInt32() > 0);
        Assert.True(json.GetProperty("elapsed_s").GetDouble() > 0);
        Assert.True(json.GetProperty("mops").GetDouble() > 0);
        Assert.True(json.GetProperty("dropped").GetInt64() >= 0);
        JsonElement gcs = json.GetProperty("gc_collections");
        Assert.True(gcs.GetProperty("gen0").GetInt32() >= 0);
        Assert.True(gcs.GetProperty("gen1").GetInt32() >= 0);
        Assert.True(gcs.GetProperty("gen2").GetInt32() >= 0);
    }
}
