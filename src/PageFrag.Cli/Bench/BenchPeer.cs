namespace PageFrag.Cli.Bench;

/// <summary>
/// An allocator <c>pagefrag bench</c> measures. Every peer is the real library a .NET developer would pick,
/// driven through its public API; none is a copy.
/// </summary>
internal enum BenchPeer
{
    /// <summary>PageFrag's fragment cache; the owner thread frees with <c>FreeLocal</c> where it can (scenario 2).</summary>
    PageFrag,

    /// <summary>The fragment cache freed with the any-thread <c>PageFragCache.Free</c> (scenario 2's second PageFrag row).</summary>
    PageFragFree,

    /// <summary>PageFrag's page pool (<c>PagePool.TryAlloc</c>: fragments, or whole pages above half a page).</summary>
    PagePool,

    /// <summary>PageFrag's slab cache (<c>SlabCache</c>: size classes, freed slots reused in place); scenarios 1 and 5.</summary>
    Slab,

    /// <summary><c>ArrayPool&lt;byte&gt;.Shared</c>.</summary>
    ArrayPool,

    /// <summary>Kestrel's <c>PinnedBlockMemoryPool</c>, from ASP.NET Core's <c>IMemoryPoolFactory&lt;byte&gt;</c>.</summary>
    Kestrel,

    /// <summary>DotNetty's <c>PooledByteBufferAllocator</c>, heap buffers.</summary>
    DotNettyHeap,

    /// <summary>DotNetty's <c>PooledByteBufferAllocator</c>, direct buffers.</summary>
    DotNettyDirect,

    /// <summary><c>new byte[]</c>: the garbage collector frees.</summary>
    Gc,

    /// <summary><c>NativeMemory.Alloc</c> / <c>Free</c> (the C runtime's malloc).</summary>
    Native,

    /// <summary>Scenario 4: <c>ArrayBufferWriter&lt;byte&gt;</c>.</summary>
    ArrayBufferWriter,

    /// <summary>Scenario 4: <c>Microsoft.IO.RecyclableMemoryStream</c> as an <c>IBufferWriter&lt;byte&gt;</c>.</summary>
    RecyclableMemoryStream,

    /// <summary>Scenario 4: a <c>System.IO.Pipelines.Pipe</c> with the default memory pool.</summary>
    Pipe,
}

/// <summary>Names and groupings of the peers.</summary>
internal static class BenchPeers
{
    /// <summary>The allocators of scenario 3, PageFrag's first (by address, then by handle).</summary>
    public static readonly BenchPeer[] Allocators =
    [
        BenchPeer.PageFrag, BenchPeer.PageFragFree, BenchPeer.PagePool, BenchPeer.ArrayPool, BenchPeer.Kestrel,
        BenchPeer.DotNettyHeap, BenchPeer.DotNettyDirect, BenchPeer.Gc, BenchPeer.Native,
    ];

    /// <summary>Scenarios 1 and 5 add the slab cache as a third PageFrag row.</summary>
    public static readonly BenchPeer[] WithSlab =
    [
        BenchPeer.PageFrag, BenchPeer.Slab, BenchPeer.PagePool, BenchPeer.ArrayPool, BenchPeer.Kestrel,
        BenchPeer.DotNettyHeap, BenchPeer.DotNettyDirect, BenchPeer.Gc, BenchPeer.Native,
    ];

    /// <summary>The peers that keep freed buffers for reuse (the pools PageFrag's memory aim is compared with).</summary>
    public static bool IsPooling(BenchPeer peer) => peer is BenchPeer.ArrayPool or BenchPeer.Kestrel or BenchPeer.DotNettyHeap or BenchPeer.DotNettyDirect;

    /// <summary>Scenario 2 adds the any-thread free as a second PageFrag row.</summary>
    public static readonly BenchPeer[] SingleThread =
    [
        BenchPeer.PageFrag, BenchPeer.PageFragFree, BenchPeer.PagePool, BenchPeer.ArrayPool, BenchPeer.Kestrel,
        BenchPeer.DotNettyHeap, BenchPeer.DotNettyDirect, BenchPeer.Gc, BenchPeer.Native,
    ];

