using System.Reflection;
using System.Runtime.InteropServices;
using Microsoft.Extensions.DependencyInjection;
using PageFrag.AspNetCore;
using PageFrag.Pages;
namespace PageFrag.Examples.Kestrel;
/// <summary>
/// <c>GET /stats</c> (only with the environment variable <c>PAGEFRAG_STATS=1</c>): the GC heap, the page
/// allocator's counters, and how much of the arenas and of their fragment-state bytes is resident now
/// (<c>mincore</c>, Linux). Reads the allocator's private arena list by reflection: a bench aid, not an API.
/// </summary>
internal static unsafe partial class DiagStats
{
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
        string s = $"gcHeap {gi.HeapSizeBytes>>10} KiB committed {gi.TotalCommittedBytes>>10} KiB totalMem {GC.GetTotalMemory(false)>>10} KiB\n";
        if (f == null) return s;
        var a = f.Allocator; var st = a.GetStats();
        s += $"arenas {st.Arenas} total {st.TotalPages} free {st.FreePages} cached {st.CachedPages} inuse {st.PagesInUse} discarded {a.BytesDiscarded>>10} KiB\n";
        var arenas = (Array)typeof(PageAllocator).GetField("_arenas", BindingFlags.NonPublic|BindingFlags.Instance)!.GetValue(a)!;
        long ra=0, rs=0, sz=0;
        foreach (object ar in arenas)
        {
            var t = ar.GetType();
            nint b = (nint)t.GetField("BaseAddress")!.GetValue(ar)!; int len = (int)t.GetField("ByteLength")!.GetValue(ar)!;
            byte[] fs = (byte[])t.GetField("FragStates")!.GetValue(ar)!;
            nint fsa = (nint)t.GetProperty("FragStatesAddress")!.GetValue(ar)!;
            ra += Resident(b, len); rs += Resident(fsa, fs.Length); sz += len;
        }
        s += $"arenaBytes {sz>>10} KiB arenaResident {ra>>10} KiB stateResident {rs>>10} KiB\n";
        return s;
    }
}
