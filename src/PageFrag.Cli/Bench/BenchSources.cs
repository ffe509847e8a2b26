using System.Buffers;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using DotNetty.Buffers;
using PageFrag.Cli.FragTest;
using PageFrag.Frag;
using PageFrag.Pool;

namespace PageFrag.Cli.Bench;

/// <summary>
/// A peer as the bench's loops see it: the push/pop test's <see cref="IFragmentSource{T}"/> plus access to
/// the buffer's bytes, so that every loop writes and reads its buffers. Structs, so that each loop is
/// compiled once per peer with the calls inlined.
/// </summary>
internal interface IBenchSource<T> : IFragmentSource<T>
{
    /// <summary>The first <paramref name="length"/> bytes of <paramref name="item"/>.</summary>
    public Span<byte> GetSpan(T item, int length);
}

/// <summary>PageFrag's cache; the owner gives each fragment back with <see cref="PageFragCache.FreeLocal"/>.</summary>
internal readonly struct PageFragLocalSource(PageFragCache cache, int length) : IBenchSource<PageFragment>
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool TryAlloc(out PageFragment item) => cache.TryAlloc(length, out item);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Free(PageFragment item) => cache.FreeLocal(in item);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public Span<byte> GetSpan(PageFragment item, int length) => item.Span;
}

/// <summary>PageFrag's cache by address, as the kernel's API: <c>page_frag_alloc</c> gives a pointer, <c>page_frag_free(va)</c> takes it.</summary>
internal readonly unsafe struct PageFragAddressSource(PageFragCache cache, int length) : IBenchSource<nint>
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool TryAlloc(out nint item)
    {
        bool ok = cache.TryAlloc(length, out PageFragment fragment);
        item = fragment.Address;
        return ok;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Free(nint item) => PageFragCache.Free(item);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public Span<byte> GetSpan(nint item, int length) => new((void*)item, length);
}

/// <summary>PageFrag's cache freed with the any-thread <see cref="PageFragCache.Free(in PageFragment)"/> (one atomic decrement).</summary>
internal readonly struct PageFragAnySource(PageFragCache cache, int length) : IBenchSource<PageFragment>
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool TryAlloc(out PageFragment item) => cache.TryAlloc(length, out item);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Free(PageFragment item) => PageFragCache.Free(in item);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public Span<byte> GetSpan(PageFragment item, int length) => item.Span;
}

/// <summary>
/// PageFrag's page pool: <see cref="PagePool.TryAlloc"/> (a fragment, or a whole page above half a page) and
/// the any-thread <see cref="PagePool.Free"/>, which recycles straight into the cache on the owner thread and
/// through the ring elsewhere. The first allocation makes the calling thread the pool's owner (NAPI context),
/// as the thread that allocates changes between runs.
/// </summary>
internal struct PagePoolSource(PagePool pool, int length) : IBenchSource<PagePoolBuffer>
{
    private bool _owner;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool TryAlloc(out PagePoolBuffer item)
    {
        if (!_owner)
        {
            pool.SetOwnerThread();
            _owner = true;
        }

        return pool.TryAlloc(length, out item);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public readonly void Free(PagePoolBuffer item) => PagePool.Free(in item);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public readonly Span<byte> GetSpan(PagePoolBuffer item, int length) => item.Span;
}

/// <summary>PageFrag's slab cache: the owner allocates, any thread frees with <see cref="SlabCache.Free"/>.</summary>
internal readonly struct SlabBenchSource(SlabCache cache, int length) : IBenchSource<SlabFragment>
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool TryAlloc(out SlabFragment item) => cache.TryAlloc(length, out item);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Free(SlabFragment item) => SlabCache.Free(in item);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public Span<byte> GetSpan(SlabFragment item, int length) => item.Span;
}

/// <summary><c>ArrayPool&lt;byte&gt;.Shared</c>: Rent and Return.</summary>
internal readonly struct ArrayPoolBenchSource(int length) : IBenchSource<byte[]>
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool TryAlloc(out byte[] item)
    {
        item = ArrayPool<byte>.Shared.Rent(length);
        return true;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Free(byte[] item) => ArrayPool<byte>.Shared.Return(item);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public Span<byte> GetSpan(byte[] item, int length) => item.AsSpan(0, length);
}

/// <summary><c>new byte[]</c>; freeing is dropping the reference.</summary>
internal readonly struct GcBenchSource(int length) : IBenchSource<byte[]>
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

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public Span<byte> GetSpan(byte[] item, int length) => item.AsSpan(0, length);
}

/// <summary><c>NativeMemory.Alloc</c> / <c>Free</c>.</summary>
internal readonly unsafe struct NativeBenchSource(int length) : IBenchSource<nint>
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool TryAlloc(out nint item)
    {
        item = (nint)NativeMemory.Alloc((nuint)length);
        return item != 0;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Free(nint item) => NativeMemory.Free((void*)item);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public Span<byte> GetSpan(nint item, int length) => new((void*)item, length);
}

/// <summary>Kestrel's pool: <c>Rent</c> gives an <see cref="IMemoryOwner{T}"/> of one 4096-byte block; <c>Dispose</c> returns it.</summary>
internal readonly struct KestrelSource(MemoryPool<byte> pool, int length) : IBenchSource<IMemoryOwner<byte>>
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool TryAlloc(out IMemoryOwner<byte> item)
    {
        item = pool.Rent(length);
        return true;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Free(IMemoryOwner<byte> item) => item.Dispose();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public Span<byte> GetSpan(IMemoryOwner<byte> item, int length) => item.Memory.Span[..length];
}

/// <summary>DotNetty's pooled allocator: <c>HeapBuffer</c> or <c>DirectBuffer</c>, then <c>Release</c>.</summary>
internal readonly struct DotNettySource(PooledByteBufferAllocator allocator, bool direct, int length) : IBenchSource<IByteBuffer>
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool TryAlloc(out IByteBuffer item)
    {
        item = direct ? allocator.DirectBuffer(length) : allocator.HeapBuffer(length);
        return true;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public void Free(IByteBuffer item) => item.Release();

    // Both kinds are backed by (pinned, for direct) arrays in DotNetty for .NET.
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public Span<byte> GetSpan(IByteBuffer item, int length) => new(item.Array, item.ArrayOffset, length);
}
