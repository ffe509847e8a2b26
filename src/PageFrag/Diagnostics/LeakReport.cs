namespace PageFrag.Diagnostics;

/// <summary>A tracked buffer that was not given back, and where it was rented.</summary>
/// <param name="Length">The buffer's length in bytes.</param>
/// <param name="RentedAt">The stack trace of the <c>Rent</c> call.</param>
/// <param name="Collected">
/// True when the owner object was garbage collected without <c>Dispose</c>: the memory can never come
/// back. False for a buffer still referenced but not yet disposed (reported by
/// <see cref="DiagnosticMemoryPool.GetOutstanding"/>).
/// </param>
public sealed record LeakReport(int Length, string RentedAt, bool Collected)
{
    /// <inheritdoc/>
    public override string ToString() =>
        $"{(Collected ? "LEAK: a buffer was garbage collected without being disposed" : "A buffer is still rented")} ({Length} bytes). Rented at:{Environment.NewLine}{RentedAt}";
}
