using System.Diagnostics.Metrics;
using System.Reflection;
using System.Runtime.InteropServices;
using Microsoft.Extensions.DependencyInjection;
using PageFrag.AspNetCore;
using PageFrag.Pages;
namespace PageFrag.Examples.Kestrel;
/// <summary>
/// <c>GET /stats</c> (only with the environment variable <c>PAGEFRAG_STATS=1</c>): the GC heap (per generation
/// after the last collection, and committed now), Kestrel's memory pool instruments (summed since start-up), the
/// page allocator's counters (pages in use, parked in recycle slots, on per-CPU lists, free), the pools' thread
/// slots, the descriptor arrays, and how much of the arenas and of their fragment-state bytes is resident now
/// (<c>mincore</c>, Linux). Reads private fields by reflection: a bench aid, not an API.
/// </summary>
internal static unsafe partial class DiagStats
{
    private static readonly Dictionary<string, long> s_kestrel = new();
    private static MeterListener? s_listener;

    /// <summary>Starts summing Kestrel's <c>Microsoft.AspNetCore.MemoryPool</c> instruments (call before the host builds its pools).</summary>
    public static void Start()
    {
        var listener = new MeterListener();
        listener.InstrumentPublished = (instrument, l) =>
        {
            if (instrument.Meter.Name == "Microsoft.AspNetCore.MemoryPool")
            {
                l.EnableMeasurementEvents(instrument);
            }
        };
        listener.SetMeasurementEventCallback<long>((instrument, value, _, _) =>
        {
            lock (s_kestrel)
            {
                // Observable instruments report totals (summed over owners in one Record pass); the others deltas.
                s_kestrel[instrument.Name] = s_kestrel.GetValueOrDefault(instrument.Name) + value;
            }
        });
        listener.Start();
        s_listener = listener;
    }

    [LibraryImport("libc")] private static partial int mincore(void* a, nuint l, byte* v);
    private static long Resident(nint start, long len)
    {
        nint first = start & ~(nint)4095; long n = (start + len - first + 4095) / 4096;
        var v = new byte[n]; fixed (byte* p = v) { if (mincore((void*)first, (nuint)(n * 4096), p) != 0) return -1; }
        long c = 0; foreach (byte b in v) c += b & 1; return c * 4096;
    }
    public static string Text(IServiceProvider sp)
    {
        var f = sp.GetService<PageFragMemoryPoolFactory>();
        var gi = GC.GetGCMemoryInfo();
        string s = $"gcHeap {gi.HeapSizeBytes>>10} KiB committed {gi.TotalCommittedBytes>>10} KiB totalMem {GC.GetTotalMemory(false)>>10} KiB gcs {GC.CollectionCount(0)}/{GC.CollectionCount(1)}/{GC.CollectionCount(2)} allocatedSinceStart {GC.GetTotalAllocatedBytes()>>10} KiB\n";
        var gens = gi.GenerationInfo;
        s += "afterLastGc KiB";
        string[] names = ["gen0", "gen1", "gen2", "loh", "poh"];
        for (int i = 0; i < gens.Length && i < names.Length; i++) s += $" {names[i]} {gens[i].SizeAfterBytes>>10}";
        s += "\n";
        if (s_listener is not null)
        {
            s_listener.RecordObservableInstruments();
            lock (s_kestrel)
            {
                s += "kestrelPool KiB";
                foreach (var kv in s_kestrel.OrderBy(k => k.Key)) s += $" {kv.Key.Replace("aspnetcore.memory_pool.", "")} {kv.Value>>10}";
                s += "\n";
                // Observable instruments report totals: reset so the next read is the total again.
                foreach (string k in s_kestrel.Keys.Where(k => f is not null).ToList()) s_kestrel[k] = 0;
            }
        }
        if (f == null) return s;
        var a = f.Allocator; var st = a.GetStats();
        int parked = (int)typeof(PageAllocator).GetProperty("RecycledBlocks", BindingFlags.NonPublic|BindingFlags.Instance)!.GetValue(a)!;
        long parkedPages = (long)parked << 3;
        s += $"arenas {st.Arenas} total {st.TotalPages} free {st.FreePages} cached {st.CachedPages} (parked {parkedPages}, perCpu+transfer {st.CachedPages - parkedPages}) inuse {st.PagesInUse} discarded {a.BytesDiscarded>>10} KiB\n";
        int slots = 0, pools = 0;
        foreach (var p in f.Pools) { pools++; slots += (int)p.GetType().GetProperty("SlotCount", BindingFlags.NonPublic|BindingFlags.Instance)!.GetValue(p)!; }
        s += $"pools {pools} threadSlots {slots}\n";
        var arenas = (Array)typeof(PageAllocator).GetField("_arenas", BindingFlags.NonPublic|BindingFlags.Instance)!.GetValue(a)!;
        long ra=0, rs=0, sz=0, descs=0, descBytes=0;
        foreach (object ar in arenas)
        {
            var t = ar.GetType();
            nint b = (nint)t.GetField("BaseAddress")!.GetValue(ar)!; int len = (int)t.GetField("ByteLength")!.GetValue(ar)!;
            byte[] fs = (byte[])t.GetField("FragStates")!.GetValue(ar)!;
            nint fsa = (nint)t.GetProperty("FragStatesAddress")!.GetValue(ar)!;
            var pages = (Array)t.GetField("Pages")!.GetValue(ar)!;
            descs += pages.Length;
            descBytes += pages.Length * DescriptorSize(pages);
            ra += Resident(b, len); rs += Resident(fsa, fs.Length); sz += len;
        }
        s += $"arenaBytes {sz>>10} KiB arenaResident {ra>>10} KiB stateResident {rs>>10} KiB descriptors {descs} ({descBytes>>10} KiB)\n";
        return s;
    }

    // The element size of the descriptor array (Unsafe.SizeOf of the internal descriptor type).
    private static long DescriptorSize(Array pages) =>
        (int)typeof(System.Runtime.CompilerServices.Unsafe).GetMethod("SizeOf")!.MakeGenericMethod(pages.GetType().GetElementType()!).Invoke(null, null)!;
}
