using System.Buffers;
using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using PageFrag.Frag;
using PageFrag.Pages;

namespace PageFrag.Buffers;

/// <summary>What memory a <see cref="FragmentSegment"/> owns, and so how it is given back.</summary>
internal enum SegmentKind : byte
{
    None,

    /// <summary>A fragment of a <see cref="PageFragCache"/> page: one page reference, dropped by <see cref="PageFragCache.Free(in PageFragment)"/>.</summary>
    Fragment,

    /// <summary>A whole page block, for requests a fragment cannot serve; freed with <see cref="PageAllocator.FreePages"/>.</summary>
    Block,

    /// <summary>A pinned array for requests above the allocator's largest block; left to the garbage collector.</summary>
    Array,
}

/// <summary>
/// One link of a <see cref="FragmentChain"/>: the memory it owns and the written part of it as a
/// <see cref="ReadOnlySequenceSegment{T}"/>.
/// </summary>
/// <remarks>
/// <para>The segment's <see cref="ReadOnlySequenceSegment{T}.Memory"/> is made by its <see cref="SegmentMemory"/>
/// manager, which references the segment, which references its chain: a sequence (or any memory taken
/// from it) keeps the chain reachable, so the chain's finalizer never frees bytes that someone still holds.</para>
/// <para>Invariant: only the last segment of a chain may grow (the writer's open segment), so
/// <see cref="ReadOnlySequenceSegment{T}.RunningIndex"/> of every segment stays exact once a successor is linked.
/// <see cref="Used"/> never exceeds what the segment owns: a fragment the writer reserved ahead of its writes is
/// longer than the bytes written into it. Owned by the chain for its whole life; reused after the chain is disposed.</para>
/// </remarks>
internal sealed class FragmentSegment : ReadOnlySequenceSegment<byte>
{
    // The fragment is a field so that PageFragCache.TryCommitNoRef can grow it in place (ref previous).
    internal PageFragment Fragment;
    internal Page Block;
    internal byte[]? PinnedArray;
    internal int Used;
    internal SegmentKind Kind;

    // Used grew but Memory was not rebuilt yet: the chain rebuilds it once, before anyone reads the segment
    // (a sequence, the array segments, a successor), not per write.
    private bool _memoryStale;

    // Makes this segment's Memory: one per segment object, so a recycled segment allocates nothing.
    private readonly SegmentMemory _manager;

    internal FragmentSegment(FragmentChain chain)
    {
        Chain = chain;
        _manager = new SegmentMemory(this);
    }

    /// <summary>The chain the segment belongs to, kept reachable by the segment's memory.</summary>
    internal FragmentChain Chain { get; }

    /// <summary>The spare list of the owning chain while this segment is not in use.</summary>
    internal FragmentSegment? NextSpare;

    /// <summary>Bytes of memory this segment keeps from reuse: what socket accounting should charge.</summary>
    internal int TrueSize => Kind switch
    {
        SegmentKind.Fragment => Fragment.TrueSize,
        SegmentKind.Block => Block.Length,
        SegmentKind.Array => PinnedArray!.Length,
        _ => 0,
    };

    /// <summary>Bytes the segment owns, written or not: the fragment, the whole block or array.</summary>
    internal int Capacity => Kind switch
    {
        SegmentKind.Fragment => Fragment.Length,
        SegmentKind.Block => Block.Length,
        SegmentKind.Array => PinnedArray!.Length,
        _ => 0,
    };

    internal void SetFragment(in PageFragment fragment, int used, long runningIndex)
    {
        Debug.Assert(used <= fragment.Length);
        Kind = SegmentKind.Fragment;
        Fragment = fragment;
        Used = used;
        Start(runningIndex);
    }

    internal void SetBlock(Page block, int used, long runningIndex)
    {
        Kind = SegmentKind.Block;
        Block = block;
        Used = used;
        Start(runningIndex);
    }

    internal void SetArray(byte[] array, int used, long runningIndex)
    {
        Kind = SegmentKind.Array;
        PinnedArray = array;
        Used = used;
        Start(runningIndex);
    }

    /// <summary>The writer wrote up to <paramref name="used"/> bytes; <see cref="SyncMemory"/> makes Memory show them.</summary>
    internal void SetUsed(int used)
    {
        Debug.Assert(Next is null, "only the last segment of a chain grows");
        Debug.Assert(used >= Used && used <= Capacity, "the written part only grows, within what the segment owns");
        Used = used;
        _memoryStale = true;
    }

    /// <summary>Makes <see cref="ReadOnlySequenceSegment{T}.Memory"/> cover every byte written.</summary>
    internal void SyncMemory()
    {
        if (_memoryStale)
        {
            _memoryStale = false;
            Memory = _manager.Slice(0, Used);
        }
    }

    internal void Link(FragmentSegment next) => Next = next;

    /// <summary>Gives the memory back and clears the segment for reuse.</summary>
    internal void Release()
    {
        SegmentKind kind = Kind;
        PageFragment fragment = Fragment;
        Page block = Block;
        Clear();
        switch (kind)
        {
            case SegmentKind.Fragment:
                PageFragCache.Free(fragment);
                break;
            case SegmentKind.Block:
                // The writer's own reference (the block carries no PageFlags.Caller, so FreePages never takes it).
                PageAllocator.PutBlockRef(block.Arena!, block.Index);
                break;
        }
    }

