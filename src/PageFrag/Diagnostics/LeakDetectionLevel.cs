namespace PageFrag.Diagnostics;

/// <summary>
/// How closely a <see cref="DiagnosticMemoryPool"/> watches for buffers that are never given back, in the
/// spirit of Netty's leak detector levels.
/// </summary>
public enum LeakDetectionLevel
{
    /// <summary>No tracking (the default): no stack traces, no finalizers.</summary>
    Disabled,

    /// <summary>
    /// One rent in <see cref="DiagnosticMemoryPoolOptions.SamplingInterval"/> is tracked, with the stack
    /// trace of its rent: cheap enough to leave on in a staging environment, and a leak that happens often
    /// is caught soon.
    /// </summary>
    Sampled,

    /// <summary>Every rent is tracked with its stack trace: for tests and for hunting a known leak.</summary>
    Paranoid,
}
