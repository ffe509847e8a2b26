using System.Numerics;
using PageFrag.Cli.Infrastructure;

namespace PageFrag.Cli.FragTest;

/// <summary>The allocators the test can drive.</summary>
internal enum AllocatorKind
{
    PageFrag,
    ArrayPool,
    Gc,
    Native,

    /// <summary>Every allocator above, one after the other, compared with PageFrag.</summary>
    All,
}

/// <summary>
/// The options of <c>pagefrag test</c>, with the kernel module's defaults where it has them
/// (page_frag_test: nr_test, test_alloc_len, test_align, test_push_cpu, test_pop_cpu, a ring of 512).
/// </summary>
/// <remarks>
/// Defaults: pagefrag, 12-byte fragments, 51,200,000 fragments (the cover letter's run), unaligned, no
/// prepare, ring of 512, no pinning, one run, a 10 s watchdog.
/// </remarks>
internal sealed record TestOptions
{
    public const int PageSize = 4096;

    /// <summary>
    /// The largest ring: ptr_ring_init refuses more than KMALLOC_MAX_SIZE / sizeof(void *) entries, 4 MiB / 8 =
    /// 524,288 with 4 KiB pages and MAX_PAGE_ORDER 10. A larger ring would only hold gigabytes for nothing.
    /// </summary>
    public const int MaxRingSize = 1 << 19;

    /// <summary>One order-3 page: the least a fragment cache can work with.</summary>
    public const long MinMemoryLimit = 32 * 1024;

    public AllocatorKind Allocator { get; init; } = AllocatorKind.PageFrag;

    public int AllocLen { get; init; } = 12;

    public long NrTest { get; init; } = 51_200_000;

    /// <summary>0: the unaligned API; otherwise the aligned API with this power-of-two alignment.</summary>
    public int Align { get; init; }

    /// <summary>Use prepare + probe + commit instead of alloc (PageFrag only).</summary>
    public bool Prepare { get; init; }

    public int RingSize { get; init; } = 512;

    public int? PushCpu { get; init; }

    public int? PopCpu { get; init; }

    public int Runs { get; init; } = 1;

    public bool Json { get; init; }

    /// <summary>
    /// Bytes the run's private page allocator may hold (PageFrag only; 0: no limit). A small limit makes
    /// refills fail while fragments are in flight, which exercises the kernel's skip of a failed allocation.
    /// </summary>
    public long MemoryLimit { get; init; }

    /// <summary>Make every n-th page allocation fail (PageFrag only; 0: never). Not on the command line: with
    /// the order-0 fallback after a failed order-3 attempt, only 1 (everything fails) makes a refill fail.</summary>
    public int FailEvery { get; init; }

    /// <summary>How long a side may make no progress before the run fails.</summary>
    public TimeSpan Watchdog { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>Run a short unmeasured round first so that the measured loops are compiled and warm.</summary>
    public bool WarmUp { get; init; } = true;

    /// <summary>The reason these options cannot run, or null when they can.</summary>
    public string? Validate()
    {
        if (AllocLen is <= 0 or > PageSize)
        {
            return $"--alloc-len must be from 1 to {PageSize} bytes (a page), got {AllocLen}.";
        }

        if (NrTest <= 0)
        {
            return $"--nr-test must be positive, got {NrTest}.";
        }

        if (Align != 0 && (Align < 0 || Align > PageSize || !BitOperations.IsPow2(Align)))
        {
            return $"--align must be a power of two from 1 to {PageSize}, got {Align}.";
        }

        if (RingSize < 2 || RingSize > MaxRingSize || !BitOperations.IsPow2(RingSize))
        {
            return $"--ring-size must be a power of two from 2 to {MaxRingSize} (ptr_ring's limit, KMALLOC_MAX_SIZE / sizeof(void *)), got {RingSize}.";
        }

        if (Runs <= 0)
        {
            return $"--runs must be positive, got {Runs}.";
        }

        if (FailEvery < 0)
        {
            return $"FailEvery must be 0 (never) or positive, got {FailEvery}.";
        }

        if (MemoryLimit != 0 && MemoryLimit < MinMemoryLimit)
        {
            return $"--memory-limit must be 0 (none) or at least {MinMemoryLimit} bytes (one 32 KiB page), got {MemoryLimit}.";
        }

        if (PushCpu is < 0 or > ThreadAffinity.MaxCpu || PopCpu is < 0 or > ThreadAffinity.MaxCpu)
        {
            return $"--push-cpu and --pop-cpu must be CPU numbers from 0 to {ThreadAffinity.MaxCpu}.";
        }

        if (Watchdog <= TimeSpan.Zero)
        {
            return "The watchdog time must be positive.";
        }

        string name = AllocatorName(Allocator);
        if (Prepare && Allocator is not (AllocatorKind.PageFrag or AllocatorKind.All))
        {
            return $"--prepare uses PageFrag's prepare/probe/commit API, which --allocator {name} does not have.";
        }

        if (Align != 0 && Allocator is AllocatorKind.ArrayPool or AllocatorKind.Gc)
        {
            return $"--align is not available with --allocator {name}: managed arrays cannot be aligned (and the GC may move them).";
        }

        if (MemoryLimit != 0 && Allocator is not (AllocatorKind.PageFrag or AllocatorKind.All))
        {
            return $"--memory-limit limits PageFrag's page allocator, not --allocator {name}.";
        }

        return null;
    }

    public static string AllocatorName(AllocatorKind kind) => kind switch
    {
        AllocatorKind.PageFrag => "pagefrag",
        AllocatorKind.ArrayPool => "arraypool",
        AllocatorKind.Gc => "gc",
        AllocatorKind.Native => "native",
        _ => "all",
    };

    public static readonly string[] AllocatorNames = ["pagefrag", "arraypool", "gc", "native", "all"];

    public static AllocatorKind ParseAllocator(string name) => name switch
    {
        "pagefrag" => AllocatorKind.PageFrag,
        "arraypool" => AllocatorKind.ArrayPool,
        "gc" => AllocatorKind.Gc,
        "native" => AllocatorKind.Native,
        "all" => AllocatorKind.All,
        _ => throw new ArgumentOutOfRangeException(nameof(name), name, $"Unknown allocator; use one of {string.Join(", ", AllocatorNames)}."),
    };
}
