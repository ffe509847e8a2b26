using PageFrag.Cli.Bench;

namespace PageFrag.Tests.Bench;

/// <summary>The arithmetic behind the tables: medians, ratios taken within a run, and the aims' verdicts.</summary>
public class BenchResultsTests
{
    [Fact]
    public void The_ratio_to_PageFrag_is_the_median_of_the_ratios_taken_within_each_run()
    {
        // PageFrag and a peer both slow down in run 2 (a loaded machine): the ratio stays 2 in every run,
        // while the ratio of the medians (4 / 1.5) would not be.
        ScenarioResult s = Scenario(BenchScenario.SingleThread, lowerIsBetter: true,
            (BenchPeer.PageFrag, [1.0, 4.0, 1.5]),
            (BenchPeer.ArrayPool, [2.0, 8.0, 3.0]));

        s.ComputeAdvantages();

        Assert.Equal(1.0, s.Cases[0].Rows[0].Advantage);
        Assert.Equal(2.0, s.Cases[0].Rows[1].Advantage);
        Assert.Equal(1.5, s.Cases[0].Rows[0].Median);
        Assert.Equal(3.0, s.Cases[0].Rows[1].Median);
    }

    [Fact]
    public void When_higher_is_better_the_ratio_is_PageFrag_over_the_peer()
    {
        ScenarioResult s = Scenario(BenchScenario.PushPop, lowerIsBetter: false,
            (BenchPeer.PageFrag, [60.0]),
            (BenchPeer.ArrayPool, [1.5]),
            (BenchPeer.Gc, [64.0]));

        s.ComputeAdvantages();

        Assert.Equal(40.0, s.Cases[0].Rows[1].Advantage);
        Assert.Equal(60.0 / 64.0, s.Cases[0].Rows[2].Advantage);
    }

    [Fact]
    public void The_push_pop_aim_is_missed_by_the_one_peer_PageFrag_does_not_beat_tenfold_and_says_which()
    {
        var report = new BenchReportData { Options = new BenchOptions() };
        ScenarioResult s = Scenario(BenchScenario.PushPop, lowerIsBetter: false,
            (BenchPeer.PageFrag, [60.0]),
            (BenchPeer.PagePool, [1.0]),
            (BenchPeer.ArrayPool, [1.5]),
            (BenchPeer.Gc, [64.0]));
        s.ComputeAdvantages();
        report.Scenarios.Add(s);

        AimResult aim = Assert.Single(Aims.Evaluate(report));

        // The page pool is PageFrag's own row, so only the peers count: the weakest is new byte[].
        Assert.False(aim.Met);
        Assert.Equal("12 B", aim.Case);
        Assert.Contains("lowest 0.94x (gc)", aim.Detail);
    }

    [Theory]
    [InlineData("FIFO window", 1.04, 3.0, 1.6, true)]
    [InlineData("FIFO window", 1.06, 1.00, 1.6, false)]
    [InlineData("random release", 4.0, 1.07, 1.64, true)]
    [InlineData("random release", 1.5, 4.0, 1.64, true)]
    [InlineData("random release", 4.0, 1.65, 1.64, false)]
    [InlineData("random release", 4.0, 1.61, 1.7, false)]
    public void The_memory_aim_is_the_fifo_limit_for_the_cache_and_the_random_limit_below_every_pool_for_the_best_PageFrag_row(
        string caseName, double cache, double slab, double bestPool, bool met)
    {
        var report = new BenchReportData { Options = new BenchOptions() };
        var s = new ScenarioResult(BenchScenario.Memory, "unit", lowerIsBetter: true);
        var c = new CaseResult(caseName, null);
        foreach ((BenchPeer peer, double value) in ((BenchPeer, double)[])[(BenchPeer.PageFrag, cache), (BenchPeer.Slab, slab), (BenchPeer.ArrayPool, bestPool), (BenchPeer.DotNettyHeap, bestPool + 0.1), (BenchPeer.Native, 1.0)])
        {
            var row = new PeerResult(peer);
            row.Runs.Add(new RunFigures { Value = value, Gen0 = 2 });
            c.Rows.Add(row);
        }

        s.Cases.Add(c);
        s.ComputeAdvantages();
        report.Scenarios.Add(s);

        // Not judged against malloc or new byte[] (not pools), and the collections of arena growth are shown, not judged.
        AimResult aim = Assert.Single(Aims.Evaluate(report));
        Assert.Equal(caseName, aim.Case);
        Assert.True(met == aim.Met, aim.Detail);
        Assert.Contains("arraypool", aim.Detail, StringComparison.Ordinal);
    }

