using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace PageFrag.Pages;

/// <summary>
/// The one operating-system call of the page layer: give the physical memory behind a range of an arena back
/// to the operating system while the range stays mapped and part of its array (the part of the kernel's free
/// page reporting that a process can do for itself).
/// </summary>
/// <remarks>
/// <para>On Linux, <c>madvise(MADV_DONTNEED)</c>: the pages of a private anonymous mapping (the garbage
/// collector's heap is one) stop being resident at once, and the next access to any byte of them reads a
/// fresh zero-filled page. The range must be memory no one can touch meanwhile: the allocator passes only free
/// buddy blocks it took off the free lists, and the fragment-state bytes of those blocks (all 0 while free, and
/// 0 again afterwards). docs/kernel-map.md explains why this is safe inside a pinned array.</para>
/// <para>Elsewhere a no-op that reports 0 bytes: Windows' <c>MEM_RESET</c> and macOS' <c>MADV_FREE</c> leave the
/// old contents or zeros at the system's choice, and only zeros are acceptable for the fragment states.</para>
/// <para>Never called on an allocation or free path: only by <see cref="PageAllocator.DiscardFreeMemory"/>,
/// <see cref="PageAllocator.Trim(bool)"/> and an arena's constructor.</para>
/// </remarks>
internal static unsafe partial class PhysicalMemory
{
    // MADV_DONTNEED is 4 on every Linux architecture .NET runs on (x64, arm64, arm, s390x, ppc64le, riscv64, loongarch64).
    private const int MadvDontNeed = 4;

    /// <summary>Whether <see cref="Discard"/> gives memory back on this platform.</summary>
    public static readonly bool IsSupported = OperatingSystem.IsLinux();

    /// <summary>The operating system's page size: the unit <see cref="Discard"/> works in.</summary>
    public static readonly int SystemPageSize = Environment.SystemPageSize;

    /// <summary>
    /// Gives back the whole system pages inside [<paramref name="start"/>, +<paramref name="length"/>) (the
    /// start is rounded up and the end down to <see cref="SystemPageSize"/>, so no byte outside the range is
    /// touched). Returns the bytes given back: 0 when the range holds no whole system page, on other platforms,
    /// and when the call fails (the memory then simply stays resident).
    /// </summary>
    public static long Discard(nint start, long length)
    {
        if (!IsSupported || length <= 0)
        {
            return 0;
        }

        nint mask = SystemPageSize - 1;
        nint first = (start + mask) & ~mask;
        nint end = (nint)(start + (nint)length) & ~mask;
        if (end <= first)
        {
            return 0;
        }

        return madvise((void*)first, (nuint)(end - first), MadvDontNeed) == 0 ? end - first : 0;
    }

    /// <summary>
    /// Clears a pinned array that may hold old bytes: on Linux the whole system pages inside it are given back
    /// (they read zeros and stay non-resident until touched) and only the partial pages at both ends are
    /// written; elsewhere, or when the call fails, every byte is written.
    /// </summary>
    public static void Clear(byte[] pinned)
    {
        nint start = (nint)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(pinned));
        long given = Discard(start, pinned.Length);
        if (given == 0)
        {
            pinned.AsSpan().Clear();
            return;
        }

        nint mask = SystemPageSize - 1;
        int head = (int)(((start + mask) & ~mask) - start);
        pinned.AsSpan(0, head).Clear();
        pinned.AsSpan(head + (int)given).Clear();
    }

    [LibraryImport("libc", EntryPoint = "madvise")]
    private static partial int madvise(void* address, nuint length, int advice);
}