    /// <summary>The writers of scenario 4; PageFrag's is <c>FragBufferWriter</c>.</summary>
    public static readonly BenchPeer[] Writers =
    [
        BenchPeer.PageFrag, BenchPeer.ArrayBufferWriter, BenchPeer.RecyclableMemoryStream, BenchPeer.Pipe,
    ];

    /// <summary>Every name <c>--peers</c> accepts.</summary>
    public static readonly string[] Names = [.. Enum.GetValues<BenchPeer>().Select(Name)];

    /// <summary>The name used on the command line and in JSON.</summary>
    public static string Name(BenchPeer peer) => peer switch
    {
        BenchPeer.PageFrag => "pagefrag",
        BenchPeer.PageFragFree => "pagefrag-free",
        BenchPeer.PagePool => "pagepool",
        BenchPeer.Slab => "pagefrag-slab",
        BenchPeer.ArrayPool => "arraypool",
        BenchPeer.Kestrel => "kestrel",
        BenchPeer.DotNettyHeap => "dotnetty-heap",
        BenchPeer.DotNettyDirect => "dotnetty-direct",
        BenchPeer.Gc => "gc",
        BenchPeer.Native => "native",
        BenchPeer.ArrayBufferWriter => "arraybufferwriter",
        BenchPeer.RecyclableMemoryStream => "rms",
        BenchPeer.Pipe => "pipe",
        _ => throw new ArgumentOutOfRangeException(nameof(peer), peer, null),
    };

    /// <summary>What the row measures, for tables.</summary>
    public static string Display(BenchPeer peer, BenchScenario scenario) => peer switch
    {
        BenchPeer.PageFrag when scenario == BenchScenario.Writer => "PageFrag FragBufferWriter",
        BenchPeer.PageFrag when scenario == BenchScenario.SingleThread => "PageFrag cache, FreeLocal",
        BenchPeer.PageFrag when scenario == BenchScenario.BothWays => "PageFrag cache, by address",
        BenchPeer.PageFrag => "PageFrag cache",
        BenchPeer.PageFragFree => "PageFrag cache, Free (any thread)",
        BenchPeer.PagePool => "PageFrag page pool",
        BenchPeer.Slab => "PageFrag slab cache",
        BenchPeer.ArrayPool => "ArrayPool<byte>.Shared",
        BenchPeer.Kestrel => "Kestrel PinnedBlockMemoryPool",
        BenchPeer.DotNettyHeap => "DotNetty pooled, heap",
        BenchPeer.DotNettyDirect => "DotNetty pooled, direct",
        BenchPeer.Gc => "new byte[]",
        BenchPeer.Native => "NativeMemory",
        BenchPeer.ArrayBufferWriter => "ArrayBufferWriter<byte>",
        BenchPeer.RecyclableMemoryStream => "RecyclableMemoryStream",
        BenchPeer.Pipe => "Pipe (default pool)",
        _ => throw new ArgumentOutOfRangeException(nameof(peer), peer, null),
    };

    public static bool TryParse(string name, out BenchPeer peer)
    {
        foreach (BenchPeer p in Enum.GetValues<BenchPeer>())
        {
            if (string.Equals(Name(p), name, StringComparison.OrdinalIgnoreCase))
            {
                peer = p;
                return true;
            }
        }

        peer = default;
        return false;
    }

    /// <summary>PageFrag's own rows: never counted among the peers an aim is checked against.</summary>
    public static bool IsPageFrag(BenchPeer peer) => peer is BenchPeer.PageFrag or BenchPeer.PageFragFree or BenchPeer.PagePool or BenchPeer.Slab;

    /// <summary>The peers of a scenario, in table order.</summary>
    public static BenchPeer[] For(BenchScenario scenario) => scenario switch
    {
        BenchScenario.SingleThread => SingleThread,
        BenchScenario.Writer => Writers,
        BenchScenario.PushPop or BenchScenario.Memory => WithSlab,
        _ => Allocators,
    };
}
