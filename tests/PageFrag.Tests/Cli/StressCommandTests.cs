using System.Text.Json;
using PageFrag.Cli;
using PageFrag.Cli.Commands;
using PageFrag.Cli.Infrastructure;
using PageFrag.Cli.Stress;

namespace PageFrag.Tests.Cli;

public class StressCommandTests
{
    [Fact]
    public void A_short_run_exercises_every_part_finds_no_violation_and_accounts_for_every_page()
    {
        CliRun run = CliRun.Of("stress", "--seconds", "2", "--threads", "4", "--seed", "7", "--json");

        Assert.True(run.ExitCode == ExitCodes.Success, run.Error + run.Out);
        JsonElement json = run.Json();
        Assert.Equal("stress", json.GetProperty("command").GetString());
        Assert.True(json.GetProperty("ok").GetBoolean());
        Assert.Equal(JsonValueKind.Null, json.GetProperty("error").ValueKind);
        Assert.Equal(7, json.GetProperty("seed").GetInt32());
        Assert.Equal(2, json.GetProperty("owners").GetInt32());
        Assert.Equal(2, json.GetProperty("freers").GetInt32());
        Assert.Equal(0, json.GetProperty("violation_count").GetInt32());
        Assert.Empty(json.GetProperty("violations").EnumerateArray());

        // Every part of the workload ran: cache, reserve cache, pool, writer, memory pool, frees on other threads.
        JsonElement ops = json.GetProperty("operations");
        foreach (string name in (string[])["cache_allocs", "cache_commits", "cache_coalesced", "cache_aborts", "cache_free_local",
                     "reserve_cache_allocs", "pool_allocs", "pool_puts_by_owner", "writer_messages", "memory_pool_rents", "freed_by_other_threads"])
        {
            Assert.True(ops.GetProperty(name).GetInt64() > 0, $"{name} is 0: {run.Out}");
        }

        Assert.True(json.GetProperty("checkpoints").GetInt64() >= 1, run.Out);
        JsonElement windows = json.GetProperty("fault_windows");
        long opened = windows.GetProperty("high_order_failing").GetInt64() + windows.GetProperty("every_allocation_failing").GetInt64() +
            windows.GetProperty("one_in_five_failing").GetInt64() + windows.GetProperty("only_reserve_left").GetInt64();
        Assert.True(opened >= 1, run.Out);
        Assert.True(windows.GetProperty("recoveries").GetInt64() >= 1, run.Out);

        JsonElement end = json.GetProperty("end");
        Assert.Equal(0, end.GetProperty("leaked_pages").GetInt64());
        Assert.True(end.GetProperty("consistent").GetBoolean());
        Assert.Equal(0, end.GetProperty("arenas_after_trim").GetInt32());
        Assert.Equal(end.GetProperty("pools").GetInt32(), end.GetProperty("pools_released").GetInt32());
    }

    [Fact]
    public void Without_json_the_result_is_a_table_that_says_pass()
    {
        CliRun run = CliRun.Of("stress", "--seconds", "1", "--threads", "2");

        Assert.True(run.ExitCode == ExitCodes.Success, run.Error + run.Out);
        Assert.Contains("pagefrag stress:", run.Out, StringComparison.Ordinal);
        Assert.Contains("leaked pages at the end", run.Out, StringComparison.Ordinal);
        Assert.Contains("PASS", run.Out, StringComparison.Ordinal);
    }

    [Fact]
    public void A_stamp_overwritten_while_the_fragment_is_out_is_reported_and_fails_the_run()
    {
        // The hook overwrites one byte of one fragment after it was stamped, as an overlapping allocation would.
        var options = new StressOptions { Seconds = 1, Threads = 2, Seed = 3, Json = true, CorruptStampAfter = 500 };

        (int code, StressResult result, JsonElement json, string error) = Run(options);

        Assert.Equal(ExitCodes.Failure, code);
        Assert.False(result.Ok);
        Assert.Equal(1, result.ViolationCount);
        string violation = Assert.Single(result.Violations);
        Assert.Contains("cache fragment", violation, StringComparison.Ordinal);
        Assert.Contains("overwritten", violation, StringComparison.Ordinal);
        Assert.False(json.GetProperty("ok").GetBoolean());
        Assert.Equal(violation, json.GetProperty("error").GetString());
        Assert.Contains("FAILED with 1 violation", error, StringComparison.Ordinal);

        // Only the stamp was broken: every page still came back.
        Assert.Equal(0, result.End!.PagesInUse);
    }

    [Fact]
    public void A_fragment_never_freed_is_reported_at_the_checkpoints_and_as_leaked_pages_at_the_end()
    {
        var options = new StressOptions { Seconds = 1.5, Threads = 2, Seed = 5, Json = true, LeakOneFragment = true, CheckpointInterval = TimeSpan.FromMilliseconds(400) };

        (int code, StressResult result, JsonElement json, _) = Run(options);

        Assert.Equal(ExitCodes.Failure, code);
        Assert.Contains(result.Violations, v => v.Contains("pages unaccounted for", StringComparison.Ordinal) || v.Contains("references beyond the cache's bias", StringComparison.Ordinal));
        Assert.Contains(result.Violations, v => v.StartsWith("end: 8 pages still in use", StringComparison.Ordinal) || v.StartsWith("end: 1 pages still in use", StringComparison.Ordinal));
        Assert.True(result.End!.PagesInUse > 0);
        Assert.True(json.GetProperty("end").GetProperty("leaked_pages").GetInt64() > 0);
    }

    [Theory]
    [InlineData(new[] { "--seconds", "0" }, "--seconds must be positive")]
    [InlineData(new[] { "--seconds", "-1" }, "--seconds must be positive")]
    [InlineData(new[] { "--threads", "1" }, "--threads must be from 2")]
    [InlineData(new[] { "--threads", "257" }, "--threads must be from 2")]
    public void Bad_options_exit_with_the_usage_code_and_say_why(string[] args, string message)
    {
        CliRun run = CliRun.Of(["stress", .. args]);

        Assert.Equal(ExitCodes.Usage, run.ExitCode);
        Assert.Contains(message, run.Error, StringComparison.Ordinal);
        Assert.Equal("", run.Out);
    }

    private static (int Code, StressResult Result, JsonElement Json, string Error) Run(StressOptions options)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int code = StressCommand.Execute(options, new CliIO(stdout, stderr, Interactive: false), out StressResult? result);
        using JsonDocument doc = JsonDocument.Parse(stdout.ToString());
        return (code, result!, doc.RootElement.Clone(), stderr.ToString());
    }
}