    [Fact]
    public void A_failed_peer_leaves_its_scenario_without_a_verdict_and_fails_the_report()
    {
        var report = new BenchReportData { Options = new BenchOptions() };
        ScenarioResult s = Scenario(BenchScenario.SingleThread, lowerIsBetter: true,
            (BenchPeer.PageFrag, [3.0]),
            (BenchPeer.Kestrel, [40.0]));
        s.Cases[0].Rows[1].Failure = "it broke";
        s.ComputeAdvantages();
        report.Scenarios.Add(s);

        Assert.Empty(Aims.Evaluate(report));
        Assert.False(report.Ok);
        Assert.Equal("scenario 2, 12 B, kestrel: it broke", report.FirstFailure());
    }

    [Fact]
    public void A_leaked_page_fails_the_report()
    {
        var report = new BenchReportData { Options = new BenchOptions() };
        ScenarioResult s = Scenario(BenchScenario.SingleThread, lowerIsBetter: true, (BenchPeer.PageFrag, [3.0]));
        s.Cases[0].Rows[0].Runs[0] = s.Cases[0].Rows[0].Runs[0] with { LeakedPages = 8 };
        report.Scenarios.Add(s);

        Assert.False(report.Ok);
        Assert.Equal("scenario 2, 12 B, pagefrag: 8 page(s) leaked.", report.FirstFailure());
    }

    [Fact]
    public void The_receive_mix_follows_the_IMIX_weights_and_is_the_same_for_every_peer()
    {
        int[] sizes = MemoryScenario.PacketSizes(121_000, seed: 7);

        Assert.Equal(sizes, MemoryScenario.PacketSizes(121_000, seed: 7));
        foreach ((int size, int weight) in MemoryScenario.Mix)
        {
            double expected = 121_000.0 * weight / 121;
            int count = sizes.Count(s => s == size);
            Assert.InRange(count, expected * 0.9, expected * 1.1);
        }

        Assert.All(sizes, s => Assert.Contains(s, MemoryScenario.Mix.Select(m => m.Size)));
    }

    [Fact]
    public void The_checksum_of_the_loops_counts_both_ends_of_every_buffer()
    {
        for (long ops = 0; ops < 1000; ops += 37)
        {
            long expected = 0;
            for (long i = 0; i < ops; i++)
            {
                expected += 2 * (byte)i;
            }

            Assert.Equal(expected, SingleThreadScenario.ExpectedChecksum(ops));
        }
    }

    [Fact]
    public void Managed_arrays_are_counted_at_their_size_on_the_GC_heap()
    {
        Assert.Equal(40, MemoryPeers.ArrayBytes(12));
        Assert.Equal(40, MemoryPeers.ArrayBytes(16));
        Assert.Equal(4120, MemoryPeers.ArrayBytes(4096));
        Assert.Equal(24, MemoryPeers.ArrayBytes(0));
    }

    private static ScenarioResult Scenario(BenchScenario scenario, bool lowerIsBetter, params (BenchPeer Peer, double[] Runs)[] rows)
    {
        var s = new ScenarioResult(scenario, "unit", lowerIsBetter);
        var c = new CaseResult("12 B", 12);
        foreach ((BenchPeer peer, double[] runs) in rows)
        {
            var row = new PeerResult(peer);
            row.Runs.AddRange(runs.Select(v => new RunFigures { Value = v }));
            c.Rows.Add(row);
        }

        s.Cases.Add(c);
        return s;
    }
}
