using System.Text.Json;
using PageFrag.Cli;
using PageFrag.Cli.Bench;
using PageFrag.Tests.Cli;

namespace PageFrag.Tests.Bench;

/// <summary>
/// <c>pagefrag bench --quick</c> in-process, one scenario at a time: the JSON shape, every peer measured,
/// every PageFrag row leak-free, the ratios and aims present. Figures are never asserted: they are
/// measurements, not behaviour.
/// </summary>
public class BenchCommandTests
{
    [Theory]
    [InlineData(1, new[] { "pagefrag", "pagefrag-slab", "pagepool", "arraypool", "kestrel", "dotnetty-heap", "dotnetty-direct", "gc", "native" }, new[] { "12 B", "2048 B" })]
    [InlineData(2, new[] { "pagefrag", "pagefrag-free", "pagepool", "arraypool", "kestrel", "dotnetty-heap", "dotnetty-direct", "gc", "native" }, new[] { "12 B", "256 B", "1500 B", "4096 B" })]
    [InlineData(3, new[] { "pagefrag", "pagefrag-free", "pagepool", "arraypool", "kestrel", "dotnetty-heap", "dotnetty-direct", "gc", "native" }, new[] { "12 B", "2048 B" })]
    [InlineData(4, new[] { "pagefrag", "arraybufferwriter", "rms", "pipe" }, new[] { "20,000 messages" })]
    [InlineData(5, new[] { "pagefrag", "pagefrag-slab", "pagepool", "arraypool", "kestrel", "dotnetty-heap", "dotnetty-direct", "gc", "native" }, new[] { "FIFO window", "random release" })]
    public void A_quick_run_of_each_scenario_measures_every_peer_in_every_case_and_PageFrag_leaks_nothing(int scenario, string[] peers, string[] cases)
    {
        CliRun run = CliRun.Of("bench", "--quick", "--json", "--scenario", scenario.ToString(System.Globalization.CultureInfo.InvariantCulture));

        Assert.True(run.ExitCode == ExitCodes.Success, run.Error + run.Out);
        JsonElement json = run.Json();
        Assert.Equal("bench", json.GetProperty("command").GetString());
        Assert.True(json.GetProperty("ok").GetBoolean());
        Assert.Equal(JsonValueKind.Null, json.GetProperty("error").ValueKind);
        Assert.True(json.GetProperty("quick").GetBoolean());
        Assert.Equal(1, json.GetProperty("runs").GetInt32());

        JsonElement s = Assert.Single(json.GetProperty("scenarios").EnumerateArray());
        Assert.Equal(scenario, s.GetProperty("scenario").GetInt32());
        Assert.False(string.IsNullOrEmpty(s.GetProperty("unit").GetString()));
        Assert.NotEmpty(s.GetProperty("notes").EnumerateArray());
        Assert.Equal(cases, s.GetProperty("cases").EnumerateArray().Select(c => c.GetProperty("case").GetString()));
        foreach (JsonElement c in s.GetProperty("cases").EnumerateArray())
        {
            JsonElement[] results = [.. c.GetProperty("results").EnumerateArray()];
            Assert.Equal(peers, results.Select(r => r.GetProperty("peer").GetString()));
            foreach (JsonElement r in results)
            {
                string peer = r.GetProperty("peer").GetString()!;
                Assert.True(r.GetProperty("ok").GetBoolean(), $"{peer}: {r.GetProperty("error")}");
                Assert.True(r.GetProperty("value").GetDouble() > 0, peer);
                Assert.Single(r.GetProperty("runs").EnumerateArray());
                Assert.True(r.GetProperty("pagefrag_advantage").GetDouble() > 0, peer);
                Assert.True(r.GetProperty("gc_allocated_bytes").GetInt64() >= 0, peer);
                Assert.True(r.GetProperty("gc_collections").GetProperty("gen0").GetInt32() >= 0, peer);
                Assert.Equal(peer.StartsWith("page", StringComparison.Ordinal), r.GetProperty("pagefrag").GetBoolean());
                if (r.GetProperty("pagefrag").GetBoolean())
                {
                    Assert.Equal(0, r.GetProperty("leaked_pages").GetInt64());
                }
                else
                {
                    Assert.Equal(JsonValueKind.Null, r.GetProperty("leaked_pages").ValueKind);
                }
            }

            Assert.Equal(1.0, results[0].GetProperty("pagefrag_advantage").GetDouble());
        }

        JsonElement[] aims = [.. json.GetProperty("aims").EnumerateArray()];
        if (scenario is 1 or 2 or 5)
        {
            // One verdict per case.
            Assert.Equal(cases, aims.Select(a => a.GetProperty("case").GetString()));
            foreach (JsonElement aim in aims)
            {
                Assert.Equal(scenario, aim.GetProperty("scenario").GetInt32());
                Assert.Contains(aim.GetProperty("met").ValueKind, new[] { JsonValueKind.True, JsonValueKind.False });
                Assert.False(string.IsNullOrEmpty(aim.GetProperty("detail").GetString()));
            }
        }
        else
        {
            Assert.Empty(aims);
        }
    }

