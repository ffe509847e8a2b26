using System.Diagnostics;
using PageFrag.Cli.FragTest;
using Spectre.Console;

namespace PageFrag.Cli.Infrastructure;

/// <summary>
/// Shows a progress bar for runs that last more than a second. It runs on the coordinator thread and
/// only reads the ring's published counters, so the two test threads do no extra work for it.
/// </summary>
internal sealed class ProgressMonitor(IAnsiConsole console) : IRunMonitor
{
    private static readonly TimeSpan s_quietPeriod = TimeSpan.FromSeconds(1);

    public void Watch(string label, long total, RunPoller poll)
    {
        long start = Stopwatch.GetTimestamp();
        while (Stopwatch.GetElapsedTime(start) < s_quietPeriod)
        {
            if (!poll(out _))
            {
                return;
            }
        }

        console.Progress()
            .AutoClear(true)
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn(), new SpinnerColumn())
            .Start(context =>
            {
                ProgressTask task = context.AddTask(Markup.Escape(label), autoStart: true, maxValue: total);
                long done;
                while (poll(out done))
                {
                    task.Value = done;
                }

                task.Value = done;
            });
    }
}
