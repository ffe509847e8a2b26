using System.Buffers;
using System.Diagnostics;
using System.Runtime.CompilerServices;
using PageFrag.Frag;
using PageFrag.Pages;

namespace PageFrag.Buffers;

/// <summary>
/// A buffer rented from a <see cref="PageFragMemoryPool"/>: a fragment, or a dedicated page block. The
/// object is recycled by its CPU slot after <see cref="Dispose"/> (see the pool's remarks for what that
/// means for stale references).
/// </summary>
/// <remarks>
/// <para>Used by one renter at a time; <see cref="Dispose"/> may run on any thread, and two racing calls
/// are decided by one atomic exchange of the state: exactly one gives the memory back.</para>
/// <para>An owner that becomes unreachable while rented is reclaimed by its finalizer, which frees the
/// memory without stashing the object (no resurrection) and reports the leak. An owner whose finalizer
/// ran while it was not rented (the pool was collected, or a decorator's finalizer disposed it in the same
/// collection and the object went back to a stash) is re-registered for finalization when it is rented
/// again.</para>
/// </remarks>
internal sealed class FragmentMemoryOwner : IMemoryOwner<byte>
{
    private const int Idle = 0;
    private const int Rented = 1;

    private readonly PageFragMemoryPool.CpuSlot _home;
    private PageFragment _fragment;
    private Page _block;
    private int _trueSize;
    private int _state;
    private bool _finalized;
    private StackTrace? _rentedAt;

    public FragmentMemoryOwner(PageFragMemoryPool.CpuSlot home) => _home = home;

    /// <summary>The CPU slot that rented the buffer and takes it back.</summary>
    internal PageFragMemoryPool.CpuSlot Home => _home;

    /// <summary>The rented bytes, over the pinned backing array.</summary>
    /// <exception cref="ObjectDisposedException">The buffer was given back.</exception>
    public Memory<byte> Memory
    {
        get
        {
            if (Volatile.Read(ref _state) != Rented)
            {
                BufferThrowHelper.Disposed(nameof(PageFragMemoryPool) + " buffer");
            }

            return !_fragment.IsEmpty ? _fragment.Memory : _block.Memory;
        }
    }

    /// <summary>The memory the buffer keeps from reuse.</summary>
    internal int TrueSize => Volatile.Read(ref _state) == Rented ? _trueSize : 0;

    /// <summary>Makes the object a live rent of <paramref name="fragment"/> (under the slot's lock).</summary>
    internal void SetFragment(in PageFragment fragment)
    {
        // Idle owners hold neither a fragment nor a block (Dispose and the finalizer clear the one used).
        _fragment = fragment;
        Activate(fragment.TrueSize);
    }

    /// <summary>Makes the object a live rent of <paramref name="block"/> (under the slot's lock).</summary>
    internal void SetBlock(Page block)
    {
        _block = block;

        // Read now: once the block is freed its descriptor may describe a merged buddy.
        Activate(block.Length);
    }

    /// <summary>Gives the buffer back (any thread). One atomic exchange decides: a second call, racing or not, does nothing.</summary>
    public void Dispose()
    {
        if (Volatile.Read(ref _state) != Rented || Interlocked.Exchange(ref _state, Idle) != Rented)
        {
            return;
        }

        if (_rentedAt is not null)
        {
            _rentedAt = null;
        }

        PageFragment fragment = _fragment;
        if (!fragment.IsEmpty)
        {
            _fragment = default;
            _home.ReturnFragment(this, in fragment);
        }
        else
        {
            Page block = _block;
            _block = default;
            block.Allocator.FreePages(block);
            _home.Returned(this, _trueSize);
        }
    }

    /// <summary>Where the buffer was rented (detection mode only), reported if it leaks.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    internal void CaptureRentStack() => _rentedAt = new StackTrace(1, fNeedFileInfo: true);

    /// <summary>The object leaves the pool for good (a full stash): it has nothing left to reclaim.</summary>
    internal void Drop() => GC.SuppressFinalize(this);

    private void Activate(int trueSize)
    {
        _trueSize = trueSize;
        if (_finalized)
        {
            // Finalized while idle and then reached again through a stash: arm the safety net anew.
            _finalized = false;
            GC.ReRegisterForFinalize(this);
        }

        Volatile.Write(ref _state, Rented);
    }

    /// <summary>The renter forgot <see cref="Dispose"/>: give the memory back and report it, never stash the object.</summary>
    ~FragmentMemoryOwner()
    {
        if (Volatile.Read(ref _state) != Rented || Interlocked.Exchange(ref _state, Idle) != Rented)
        {
            _finalized = true;
            return;
        }

        _finalized = true;
        PageFragment fragment = _fragment;
        Page block = _block;
        _fragment = default;
        _block = default;
        try
        {
            _home.Reclaim(in fragment, block, _trueSize, _rentedAt);
        }
        catch (Exception e)
        {
            // An exception here would end the process; the memory is lost for good, which is what it was.
            Debug.WriteLine("Reclaiming a leaked PageFragMemoryPool buffer failed: " + e);
        }

        _rentedAt = null;
    }
}