    [Fact]
    public void The_memory_scenario_reports_kept_bytes_at_least_the_requested_ones_and_PageFrag_truesize()
    {
        CliRun run = CliRun.Of("bench", "--quick", "--json", "--scenario", "memory", "--in-process", "--peers", "arraypool,native", "--window", "500");

        Assert.True(run.ExitCode == ExitCodes.Success, run.Error);
        JsonElement s = Assert.Single(run.Json().GetProperty("scenarios").EnumerateArray());
        foreach (JsonElement c in s.GetProperty("cases").EnumerateArray())
        {
            JsonElement[] results = [.. c.GetProperty("results").EnumerateArray()];
            Assert.Equal(["pagefrag", "arraypool", "native"], results.Select(r => r.GetProperty("peer").GetString()));
            Assert.All(results, r => Assert.True(r.GetProperty("value").GetDouble() >= 1.0, r.ToString()));
            Assert.All(results, r => Assert.Equal(0, r.GetProperty("extra").GetProperty("isolated").GetDouble()));

            // A fragment's truesize is its length (no alignment asked): exactly the bytes requested.
            JsonElement pagefrag = results[0].GetProperty("extra");
            Assert.Equal(1.0, pagefrag.GetProperty("truesize_per_requested").GetDouble());
            Assert.True(pagefrag.GetProperty("peak_working_set_bytes").GetDouble() > 0);
        }
    }

    [Fact]
    public void A_child_measurement_writes_one_JSON_object_with_its_figures()
    {
        CliRun run = CliRun.Of("bench", "--child", "pagefrag", "--child-order", "random", "--window", "300", "--renewals", "2");

        Assert.True(run.ExitCode == ExitCodes.Success, run.Error);
        JsonElement json = run.Json();
        Assert.True(json.GetProperty("value").GetDouble() >= 1.0);
        Assert.Equal(0, json.GetProperty("leaked_pages").GetInt64());
        Assert.Equal(1, json.GetProperty("extra").GetProperty("isolated").GetDouble());
        Assert.True(json.GetProperty("extra").GetProperty("samples").GetDouble() > 0);
    }

    [Fact]
    public void Without_json_the_result_is_tables_with_the_baseline_the_aims_and_the_load()
    {
        CliRun run = CliRun.Of("bench", "--quick", "--scenario", "2", "--sizes", "64", "--peers", "arraypool");

        Assert.True(run.ExitCode == ExitCodes.Success, run.Error);
        Assert.Contains("2. One thread: alloc + touch + free", run.Out);
        Assert.Contains("PageFrag cache, FreeLocal", run.Out);
        Assert.Contains("(baseline)", run.Out);
        Assert.Contains("ArrayPool<byte>.Shared", run.Out);
        Assert.DoesNotContain("Kestrel", run.Out);
        Assert.Contains("load average", run.Out);
        Assert.Contains("Aims", run.Out);
    }

    [Fact]
    public void Runs_are_repeated_and_the_median_is_reported()
    {
        CliRun run = CliRun.Of("bench", "--quick", "--json", "--scenario", "2", "--sizes", "12", "--peers", "native", "--runs", "3");

        Assert.True(run.ExitCode == ExitCodes.Success, run.Error);
        JsonElement c = run.Json().GetProperty("scenarios")[0].GetProperty("cases")[0];
        foreach (JsonElement r in c.GetProperty("results").EnumerateArray())
        {
            double[] runs = [.. r.GetProperty("runs").EnumerateArray().Select(e => e.GetDouble())];
            Assert.Equal(3, runs.Length);
            Assert.Equal(runs.Order().ElementAt(1), r.GetProperty("value").GetDouble());
        }
    }

    [Theory]
    [InlineData(new[] { "--scenario", "6" }, "--scenario: unknown scenario '6'")]
    [InlineData(new[] { "--scenario", "speed" }, "--scenario: unknown scenario 'speed'")]
    [InlineData(new[] { "--runs", "0" }, "--runs must be positive, got 0.")]
    [InlineData(new[] { "--runs", "-2" }, "--runs must be positive, got -2.")]
    [InlineData(new[] { "--sizes", "-12" }, "--sizes must be from 1 to 4096 bytes (Kestrel's block and the page pool's page), got -12.")]
    [InlineData(new[] { "--sizes", "12,0" }, "--sizes must be from 1 to 4096 bytes (Kestrel's block and the page pool's page), got 0.")]
    [InlineData(new[] { "--sizes", "8192" }, "got 8192.")]
    [InlineData(new[] { "--sizes", "twelve" }, "--sizes: 'twelve' is not a whole number of bytes.")]
    [InlineData(new[] { "--ops", "0" }, "--ops must be positive, got 0.")]
    [InlineData(new[] { "--messages", "-1" }, "--messages must be positive, got -1.")]
    [InlineData(new[] { "--window", "0" }, "--window must be positive, got 0.")]
    [InlineData(new[] { "--peers", "slab" }, "--peers: unknown peer 'slab'")]
    [InlineData(new[] { "--child", "rms" }, "--child: 'rms' is not an allocator of scenario 5.")]
    [InlineData(new[] { "--runs", "three" }, "three")]
    [InlineData(new[] { "--no-such-option" }, "--no-such-option")]
    public void Bad_options_exit_with_code_2_and_say_what_is_wrong(string[] args, string message)
    {
        CliRun run = CliRun.Of([.. (string[])["bench", "--json", "--quick"], .. args]);

        Assert.Equal(ExitCodes.Usage, run.ExitCode);
        message = message.TrimEnd('.'); // the one error style ends the message with "(see 'pagefrag bench --help')"
        Assert.Contains(message, run.Error);
        JsonElement json = run.Json();
        Assert.False(json.GetProperty("ok").GetBoolean());
        Assert.Contains(message, json.GetProperty("error").GetString(), StringComparison.Ordinal);
    }

    [Fact]
    public void Help_lists_the_options_of_the_bench_command()
    {
        CliRun run = CliRun.Of("bench", "--help");

        Assert.Equal(ExitCodes.Success, run.ExitCode);
        foreach (string option in (string[])["--scenario", "--quick", "--runs", "--json", "--sizes", "--peers", "--window"])
        {
            Assert.Contains(option, run.Out);
        }

        Assert.DoesNotContain("--child", run.Out);
    }
}
