using System.Diagnostics;
using PageFrag.Cli.FragTest;

namespace PageFrag.Tests.Cli;

/// <summary>
/// <c>pagefrag test --allocator all</c> showed the same "dropped (ring full)" count for every allocator. It is a
/// real count, but on a machine without two free cores the push and pop threads take turns: the producer fills the
/// whole ring while the consumer is off the CPU, drops one fragment, and waits; the count is then nr_test / ring size
/// whatever the allocator (9,765 for 5,000,000 through 512 slots, for pagefrag, gc and native alike). The report
/// now says when that happened, and gives the share of the run the push thread waited for the consumer's frees.
/// </summary>
public class RingDropFigureTests
{
    private const long NrTest = 20_000;
    private const int RingSize = 64;

    [Theory]
    [InlineData(5_000_000, 9_765, 512, true)] // the figure seen for every allocator: one drop per 512 pushes
    [InlineData(2_000_000, 31_249, 64, true)]
    [InlineData(5_000_000, 9_000, 512, false)] // pops during the refills: the pushes per drop vary
    [InlineData(5_000_000, 19_531, 512, false)] // a much faster producer running together: half a ring per drop
    [InlineData(5_000_000, 0, 512, false)] // never full
    [InlineData(1_000, 3, 256, false)] // too few drops to tell
    public void A_run_whose_drops_each_follow_exactly_one_ring_of_pushes_is_reported_as_taking_turns(long pushed, long dropped, int ring, bool tookTurns) =>
        Assert.Equal(tookTurns, FragTestRunner.TookTurns(pushed, dropped, ring));

    [Fact]
    public void The_push_threads_waiting_share_is_its_waiting_time_over_the_run_and_never_above_one()
    {
        Assert.Equal(0.25, FragTestRunner.WaitShare(new RawRun { ElapsedTicks = 400, PushWaitTicks = 100 }));
        Assert.Equal(1.0, FragTestRunner.WaitShare(new RawRun { ElapsedTicks = 400, PushWaitTicks = 500 }));
        Assert.Equal(0.0, FragTestRunner.WaitShare(new RawRun { ElapsedTicks = 0, PushWaitTicks = 5 }));
    }

    [Fact]
    public void A_slow_consumer_makes_the_push_thread_drop_and_wait_and_the_figures_are_those_of_the_run()
    {
        RawRun r = Protocol.Run<nint, BusySource>(new BusySource(consumerNs: 2_000), new BusySource(consumerNs: 2_000),
            new ProtocolSettings(NrTest, RingSize, null, null, TimeSpan.FromSeconds(60), "ring drop figure"), SilentMonitor.Instance);

        Assert.Null(r.Failure);
        Assert.Equal(NrTest, r.Pushed);
        Assert.Equal(NrTest, r.Freed);

        // Each drop is followed by a wait for half the ring, so there are at most nr_test / (ring / 2) + 1 drops; a
        // consumer 2 us per free behind fills the ring again and again, and the push thread spends most of the run
        // waiting (measured, whether the threads ran together or took turns).
        Assert.InRange(r.Dropped, 1, NrTest / (RingSize / 2) + 1);
        Assert.InRange(r.PushWaitTicks, 1, r.ElapsedTicks);
        Assert.True(FragTestRunner.WaitShare(r) > 0.3, $"the push thread waited only {FragTestRunner.WaitShare(r):P0} of a run bound by the consumer");
    }

    /// <summary>An allocator whose free costs a known busy time.</summary>
    private readonly struct BusySource(int consumerNs) : IFragmentSource<nint>
    {
        public bool TryAlloc(out nint item)
        {
            item = 1;
            return true;
        }

        public void Free(nint item)
        {
            long end = Stopwatch.GetTimestamp() + (consumerNs * Stopwatch.Frequency / 1_000_000_000);
            while (Stopwatch.GetTimestamp() < end)
            {
            }
        }
    }
}
