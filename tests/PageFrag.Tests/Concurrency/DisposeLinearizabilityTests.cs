using System.Buffers;
using CsCheck;
using PageFrag.Buffers;
using PageFrag.Frag;
using PageFrag.Pages;

namespace PageFrag.Tests.Concurrency;

/// <summary>
/// Linearizability of the buffer adapters' release paths (issue 11 item 4), in the style of
/// <see cref="LinearizabilityTests"/>: rented owners and a chain disposed from several threads at once,
/// each possibly more than once, must leave the state of some sequential order, in which a second
/// <c>Dispose</c> does nothing (a pool buffer's <c>Dispose</c> that loses a race throws
/// <see cref="ObjectDisposedException"/> and, like a second one, gives nothing back). Kept in its own file so that the other layers' checks can grow beside it.
/// </summary>
public class DisposeLinearizabilityTests
{
    private const int Owners = 3;

    /// <summary>Three 64-byte buffers of one pool, and a chain of two fragments of a drained cache.</summary>
    private sealed class DisposeState
    {
        private readonly PageAllocator _allocator;
        private readonly PageFragMemoryPool _pool;
        private readonly IMemoryOwner<byte>[] _owners = new IMemoryOwner<byte>[Owners];
        private readonly FragmentChain _chain = new();
        private readonly long _poolPages;
        private int _errors;
        private readonly object _snapshotLock = new();
        private DisposeSnapshot? _snapshot;

        public DisposeState()
        {
            _allocator = new PageAllocator(new PageAllocatorOptions { ArenaSize = 64 * 1024 });
            _pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = _allocator });
            for (int i = 0; i < Owners; i++)
            {
                _owners[i] = _pool.Rent(64);
            }

            // Usually one order-3 page of one CPU slot's cache; more when the thread moved to another CPU between
            // rents (another slot, another page). The pool keeps them all, whatever is disposed.
            _poolPages = _allocator.PagesInUse;

            var cache = new PageFragCache(_allocator);
            Assert.True(cache.TryAlloc(100, out PageFragment a));
            Assert.True(cache.TryAlloc(200, out PageFragment b));
            cache.Drain();
            _chain.Append(a);
            _chain.Append(b);
        }

        public void DisposeOwner(int i) => Guard(() =>
        {
            try
            {
                _owners[i].Dispose();
            }
            catch (ObjectDisposedException)
            {
                // The loser of racing Disposes of a pool buffer throws and gives nothing back: as a second Dispose.
            }
        });

        public void DisposeChain() => Guard(_chain.Dispose);

        public DisposeSnapshot Snapshot()
        {
            // Once, under a lock: the checker may compare with several linearizations at the same time, and a
            // second caller must not read the counts while the first is disposing everything.
            lock (_snapshotLock)
            {
                if (_snapshot is not null)
                {
                    return _snapshot;
                }

                PageFragMemoryPoolStats stats = _pool.GetStats();
                long inUse = _allocator.PagesInUse - _poolPages;
                int errors = Volatile.Read(ref _errors);
                for (int i = 0; i < Owners; i++)
                {
                    DisposeOwner(i);
                }

                DisposeChain();
                _pool.Dispose();
                PageAllocatorStats end = _allocator.GetStats();
                _snapshot = new DisposeSnapshot(stats.Returns, stats.OutstandingBytes, inUse, errors, end.PagesInUse == 0 && end.IsConsistent && _errors == 0);
                _allocator.Dispose();
                return _snapshot;
            }
        }

        public override string ToString() => Snapshot().ToString();

        private void Guard(Action release)
        {
            try
            {
                release();
            }
            catch (Exception)
            {
                Interlocked.Increment(ref _errors);
            }
        }
    }

    private sealed class DisposeModel
    {
        public readonly bool[] Disposed = new bool[Owners];
        public bool ChainDisposed;

        public DisposeSnapshot Expected
        {
            get
            {
                int returned = Disposed.Count(d => d);

                // Pages beyond the pool's (which its caches keep): the chain's order-3 page, gone with the chain.
                return new DisposeSnapshot(returned, 64L * (Owners - returned), ChainDisposed ? 0 : 8, 0, Clean: true);
            }
        }

        public override string ToString() => Expected.ToString();
    }

    private sealed record DisposeSnapshot(long Returns, long OutstandingBytes, long PagesInUse, int Errors, bool Clean);

    [Fact]
    public void Concurrent_and_repeated_disposals_of_owners_and_a_chain_are_linearizable_and_free_exactly_once() =>
        Gen.Const(() => (new DisposeState(), new DisposeModel()))
            .SampleParallel(
                Gen.Int[0, Owners - 1].Operation<DisposeState, DisposeModel>(i => $"Dispose(owner {i})", (s, i) => s.DisposeOwner(i), (m, i) => m.Disposed[i] = true),
                Gen.Const(0).Operation<DisposeState, DisposeModel>(_ => "Dispose(chain)", (s, _) => s.DisposeChain(), (m, _) => m.ChainDisposed = true),
                equal: (s, m) => s.Snapshot() == m.Expected,
                iter: 200);
}
