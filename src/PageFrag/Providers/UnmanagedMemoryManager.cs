using System.Buffers;

namespace PageFrag.Providers;

/// <summary>
/// <see cref="Memory{T}"/> over memory the caller owns (a mapped view, native memory), so that provider memory
/// can be sliced as <c>Memory&lt;byte&gt;</c> without allocating per slice. Pinning is a no-op: the memory
/// does not move.
/// </summary>
internal sealed unsafe class UnmanagedMemoryManager : MemoryManager<byte>
{
    private readonly byte* _pointer;
    private readonly int _length;

    public UnmanagedMemoryManager(byte* pointer, int length)
    {
        _pointer = pointer;
        _length = length;
    }

    public override Span<byte> GetSpan() => new(_pointer, _length);

    public override MemoryHandle Pin(int elementIndex = 0)
    {
        if ((uint)elementIndex > (uint)_length)
        {
            throw new ArgumentOutOfRangeException(nameof(elementIndex));
        }

        return new MemoryHandle(_pointer + elementIndex);
    }

    public override void Unpin()
    {
    }

    protected override void Dispose(bool disposing)
    {
    }
}
