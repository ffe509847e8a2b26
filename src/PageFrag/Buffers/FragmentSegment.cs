using System.Buffers;
using System.Diagnostics;
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
/// Invariant: only the last segment of a chain may grow (coalescing), so <see cref="ReadOnlySequenceSegment{T}.RunningIndex"/>
/// of every segment stays exact once a successor is linked. Owned by the chain; reused after the chain
/// is disposed.
/// </remarks>
internal sealed class FragmentSegment : ReadOnlySequenceSegment<byte>
{
    // The fragment is a field so that PageFragCache.CommitNoRef can grow it in place (ref previous).
    internal PageFragment Fragment;
    internal Page Block;
    internal byte[]? PinnedArray;
    internal int Used;
    internal SegmentKind Kind;

    // A coalescing commit grew the fragment but Memory was not rebuilt yet: the chain rebuilds it once,
    // before anyone reads the segment (a sequence, the array segments, a successor), not per write.
    private bool _memoryStale;

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

    /// <summary>Room left after the written bytes (blocks and arrays only; fragments end where written).</summary>
    internal int Room => Kind switch
    {
        SegmentKind.Block => Block.Length - Used,
        SegmentKind.Array => PinnedArray!.Length - Used,
        _ => 0,
    };

    /// <summary>The unused tail of a block or array segment, for the next write.</summary>
    internal Memory<byte> Tail => Kind == SegmentKind.Block ? Block.Memory[Used..] : PinnedArray.AsMemory(Used);

    internal void SetFragment(in PageFragment fragment, long runningIndex)
    {
        Kind = SegmentKind.Fragment;
        Fragment = fragment;
        Used = fragment.Length;
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

    /// <summary>The fragment was extended in place by a coalescing commit.</summary>
    internal void FragmentGrew()
    {
        Debug.Assert(Next is null, "only the last segment of a chain grows");
        Used = Fragment.Length;
        _memoryStale = true;
    }

    /// <summary>Makes <see cref="ReadOnlySequenceSegment{T}.Memory"/> cover every byte written.</summary>
    internal void SyncMemory()
    {
        if (_memoryStale)
        {
            _memoryStale = false;
            Memory = Fragment.Memory;
        }
    }

    /// <summary><paramref name="count"/> more bytes of the block or array tail were written.</summary>
    internal void Grow(int count)
    {
        Debug.Assert(Next is null, "only the last segment of a chain grows");
        Debug.Assert(count <= Room);
        Used += count;
        Memory = Kind == SegmentKind.Block ? Block.Memory[..Used] : PinnedArray.AsMemory(0, Used);
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
                block.Allocator.FreePages(block);
                break;
        }
    }

    internal void Clear()
    {
        Kind = SegmentKind.None;
        Fragment = default;
        Block = default;
        PinnedArray = null;
        Used = 0;
        _memoryStale = false;
        Memory = default;
        Next = null;
        RunningIndex = 0;
    }

    private void Start(long runningIndex)
    {
        RunningIndex = runningIndex;
        Next = null;
        _memoryStale = false;
        Memory = Kind switch
        {
            SegmentKind.Fragment => Fragment.Memory,
            SegmentKind.Block => Block.Memory[..Used],
            _ => PinnedArray.AsMemory(0, Used),
        };
    }
}
