using System.Collections.Concurrent;
using PageFrag.Buffers;
using PageFrag.Frag;
using PageFrag.Pool;

namespace PageFrag.Cli.Stress;

internal enum ItemKind : byte
{
    Fragment,
    PoolBuffer,
    PoolPage,
    Chain,
}

/// <summary>Something an owner hands to the freeing threads: a buffer, its stamp id, and what it came from.</summary>
internal readonly struct Item
{
    public readonly ItemKind Kind;
    public readonly long Id;
    public readonly PageFragment Fragment;
    public readonly PagePoolBuffer Buffer;
    public readonly NetMem Page;
    public readonly PagePool? Pool;
    public readonly FragmentChain? Chain;
    public readonly long Length;

    private Item(ItemKind kind, long id, PageFragment fragment, PagePoolBuffer buffer, NetMem page, PagePool? pool, FragmentChain? chain, long length)
    {
        Kind = kind;
        Id = id;
        Fragment = fragment;
        Buffer = buffer;
        Page = page;
        Pool = pool;
        Chain = chain;
        Length = length;
    }

    public static Item Of(in PageFragment fragment, long id) => new(ItemKind.Fragment, id, fragment, default, default, null, null, fragment.Length);

    public static Item Of(in PagePoolBuffer buffer, long id) => new(ItemKind.PoolBuffer, id, default, buffer, default, null, null, buffer.Length);

    public static Item Of(NetMem page, PagePool pool, long id) => new(ItemKind.PoolPage, id, default, default, page, pool, null, page.Length);

    public static Item Of(FragmentChain chain, long id, long length) => new(ItemKind.Chain, id, default, default, default, null, chain, length);

    public override string ToString() => Kind switch
    {
        ItemKind.Fragment => $"cache fragment {Fragment} (id {Id})",
        ItemKind.PoolBuffer => $"pool buffer {Buffer} (id {Id})",
        ItemKind.PoolPage => $"pool page {Page} (id {Id})",
        _ => $"writer chain of {Length} B (id {Id})",
    };
}

/// <summary>
/// One owner's hand-off to the freeing threads: a bounded multi-consumer queue. When it is full the owner
/// frees the item itself, as the kernel's page_frag_test does, so an owner never waits on a freer.
/// </summary>
internal sealed class HandoffQueue(int capacity)
{
    private readonly ConcurrentQueue<Item> _items = new();
    private int _count;

    public int Count => Volatile.Read(ref _count);

    public bool TryAdd(in Item item)
    {
        if (Interlocked.Increment(ref _count) > capacity)
        {
            Interlocked.Decrement(ref _count);
            return false;
        }

        _items.Enqueue(item);
        return true;
    }

    public bool TryTake(out Item item)
    {
        if (_items.TryDequeue(out item))
        {
            Interlocked.Decrement(ref _count);
            return true;
        }

        return false;
    }
}
