namespace PageFrag.Tests.Infrastructure;

/// <summary>Proves that a hot path allocates nothing on the GC heap in steady state.</summary>
internal static class ZeroAlloc
{
    /// <summary>
    /// Runs <paramref name="round"/> once to warm up, then measures rounds until one allocates 0 bytes.
    /// </summary>
    /// <remarks>
    /// The runtime itself allocates a few KB on the thread while a method moves through its tiered PGO
    /// profiling tier, so one measured round can see bytes the code under test never allocated. A real
    /// allocation in the code shows up in every round, so requiring one clean round out of many still fails
    /// for it.
    /// </remarks>
    public static void AssertSteadyState(Action round, int maxRounds = 100)
    {
        round();
        var measured = new long[maxRounds];
        for (int i = 0; i < maxRounds; i++)
        {
            long before = GC.GetAllocatedBytesForCurrentThread();
            round();
            measured[i] = GC.GetAllocatedBytesForCurrentThread() - before;
            if (measured[i] == 0)
            {
                return;
            }
        }

        Assert.Fail($"every round allocated: {string.Join(", ", measured)} bytes");
    }
}