    /// <summary>
    /// Empties the segment but keeps its fragment (still live, with its page reference) for the writer to write
    /// into again: the chain was disposed and goes back to its writer. The segment looks disposed meanwhile
    /// (<see cref="Kind"/> is <see cref="SegmentKind.None"/>, so a stale memory throws), until
    /// <see cref="SetFragment"/> reuses it.
    /// </summary>
    internal void Park()
    {
        Debug.Assert(Kind == SegmentKind.Fragment, "only a fragment is kept for reuse");
        PageFragment fragment = Fragment;
        Clear();
        Fragment = fragment;
    }

    /// <summary>Frees the fragment a parked segment kept and clears the segment.</summary>
    internal void ReleaseParked()
    {
        PageFragment fragment = Fragment;
        Fragment = default;
        PageFragCache.Free(fragment);
    }

    /// <summary>
    /// The order of <paramref name="fragment"/>'s page block when the fragment is still live (its page is in the
    /// generation the handle knows and its start still holds its live tag); -1 when someone freed it (by
    /// address, or a copy of the handle) behind its owner's back. Plain reads: the owner uses it to refuse to
    /// write into bytes that are no longer its own.
    /// </summary>
    internal static int LiveOrder(in PageFragment fragment)
    {
        Arena arena = fragment.Arena!;
        int offset = fragment.ArenaOffset;
        ref PageDescriptor d = ref arena.Pages[arena.Pages[offset >> PageConstants.PageShift].HeadIndex];
        bool live = Volatile.Read(ref d.Generation) == fragment.Generation && (d.Flags & PageFlags.Head) != 0 &&
            Arena.ReadSettled(arena.FragStates, Arena.StateIndex(arena.FragStates, offset)) == Arena.LiveTag(fragment.Generation, offset);
        return live ? d.Order : -1;
    }

    internal void Clear()
    {
        Kind = SegmentKind.None;
        Fragment = default;
        Block = default;
        PinnedArray = null;
        Used = 0;
        _memoryStale = false;
        Memory = _manager.Slice(0, 0); // a stale sequence reaches the manager, which refuses it while the segment is idle
        Next = null;
        RunningIndex = 0;
    }

    private void Start(long runningIndex)
    {
        RunningIndex = runningIndex;
        Next = null;
        _memoryStale = false;
        Memory = _manager.Slice(0, Used);
    }

    /// <summary>
    /// The memory manager of one segment: its memory references the segment (and so the chain). The bytes
    /// are those the segment owns now (the fragment as written so far, the whole block or array); after the
    /// chain is disposed a stale memory throws <see cref="ObjectDisposedException"/> until the segment is
    /// reused, then it sees the new owner's bytes, like any stale reference to a recycled buffer.
    /// </summary>
    private sealed class SegmentMemory : MemoryManager<byte>
    {
        private readonly FragmentSegment _segment;

        public SegmentMemory(FragmentSegment segment) => _segment = segment;

        public Memory<byte> Slice(int start, int length) => CreateMemory(start, length);

        public override Span<byte> GetSpan()
        {
            FragmentSegment s = _segment;
            switch (s.Kind)
            {
                case SegmentKind.Fragment:
                    return s.Fragment.Span;
                case SegmentKind.Block:
                    return s.Block.Span;
                case SegmentKind.Array:
                    return s.PinnedArray;
                default:
                    BufferThrowHelper.Disposed(nameof(FragmentChain));
                    return default;
            }
        }

        public override unsafe MemoryHandle Pin(int elementIndex = 0)
        {
            FragmentSegment s = _segment;
            int length = s.Kind switch
            {
                SegmentKind.Fragment => s.Fragment.Length,
                SegmentKind.Block => s.Block.Length,
                SegmentKind.Array => s.PinnedArray!.Length,
                _ => -1,
            };

            if (length < 0)
            {
                BufferThrowHelper.Disposed(nameof(FragmentChain));
            }

            if ((uint)elementIndex > (uint)length)
            {
                throw new ArgumentOutOfRangeException(nameof(elementIndex), elementIndex, $"The index must be between 0 and the segment's length ({length}).");
            }

            // Arenas and the large-write arrays are pinned for life: no handle, and the pinnable keeps the chain reachable.
            byte* start = s.Kind switch
            {
                SegmentKind.Fragment => (byte*)s.Fragment.Address,
                SegmentKind.Block => (byte*)s.Block.Address,
                _ => (byte*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(s.PinnedArray!)),
            };
            return new MemoryHandle(start + elementIndex, default, this);
        }

        public override void Unpin()
        {
        }

        protected override bool TryGetArray(out ArraySegment<byte> segment)
        {
            FragmentSegment s = _segment;
            switch (s.Kind)
            {
                case SegmentKind.Fragment:
                    segment = s.Fragment.ArraySegment;
                    return true;
                case SegmentKind.Block:
                    return MemoryMarshal.TryGetArray(s.Block.Memory, out segment);
                case SegmentKind.Array:
                    segment = new ArraySegment<byte>(s.PinnedArray!);
                    return true;
                default:
                    BufferThrowHelper.Disposed(nameof(FragmentChain));
                    segment = default;
                    return false;
            }
        }

        // Never called: the segment, not a Dispose on its memory, owns the bytes.
        protected override void Dispose(bool disposing)
        {
        }
    }
}
