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
/// </remarks>
internal sealed class PageFragEventLogger : EventListener
{
    /// <summary>The event source's name (<c>PageFragEventSource.EventSourceName</c> in the core assembly).</summary>
    public const string EventSourceName = "PageFrag";

    // Assigned after the base constructor, which already reports the existing sources: events written in
    // between find it null and are skipped.
    private readonly ILogger? _logger;

    public PageFragEventLogger(ILogger logger)
    {
        _logger = logger;
    }

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

        string message = eventData.Message is { } format && eventData.Payload is { } payload
            ? string.Format(System.Globalization.CultureInfo.InvariantCulture, format, [.. payload])
            : eventData.EventName ?? "PageFrag event";
#pragma warning disable CA1848, CA2254 // The template is the event's own message, already formatted; a source-generated delegate cannot carry it.
        logger.Log(level, new EventId(eventData.EventId, eventData.EventName), "{PageFragEvent}", message);
#pragma warning restore CA1848, CA2254
    }
}
