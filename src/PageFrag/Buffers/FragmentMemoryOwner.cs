using System.Buffers;
using PageFrag.Frag;
using PageFrag.Pages;

namespace PageFrag.Buffers;

/// <summary>
/// A buffer rented from a <see cref="PageFragMemoryPool"/>: a fragment, or a dedicated page block. The
/// object is recycled by its CPU slot after <see cref="Dispose"/> (see the pool's remarks for what that
/// means for stale references).
/// </summary>
/// <remarks>Used by one renter at a time; <see cref="Dispose"/> may run on any thread.</remarks>
internal sealed class FragmentMemoryOwner : IMemoryOwner<byte>
{
    private readonly PageFragMemoryPool.CpuSlot _home;
    private PageFragment _fragment;
    private Page _block;

    public FragmentMemoryOwner(PageFragMemoryPool.CpuSlot home) => _home = home;

    /// <summary>The CPU slot that rented the buffer and takes it back.</summary>
    internal PageFragMemoryPool.CpuSlot Home => _home;

    /// <summary>The rented bytes, over the pinned backing array.</summary>
    /// <exception cref="ObjectDisposedException">The buffer was given back.</exception>
    public Memory<byte> Memory
    {
        get
        {
            if (!_fragment.IsEmpty)
            {
                return _fragment.Memory;
            }

            if (_block.IsEmpty)
            {
                BufferThrowHelper.Disposed(nameof(PageFragMemoryPool) + " buffer");
            }

            return _block.Memory;
        }
    }

    /// <summary>The memory the buffer keeps from reuse.</summary>
    internal int TrueSize => !_fragment.IsEmpty ? _fragment.TrueSize : _block.IsEmpty ? 0 : _block.Length;

    internal void SetFragment(in PageFragment fragment) => _fragment = fragment;

    internal void SetBlock(Page block) => _block = block;

    /// <summary>Gives the buffer back (any thread). A second call before the object is reused does nothing.</summary>
    public void Dispose()
    {
        PageFragment fragment = _fragment;
        if (!fragment.IsEmpty)
        {
            _fragment = default;
            _home.ReturnFragment(this, in fragment);
            return;
        }

        Page block = _block;
        if (block.IsEmpty)
        {
            return;
        }

        _block = default;
        block.Allocator.FreePages(block);
        _home.Returned(this, block.Length);
    }
}
