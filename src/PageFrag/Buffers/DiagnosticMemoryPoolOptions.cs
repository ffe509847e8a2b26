namespace PageFrag.Buffers;

/// <summary>Settings of a <see cref="DiagnosticMemoryPool"/>, checked when the decorator is created.</summary>
/// <remarks>
/// Defaults: freed buffers are poisoned with 0x6B and the last 64 are held in quarantine; the inner pool
/// is disposed with the decorator.
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

    internal void Validate()
    {
        if (QuarantineLength < 0 || QuarantineLength > 65536)
        {
            ThrowHelper.ArgumentOutOfRange(nameof(QuarantineLength), QuarantineLength, "QuarantineLength must be between 0 and 65536.");
        }
    }
}
