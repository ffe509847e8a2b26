using System.Diagnostics.Metrics;

namespace PageFrag.AspNetCore;

/// <summary>What Kestrel's four memory pool instruments report, read from a <see cref="PageFragMemoryPoolFactory"/>.</summary>
/// <param name="Pooled">Bytes held and available for reuse: the arenas' bytes minus those rented out.</param>
/// <param name="Allocated">Bytes taken from the garbage collector since creation (arenas created).</param>
/// <param name="Evicted">Bytes given back to the garbage collector since creation (arenas released by trimming).</param>
/// <param name="RentedByOwner">Bytes rented since creation, per pool owner (empty string: no owner).</param>
internal sealed record KestrelPoolFigures(long Pooled, long Allocated, long Evicted, IReadOnlyDictionary<string, long> RentedByOwner);

/// <summary>
/// Keeps Kestrel's dashboards working when PageFrag replaces its pool: the <c>Microsoft.AspNetCore.MemoryPool</c>
/// meter with Kestrel's four instruments (same names, units, meanings and owner tag), fed from PageFrag's
/// figures instead of Kestrel's <c>PinnedBlockMemoryPool</c>.
/// </summary>
/// <remarks>
/// <para>Kestrel's pool takes 4 KiB blocks from the garbage collector one at a time; PageFrag's factory takes
/// arenas (<see cref="Pages.PageAllocatorOptions.ArenaSize"/>) and recycles pages through its allocator. So
/// the factory as a whole is the pool in Kestrel's sense: <c>allocated</c> grows when an arena is created,
/// <c>evicted</c> when trimming releases one, <c>pooled</c> is what the arenas hold that is not rented out
/// (it includes free space on pages that still carry live fragments, reusable once those are freed), and
/// <c>rented</c> counts the true size of every rent (4096 for Kestrel's default rent, as Kestrel counts it),
/// one series per pool owner. For a sequence of 4 KiB rents that fills whole arenas, the four figures equal
/// Kestrel's own (a test checks it).</para>
/// <para>The instruments are observable (Kestrel's are push counters): nothing is counted on the rent and
/// return paths, the callbacks run only while a listener collects. Dashboards that sum or rate the series
/// see the same thing.</para>
/// </remarks>
internal sealed class KestrelMemoryPoolMetrics : IDisposable
{
    /// <summary>Kestrel's meter name.</summary>
    public const string MeterName = "Microsoft.AspNetCore.MemoryPool";

    /// <summary>Kestrel's owner tag.</summary>
    public const string OwnerTag = "aspnetcore.memory_pool.owner";

    private readonly Meter _meter;
    private readonly bool _ownsMeter;
    private readonly PageFragMemoryPoolFactory _factory;

    public KestrelMemoryPoolMetrics(PageFragMemoryPoolFactory factory, IMeterFactory? meterFactory)
    {
        _factory = factory;
        _ownsMeter = meterFactory is null;
        _meter = meterFactory?.Create(MeterName) ?? new Meter(MeterName);
        _meter.CreateObservableUpDownCounter("aspnetcore.memory_pool.pooled", () => Single(static f => f.Pooled), "By",
            "Number of bytes currently pooled and available for reuse.");
        _meter.CreateObservableCounter("aspnetcore.memory_pool.allocated", () => Single(static f => f.Allocated), "By",
            "Total number of bytes allocated by the memory pool. Allocation occurs when a memory rental request exceeds the available pooled memory.");
        _meter.CreateObservableCounter("aspnetcore.memory_pool.evicted", () => Single(static f => f.Evicted), "By",
            "Total number of bytes evicted from the memory pool. Eviction occurs when idle pooled memory is reclaimed. Evicted memory is available for garbage collection.");
        _meter.CreateObservableCounter("aspnetcore.memory_pool.rented", ObserveRented, "By",
            "Total number of bytes rented from the memory pool.");
    }

    /// <summary>The meter (to filter on in a <see cref="MeterListener"/>).</summary>
    public Meter Meter => _meter;

    public void Dispose()
    {
        if (_ownsMeter)
        {
            _meter.Dispose();
        }
    }

    private IEnumerable<Measurement<long>> Single(Func<KestrelPoolFigures, long> field)
    {
        KestrelPoolFigures? figures = _factory.GetKestrelFigures();
        return figures is null ? [] : [new Measurement<long>(field(figures))];
    }

    private IEnumerable<Measurement<long>> ObserveRented()
    {
        KestrelPoolFigures? figures = _factory.GetKestrelFigures();
        if (figures is null)
        {
            return [];
        }

        var measurements = new List<Measurement<long>>(figures.RentedByOwner.Count);
        foreach (KeyValuePair<string, long> entry in figures.RentedByOwner)
        {
            // As Kestrel: the tag only when the pool has an owner.
            measurements.Add(entry.Key.Length == 0
                ? new Measurement<long>(entry.Value)
                : new Measurement<long>(entry.Value, new KeyValuePair<string, object?>(OwnerTag, entry.Key)));
        }

        return measurements;
    }
}
