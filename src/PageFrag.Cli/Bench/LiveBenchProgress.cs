using PageFrag.Cli.FragTest;
using Spectre.Console;

namespace PageFrag.Cli.Bench;

/// <summary>
/// The terminal's progress display: one bar over all the measurements, and one for the current two-thread
/// run (fed by the coordinator thread from the rings' published counters, so the measured threads do no
/// extra work for it).
/// </summary>
internal sealed class LiveBenchProgress(ProgressContext context) : IBenchProgress, IRunMonitor
{
    private ProgressTask? _overall;
    private ProgressTask? _current;
    private bool _stepOpen;

    public IRunMonitor Monitor => this;

    public void Begin(int measurements) =>
        _overall = context.AddTask("pagefrag bench", autoStart: true, maxValue: Math.Max(1, measurements));

    public void Step(string label)
    {
        if (_overall is null)
        {
            return;
        }

        if (_stepOpen)
        {
            _overall.Increment(1);
        }

        _overall.Description = Markup.Escape(label);
        _stepOpen = true;
        context.Refresh();
    }

    public void Watch(string label, long total, RunPoller poll)
    {
        string description = Markup.Escape(label);
        _current ??= context.AddTask(description, autoStart: true);
        _current.Description = description;
        _current.MaxValue = Math.Max(1, total);
        _current.Value = 0;
        long done;
        while (poll(out done))
        {
            _current.Value = done;
        }

        _current.Value = done;
    }

    /// <summary>Marks the last measurement done.</summary>
    public void Finish()
    {
        if (_overall is not null)
        {
            _overall.Value = _overall.MaxValue;
        }

        if (_current is not null)
        {
            _current.Value = _current.MaxValue;
        }
    }
}
