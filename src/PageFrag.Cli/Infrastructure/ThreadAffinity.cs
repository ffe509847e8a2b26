using System.Runtime.InteropServices;

namespace PageFrag.Cli.Infrastructure;

/// <summary>Pins the calling thread to one CPU (Linux only), like the kernel test's push/pop CPU parameters.</summary>
internal static unsafe partial class ThreadAffinity
{
    // cpu_set_t in glibc and musl: 1024 bits.
    private const int CpuSetWords = 16;

    /// <summary>The highest CPU number a mask can name.</summary>
    public const int MaxCpu = CpuSetWords * 64 - 1;

    public static bool IsSupported => OperatingSystem.IsLinux();

    /// <summary>Restricts the calling thread to <paramref name="cpu"/>; false with a reason when the OS refuses.</summary>
    public static bool TryPinCurrentThread(int cpu, out string? error)
    {
        if ((uint)cpu > MaxCpu)
        {
            error = $"CPU numbers go from 0 to {MaxCpu}.";
            return false;
        }

        ulong* mask = stackalloc ulong[CpuSetWords];
        new Span<ulong>(mask, CpuSetWords).Clear();
        mask[cpu >> 6] = 1UL << (cpu & 63);
        try
        {
            // pid 0 is the calling thread: Linux's affinity is per thread.
            if (SchedSetAffinity(0, CpuSetWords * sizeof(ulong), mask) == 0)
            {
                error = null;
                return true;
            }

            error = $"sched_setaffinity failed: {Marshal.GetLastPInvokeErrorMessage()} (does CPU {cpu} exist and is it allowed for this process?)";
            return false;
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            error = $"sched_setaffinity is not available: {e.Message}";
            return false;
        }
    }

    [LibraryImport("libc", EntryPoint = "sched_setaffinity", SetLastError = true)]
    private static partial int SchedSetAffinity(int pid, nuint cpuSetSize, ulong* mask);
}
