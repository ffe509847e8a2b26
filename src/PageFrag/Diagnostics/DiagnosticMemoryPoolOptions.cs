namespace PageFrag.Diagnostics;

/// <summary>Settings of a <see cref="DiagnosticMemoryPool"/>, checked when the decorator is created.</summary>
/// <remarks>
/// Defaults: freed buffers are poisoned with 0x6B and the last 64 are held in quarantine; no leak
/// detection; the inner pool is disposed with the decorator.
/// </remarks>
public sealed class DiagnosticMemoryPoolOptions
{
    /// <summary>The default poison: 0x6B, the byte the kernel's slab debugging writes over freed objects (POISON_FREE).</summary>
    public const byte DefaultPoison = 0x6B;

    /// <summary>
    /// Whether a buffer's bytes are overwritten with <see cref="Poison"/> when it is given back, so that a
    /// reader that kept the memory sees obvious garbage and a writer is caught when the buffer leaves the
    /// quarantine. Default true.
    /// </summary>
    public bool PoisonFreedMemory { get; init; } = true;

    /// <summary>The byte freed buffers are filled with. Default <see cref="DefaultPoison"/>.</summary>
    public byte Poison { get; init; } = DefaultPoison;

    /// <summary>
    /// How many given-back buffers are held (poisoned) before they return to the inner pool; each is
    /// checked for writes after free on the way out. 0 returns buffers at once (no write detection).
    /// From 0 to 65536. Default 64.
    /// </summary>
    public int QuarantineLength { get; init; } = 64;

    /// <summary>Whether disposing the decorator disposes the inner pool. Default true.</summary>
    public bool DisposeInner { get; init; } = true;

    /// <summary>How buffers that are never given back are tracked. Default <see cref="LeakDetectionLevel.Disabled"/>.</summary>
    public LeakDetectionLevel LeakDetection { get; init; }

    /// <summary>
    /// With <see cref="LeakDetectionLevel.Sampled"/>, one rent in this many is tracked. At least 1.
    /// Default 128 (Netty's default sampling interval).
    /// </summary>
    public int SamplingInterval { get; init; } = 128;

    /// <summary>
    /// Called, on the finalizer thread, for each tracked buffer found garbage collected without having
    /// been disposed. Must not throw. Default none (leaks are still listed by
    /// <see cref="DiagnosticMemoryPool.GetLeaks"/>).
    /// </summary>
    public Action<LeakReport>? LeakDetected { get; init; }

    /// <summary>
    /// Whether a tracked buffer found garbage collected without <c>Dispose</c> is given back to the inner
    /// pool after it is reported, so that a long test run or a staging server does not bleed pages. Only
    /// safe when nothing still uses the memory through a <see cref="Memory{T}"/> taken from the lost
    /// owner. Default false (report only, as Netty does). Over a <see cref="Buffers.PageFragMemoryPool"/>
    /// the inner buffer is unreachable too once its decorator is, so its own finalizer gives it back in any
    /// case (and reports it as a <c>LeakReclaimed</c> event); this option then only makes it happen in the
    /// same collection.
    /// </summary>
    public bool ReclaimLeakedBuffers { get; init; }

    /// <summary>The default <see cref="GuardPattern"/>: 0xFD, the "no man's land" byte of the MSVC debug heap.</summary>
    public const byte DefaultGuardPattern = 0xFD;

    /// <summary>
    /// Bytes of guard zone after every buffer, checked at <c>Dispose</c>: a write past the end of the
    /// buffer throws <see cref="BufferOverrunException"/> there. Each rent asks the inner pool for this
    /// many bytes more (so <see cref="DiagnosticMemoryPool.MaxBufferSize"/> is that much smaller, and a
    /// <c>Rent(-1)</c> buffer that much shorter). From 0 (no guard) to 4096. Default 0.
    /// </summary>
    public int GuardBytes { get; init; }

    /// <summary>The byte the guard zone is filled with. Default <see cref="DefaultGuardPattern"/>.</summary>
    public byte GuardPattern { get; init; } = DefaultGuardPattern;

    internal void Validate()
    {
        if (GuardBytes < 0 || GuardBytes > 4096)
        {
            ThrowHelper.ArgumentOutOfRange(nameof(GuardBytes), GuardBytes, "GuardBytes must be between 0 and 4096.");
        }

        if (LeakDetection is < LeakDetectionLevel.Disabled or > LeakDetectionLevel.Paranoid)
        {
            ThrowHelper.ArgumentOutOfRange(nameof(LeakDetection), LeakDetection, "Unknown leak detection level.");
        }

        if (SamplingInterval < 1)
        {
            ThrowHelper.ArgumentOutOfRange(nameof(SamplingInterval), SamplingInterval, "SamplingInterval must be at least 1.");
        }

        if (QuarantineLength < 0 || QuarantineLength > 65536)
        {
            ThrowHelper.ArgumentOutOfRange(nameof(QuarantineLength), QuarantineLength, "QuarantineLength must be between 0 and 65536.");
        }
    }
}
