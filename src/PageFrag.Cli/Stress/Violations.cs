using System.Collections.Concurrent;

namespace PageFrag.Cli.Stress;

/// <summary>
/// The invariant violations a run found, from any thread: all are counted, the first <see cref="Kept"/> are
/// kept with their message. One violation fails the run.
/// </summary>
internal sealed class Violations
{
    public const int Kept = 20;

    private readonly ConcurrentQueue<string> _messages = new();
    private int _count;

    public int Count => Volatile.Read(ref _count);

    public IReadOnlyList<string> Messages => [.. _messages];

    public string? First => _messages.TryPeek(out string? first) ? first : null;

    public void Report(string message)
    {
        if (Interlocked.Increment(ref _count) <= Kept)
        {
            _messages.Enqueue(message);
        }
    }
}
