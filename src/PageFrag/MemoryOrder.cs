using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics.X86;

namespace PageFrag;

/// <summary>The one fence the release protocols need only on hardware weaker than x86.</summary>
internal static class MemoryOrder
{
    /// <summary>
    /// A full fence except on x86, whose ordering (total store order, and locked instructions that are full fences)
    /// already gives what each caller needs: loads after a locked instruction stay after it, loads stay in order,
    /// stores stay in order. Arm64 gives none of these to plain or volatile accesses (a volatile load may be an RCpc
    /// load that passes an earlier store-release), so there it is <see cref="Interlocked.MemoryBarrier"/>. The JIT
    /// drops the branch, so on x86 it costs nothing. Every caller says which of the three orders it relies on.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static void FullFenceUnlessX86()
    {
        if (!X86Base.IsSupported)
        {
            Interlocked.MemoryBarrier();
        }
    }
}
