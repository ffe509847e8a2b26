using System.Diagnostics.Tracing;
using Microsoft.Extensions.Logging;

namespace PageFrag.AspNetCore;

/// <summary>
/// Forwards every event of the <c>PageFrag</c> event source (leaks reclaimed by the finalizer, stalled page
/// pool shutdowns, allocations refused by the memory limit) to an <see cref="ILogger"/>, with the event's
/// level, id, name and formatted message. Started and stopped by <see cref="PageFragHostedService"/>.
/// </summary>
/// <remarks>
/// An <see cref="EventListener"/> sees the events of the whole process, written on the thread that raised
/// them (a finalizer, a timer, a failing allocation); the logger must be thread-safe, as every
/// <see cref="ILogger"/> is. Events are enabled at <see cref="EventLevel.Informational"/>, so verbose
/// events, if any are added, stay off.
/// <para>A server at its memory limit can be refused thousands of blocks a second, so <c>LimitReached</c> is
/// logged at most once per <see cref="LimitReachedInterval"/>; the next line says how many were left out.
/// Leak and stall events are logged each time (the page pool already spaces its stall warnings).</para>
/// </remarks>
internal sealed class PageFragEventLogger : EventListener
{
    /// <summary>The event source's name (<c>PageFragEventSource.EventSourceName</c> in the core assembly).</summary>
    public const string EventSourceName = "PageFrag";

    // Assigned after the base constructor, which already reports the existing sources: events written in
    // between find it null and are skipped.
    private readonly ILogger? _logger;
    private readonly TimeProvider? _time;
    private long _nextLimitLog;
    private long _limitSuppressed;

    public PageFragEventLogger(ILogger logger, TimeProvider? timeProvider = null)
    {
        _time = timeProvider ?? TimeProvider.System;
        _logger = logger;
    }

    /// <summary>The shortest time between two logged <c>LimitReached</c> lines.</summary>
    public static TimeSpan LimitReachedInterval { get; } = TimeSpan.FromSeconds(1);

    protected override void OnEventSourceCreated(EventSource eventSource)
    {
        if (eventSource.Name == EventSourceName)
        {
            EnableEvents(eventSource, EventLevel.Informational);
        }
    }

    protected override void OnEventWritten(EventWrittenEventArgs eventData)
    {
        ILogger? logger = _logger;
        if (logger is null || eventData.EventSource.Name != EventSourceName)
        {
            return;
        }

        LogLevel level = eventData.Level switch
        {
            EventLevel.Critical => LogLevel.Critical,
            EventLevel.Error => LogLevel.Error,
            EventLevel.Warning => LogLevel.Warning,
            EventLevel.Informational or EventLevel.LogAlways => LogLevel.Information,
            _ => LogLevel.Debug,
        };
        if (!logger.IsEnabled(level))
        {
            return;
        }

        long suppressed = 0;
        if (eventData.EventId == LimitReachedId && !TryTakeLimitTurn(out suppressed))
        {
            return;
        }

        string message = eventData.Message is { } format && eventData.Payload is { } payload
            ? string.Format(System.Globalization.CultureInfo.InvariantCulture, format, [.. payload])
            : eventData.EventName ?? "PageFrag event";
        if (suppressed > 0)
        {
            message += $" ({suppressed} more refused since the previous line.)";
        }

#pragma warning disable CA1848, CA2254 // The template is the event's own message, already formatted; a source-generated delegate cannot carry it.
        logger.Log(level, new EventId(eventData.EventId, eventData.EventName), "{PageFragEvent}", message);
#pragma warning restore CA1848, CA2254
    }

    private const int LimitReachedId = 3;

    /// <summary>True when a LimitReached line may be written now; counts the ones that may not.</summary>
    private bool TryTakeLimitTurn(out long suppressed)
    {
        long now = _time!.GetTimestamp();
        long next = Interlocked.Read(ref _nextLimitLog);
        long interval = (long)(LimitReachedInterval.TotalSeconds * _time.TimestampFrequency);
        if (now < next || Interlocked.CompareExchange(ref _nextLimitLog, now + interval, next) != next)
        {
            Interlocked.Increment(ref _limitSuppressed);
            suppressed = 0;
            return false;
        }

        suppressed = Interlocked.Exchange(ref _limitSuppressed, 0);
        return true;
    }
}
