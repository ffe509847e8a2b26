using System.Buffers;
using System.Runtime.InteropServices;

namespace PageFrag.Cli.Stress;

/// <summary>
/// A freeing thread: it takes what the owners hand off, checks each buffer's stamp and frees it on this
/// thread (fragments by handle or by address, pool buffers and pages through the recycle ring, writer chains
/// by disposing them), and rents and returns buffers of the shared <c>PageFragMemoryPool</c> on the side.
/// </summary>
internal sealed class FreerWorker(StressRun run, int index, int seed)
{
    private const int MaxRentals = 8;

    private readonly Random _random = new(seed);
    private readonly List<(IMemoryOwner<byte> Owner, long Id)> _rentals = [];
    private long _nextRentId;

    public Counters Counters { get; } = new();

    public void Run()
    {
        try
        {
            int next = 0;
            var spin = default(SpinWait);
            while (true)
            {
                if (run.PauseRequested)
                {
                    DrainForPause();
                    run.FreerPause();
                    continue;
                }

                if (run.StopRequested && run.AllOwnersDone && run.QueuesEmpty)
                {
                    break;
                }

                bool got = false;
                HandoffQueue[] queues = run.Queues;
                for (int i = 0; i < queues.Length && !got; i++)
                {
                    if (queues[(next + i) % queues.Length].TryTake(out Item item))
                    {
                        run.Release(item, Counters, onOwner: false);
                        Counters.FreedByOtherThreads++;
                        got = true;
                    }
                }

                next++;
                if (_random.Next(100) < 4)
                {
                    MemoryPoolStep();
                }

                if (!got)
                {
                    spin.SpinOnce(sleep1Threshold: -1);
                }
            }

            ReturnRentals();
        }
        catch (Exception e)
        {
            run.Fail($"freer {index} threw {e}");
        }
    }

    /// <summary>A checkpoint: once every owner has stopped, empty the queues and give back every rental.</summary>
    private void DrainForPause()
    {
        ReturnRentals();
        while (true)
        {
            bool ownersStopped = run.AllOwnersPaused;
            bool got = false;
            foreach (HandoffQueue queue in run.Queues)
            {
                while (queue.TryTake(out Item item))
                {
                    run.Release(item, Counters, onOwner: false);
                    Counters.FreedByOtherThreads++;
                    got = true;
                }
            }

            if ((ownersStopped && !got && run.QueuesEmpty) || run.Aborted)
            {
                return;
            }

            if (!got)
            {
                Thread.Yield();
            }
        }
    }

    private void MemoryPoolStep()
    {
        if (_rentals.Count >= MaxRentals || (_rentals.Count > 0 && _random.Next(2) == 0))
        {
            int i = _random.Next(_rentals.Count);
            (IMemoryOwner<byte> owner, long id) = _rentals[i];
            _rentals.RemoveAt(i);
            Return(owner, id);
            return;
        }

        int size = _random.Next(3) == 0 ? _random.Next(4097, 32769) : _random.Next(0, 4097);
        IMemoryOwner<byte> rented;
        try
        {
            rented = run.MemoryPool.Rent(size);
        }
        catch (InsufficientMemoryException)
        {
            Counters.MemoryPoolFailures++;
            return;
        }

        Counters.MemoryPoolRents++;
        Counters.AllocSuccesses++;
        Memory<byte> memory = rented.Memory;
        if (memory.Length < size || !MemoryMarshal.TryGetArray<byte>(memory, out _))
        {
            run.Violation($"freer {index}: Rent({size}) gave {memory.Length} bytes or memory that is not a segment of an array");
        }

        long rentId = ((long)(1000 + index) << 40) + ++_nextRentId;
        Stamp.Write(memory.Span, rentId);
        _rentals.Add((rented, rentId));
    }

    private void ReturnRentals()
    {
        foreach ((IMemoryOwner<byte> owner, long id) in _rentals)
        {
            Return(owner, id);
        }

        _rentals.Clear();
    }

    private void Return(IMemoryOwner<byte> owner, long id)
    {
        if (!Stamp.Check(owner.Memory.Span, id))
        {
            run.Violation($"freer {index}: a PageFragMemoryPool buffer (id {id}) was overwritten while rented: an overlap or a use after free");
        }

        owner.Dispose();
    }
}
