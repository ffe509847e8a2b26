using PageFrag.Frag;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;

namespace PageFrag.Tests.Frag;

/// <summary>Shared set-up and checks of the fragment cache tests.</summary>
internal static class FragKit
{
    /// <summary>An order-3 page: the size the cache prefers (PAGE_FRAG_CACHE_MAX_SIZE).</summary>
    public const int BigPage = 32768;

    /// <summary>The reference count a refill adds to a fresh page at once.</summary>
    public const int RefBias = 32768;

    /// <summary>A page's count right after a refill: the allocator's 1 plus the bias.</summary>
    public const int FreshRefCount = RefBias + 1;

    /// <summary>
    /// A private allocator whose first arena already exists, entirely free on the buddy lists.
    /// </summary>
    /// <remarks>
    /// The cache's order-3 attempt is <see cref="AllocFlags.Opportunistic"/>, which never grows arenas;
    /// the allocator creates its first arena up front. Taking and returning one page and draining the
    /// per-CPU lists leaves that arena as one free block on the buddy lists. 256 KiB arenas (eight order-3
    /// blocks) because a per-CPU list pulls up to four order-3 blocks at a time and the opportunistic
    /// attempt never drains another CPU's list: a test whose thread migrates between two CPUs still
    /// finds order-3 blocks on the buddy lists.
    /// </remarks>
    public static PageAllocator NewAllocator(int arenaSize = 256 * 1024, long maxBytes = long.MaxValue, long reserveBytes = 0)
    {
        PageAllocator allocator = Leaks.NewAllocator(arenaSize, maxBytes, reserveBytes);
        Assert.True(allocator.TryAllocPages(0, AllocFlags.None, out Page page));
        allocator.FreePages(page);
        allocator.DrainPerCpuLists();
        return allocator;
    }

    /// <summary>
    /// Checks a thrown exception: exactly <typeparamref name="TException"/>, a message that contains every
    /// <paramref name="messageParts"/>, and for argument exceptions the parameter's name.
    /// </summary>
    public static TException Throws<TException>(Action action, string? paramName, params string[] messageParts)
        where TException : Exception
    {
        TException e = Assert.Throws<TException>(action);
        foreach (string part in messageParts)
        {
            Assert.Contains(part, e.Message, StringComparison.Ordinal);
        }

        if (e is ArgumentException ae)
        {
            Assert.Equal(paramName, ae.ParamName);
        }
        else
        {
            Assert.Null(paramName);
        }

        return e;
    }

    /// <summary>Fills a fragment with a byte derived from <paramref name="seed"/>.</summary>
    public static void Fill(PageFragment fragment, int seed) => fragment.Span.Fill(Tag(seed));

    /// <summary>Checks that nobody wrote over a fragment filled by <see cref="Fill"/>.</summary>
    public static bool IsIntact(PageFragment fragment, int seed) => !fragment.Span.ContainsAnyExcept(Tag(seed));

    /// <summary>
    /// After bad input: the cache still hands out, writes and frees a fragment, and the page's reference
    /// count comes back to what it was.
    /// </summary>
    public static void AssertStillWorks(PageFragCache cache)
    {
        Assert.True(cache.TryAlloc(100, out PageFragment f));
        Page page = f.Page;
        int refCount = page.RefCount;
        Fill(f, 0x5A);
        Assert.True(IsIntact(f, 0x5A));
        f.Free();
        Assert.Equal(refCount - 1, page.RefCount);
    }

    /// <summary>Every test ends here: the cache gives its page back and no page is left in use.</summary>
    public static void DrainAndAssertNoLeak(PageFragCache cache, PageAllocator allocator)
    {
        cache.Drain();
        Assert.Equal(0, cache.CurrentPageSize);
        Leaks.AssertNone(allocator);
    }

    private static byte Tag(int seed) => (byte)(seed * 31 + 7);
}
