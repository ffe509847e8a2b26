using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using PageFrag.Frag;

namespace PageFrag.Cli.FragTest;

/// <summary>
/// One allocator under test, as the two loops see it. Implementations are structs so that the generic
/// loops are compiled once per allocator with the calls inlined: no interface dispatch per item.
/// </summary>
/// <remarks>
/// The producer thread owns its copy (<see cref="TryAlloc"/> and <see cref="Free"/> of dropped items); the
/// consumer thread owns another copy and only calls <see cref="Free"/>, which must therefore be safe from
/// a thread other than the allocating one.
/// </remarks>
internal interface IFragmentSource<T>
{
    /// <summary>Allocates one fragment; false when the allocator failed (the kernel's NULL).</summary>
    public bool TryAlloc(out T item);

    /// <summary>Frees a fragment allocated by any copy of this source.</summary>
    public void Free(T item);
}

/// <summary><c>page_frag_alloc</c> + <c>page_frag_free(va)</c>: the address travels through the ring.</summary>
internal readonly struct PageFragSource(PageFragCache cache, int length) : IFragmentSource<nint>
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool TryAlloc(out nint item)
    {
        if (cache.TryAlloc(length, out PageFragment fragment))
        {
            item = fragment.Address;
            return true;
        }

        item = 0;
        return false;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Free(nint item) => PageFragCache.Free(item);
}

/// <summary><c>page_frag_alloc_align</c> + <c>page_frag_free(va)</c>.</summary>
internal readonly struct AlignedPageFragSource(PageFragCache cache, int length, int alignment) : IFragmentSource<nint>
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool TryAlloc(out nint item)
    {
        if (cache.TryAlloc(length, alignment, out PageFragment fragment))
        {
            item = fragment.Address;
            return true;
        }

        item = 0;
        return false;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Free(nint item) => PageFragCache.Free(item);
}

/// <summary>
/// The kernel test's prepare mode: prepare, probe right after (which must describe the same space, since
/// nothing moved in between), then commit exactly the requested length.
/// </summary>
internal readonly struct PreparePageFragSource(PageFragCache cache, int length, int alignment) : IFragmentSource<nint>
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool TryAlloc(out nint item)
    {
        if (!cache.TryPrepare(length, alignment, out PreparedFragment prepared))
        {
            item = 0;
            return false;
        }

        // The probe needs no refill (prepare just made room), so it must see exactly what prepare saw.
        if (!cache.TryProbe(length, alignment, out PreparedFragment probed) || probed.Address != prepared.Address)
        {
            ThrowWrongVa(prepared, probed);
        }

        if (probed.Offset != prepared.Offset || probed.Size != prepared.Size || probed.Page != prepared.Page)
        {
            ThrowWrongProbedInfo(prepared, probed);
        }

        PageFragment fragment = cache.Commit(prepared, length);
        item = fragment.Address;
        if (item != prepared.Address)
        {
            ThrowWrongVa(prepared, probed);
        }

        return true;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Free(nint item) => PageFragCache.Free(item);

    private static void ThrowWrongVa(in PreparedFragment prepared, in PreparedFragment probed) =>
        throw new FragTestFailureException(
            $"wrong va: prepare gave 0x{prepared.Address:x} but {(probed.IsEmpty ? "the probe failed" : $"probe gave 0x{probed.Address:x}")} (or commit moved the address).");

    private static void ThrowWrongProbedInfo(in PreparedFragment prepared, in PreparedFragment probed) =>
        throw new FragTestFailureException(
            $"wrong probed info: prepare saw offset {prepared.Offset} size {prepared.Size}, probe saw offset {probed.Offset} size {probed.Size}.");
}

/// <summary><c>ArrayPool&lt;byte&gt;.Shared</c>: Rent on the producer, Return on the consumer.</summary>
internal readonly struct ArrayPoolSource(int length) : IFragmentSource<byte[]>
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool TryAlloc(out byte[] item)
    {
        item = ArrayPool<byte>.Shared.Rent(length);
        return true;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Free(byte[] item) => ArrayPool<byte>.Shared.Return(item);
}

/// <summary><c>new byte[]</c>: the consumer just drops the reference and the GC reclaims it.</summary>
internal readonly struct GcSource(int length) : IFragmentSource<byte[]>
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool TryAlloc(out byte[] item)
    {
        item = new byte[length];
        return true;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Free(byte[] item)
    {
    }
}

/// <summary><c>NativeMemory.Alloc</c>/<c>Free</c> (malloc/free), or the aligned pair when an alignment is given.</summary>
internal readonly unsafe struct NativeSource(int length, int alignment) : IFragmentSource<nint>
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool TryAlloc(out nint item)
    {
        item = alignment == 0
            ? (nint)NativeMemory.Alloc((nuint)length)
            : (nint)NativeMemory.AlignedAlloc((nuint)length, (nuint)alignment);
        return item != 0;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Free(nint item)
    {
        if (alignment == 0)
        {
            NativeMemory.Free((void*)item);
        }
        else
        {
            NativeMemory.AlignedFree((void*)item);
        }
    }
}
