namespace PageFrag.Cli.Stress;

/// <summary>
/// What one worker thread did. Each thread writes only its own instance; the coordinator reads
/// <see cref="AllocSuccesses"/> while the run goes on (a snapshot) and sums the rest once the threads are done.
/// </summary>
internal sealed class Counters
{
    public long AllocSuccesses;

    public long CacheAllocs;
    public long CacheCommits;
    public long CacheCoalesced;
    public long CacheAborts;
    public long CacheFreeLocal;
    public long CacheDrains;
    public long CacheFailures;
    public long ReserveAllocs;
    public long ReservePfMemallocPages;

    public long PoolAllocs;
    public long PoolPutsByOwner;
    public long PoolFailures;
    public long PoolsRetired;

    public long WriterMessages;
    public long WriterBytes;
    public long WriterCoalescedSegments;
    public long WriterFailures;

    public long HandedOff;
    public long FreedByOwnerWhenFull;
    public long FreedByOtherThreads;
    public long MemoryPoolRents;
    public long MemoryPoolFailures;

    public void Add(Counters other)
    {
        AllocSuccesses += other.AllocSuccesses;
        CacheAllocs += other.CacheAllocs;
        CacheCommits += other.CacheCommits;
        CacheCoalesced += other.CacheCoalesced;
        CacheAborts += other.CacheAborts;
        CacheFreeLocal += other.CacheFreeLocal;
        CacheDrains += other.CacheDrains;
        CacheFailures += other.CacheFailures;
        ReserveAllocs += other.ReserveAllocs;
        ReservePfMemallocPages += other.ReservePfMemallocPages;
        PoolAllocs += other.PoolAllocs;
        PoolPutsByOwner += other.PoolPutsByOwner;
        PoolFailures += other.PoolFailures;
        PoolsRetired += other.PoolsRetired;
        WriterMessages += other.WriterMessages;
        WriterBytes += other.WriterBytes;
        WriterCoalescedSegments += other.WriterCoalescedSegments;
        WriterFailures += other.WriterFailures;
        HandedOff += other.HandedOff;
        FreedByOwnerWhenFull += other.FreedByOwnerWhenFull;
        FreedByOtherThreads += other.FreedByOtherThreads;
        MemoryPoolRents += other.MemoryPoolRents;
        MemoryPoolFailures += other.MemoryPoolFailures;
    }
}
