using System.Buffers;
using System.Diagnostics.Tracing;
using PageFrag.Buffers;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;
using static PageFrag.Tests.Buffers.BufferTestSupport;

namespace PageFrag.Tests.Buffers;

/// <summary>
/// The memory pool's waits in the middle of a change: a trim, a snapshot or <c>Dispose</c> that flagged every slot
/// and waits for a busy one, a return that waits for a trim to end after its owner's count decided, a return on a
/// thread new to the pool. A <see cref="Thread.Interrupt"/> there must not leave slots flagged, caches undrained or a
/// buffer's memory with nobody (docs/interrupts.md). And a <c>Dispose</c> from a callback inside a rent drains the slot
/// it was called in once the rent leaves it.
/// </summary>
public class PoolInterruptTests
{
    [Theory]
    [InlineData("Dispose")]
    [InlineData("Trim")]
    [InlineData("GetStats")]
    public void An_interrupt_while_an_operation_on_all_slots_waits_for_a_busy_slot_is_kept_and_no_slot_stays_flagged(string call)
    {
        using PageAllocator allocator = WarmAllocator(arenaSize: 1 << 20);
        var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator });
        using var busy = new ManualResetEventSlim();
        using var release = new ManualResetEventSlim();
        bool rentedAfter = false;

        // Another thread is busy in its slot (what a rent or a return under way looks like to the operation).
        var holder = new Thread(() =>
        {
            IMemoryOwner<byte> owner = pool.Rent(100);
            PageFragMemoryPool.ThreadSlot slot = ((FragmentMemoryOwner)owner).Home;
            Assert.True(slot.Enter());
            busy.Set();
            release.Wait();
            slot.Exit();
            owner.Dispose();
            if (call != "Dispose")
            {
                // With a slot left flagged, this rent would wait for ever.
                pool.Rent(200).Dispose();
                rentedAfter = true;
            }
        }) { IsBackground = true };
        holder.Start();
        busy.Wait();

        Interrupts.Outcome outcome = Interrupts.WhileBlocked([release], static _ => { }, static r => r.Set(), () =>
        {
            switch (call)
            {
                case "Dispose": pool.Dispose(); break;
                case "Trim": pool.Trim(); break;
                default: pool.GetStats(); break;
            }
        });

        Assert.True(holder.Join(TimeSpan.FromSeconds(10)), "the busy slot's thread waits for a flag nobody clears");
        Interrupts.AssertCompletedAndKept(outcome);
        Assert.Equal(call != "Dispose", rentedAfter);
        pool.Dispose();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void An_interrupt_while_a_return_waits_for_a_trim_to_end_is_kept_and_the_buffer_goes_back()
    {
        using PageAllocator allocator = WarmAllocator(arenaSize: 1 << 20);
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator }))
        {
            using var busy = new ManualResetEventSlim();
            using var release = new ManualResetEventSlim();
            using var rented = new ManualResetEventSlim();
            bool trimWaits = false;

            // A thread busy in its slot keeps the trim waiting (and every other slot flagged).
            var holder = new Thread(() =>
            {
                IMemoryOwner<byte> owner = pool.Rent(100);
                PageFragMemoryPool.ThreadSlot slot = ((FragmentMemoryOwner)owner).Home;
                Assert.True(slot.Enter());
                busy.Set();
                release.Wait();
                slot.Exit();
                owner.Dispose();
            });

            // The returning thread rents first, then (the trim under way) gives the buffer back on its own thread: its
            // owner's count decides, then the return waits for the trim to end before it gives the fragment back.
            Exception? threw = null;
            bool kept = false;
            var returner = new Thread(() =>
            {
                IMemoryOwner<byte> owner = pool.Rent(300);
                rented.Set();
                while (!Volatile.Read(ref trimWaits))
                {
                    Thread.SpinWait(100);
                }

                try
                {
                    owner.Dispose();
                }
                catch (Exception e)
                {
                    threw = e;
                    return;
                }

                try
                {
                    Thread.Sleep(1);
                }
                catch (ThreadInterruptedException)
                {
                    kept = true;
                }
            });

            // The holder's slot first: the trim clears each slot's flag once it has passed it, so the returner's slot
            // must come after the busy one to stay flagged while the trim waits.
            holder.Start();
            busy.Wait();
            returner.Start();
            rented.Wait();
            var trimmer = new Thread(() => pool.Trim());
            trimmer.Start();
            WaitUntilBlocked(trimmer);
            Volatile.Write(ref trimWaits, true);
            WaitUntilBlocked(returner);
            returner.Interrupt();
            Thread.Sleep(50);
            release.Set();

            Assert.True(trimmer.Join(TimeSpan.FromSeconds(10)));
            Assert.True(holder.Join(TimeSpan.FromSeconds(10)));
            Assert.True(returner.Join(TimeSpan.FromSeconds(10)));
            Assert.Null(threw);
            Assert.True(kept, "the interrupt was lost instead of reaching the thread's next blocking call");
            PageFragMemoryPoolStats stats = pool.GetStats();
            Assert.Equal(stats.Rents, stats.Returns);
            Assert.Equal(0, stats.OutstandingBytes);
        }

        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void An_interrupt_while_a_return_on_a_thread_new_to_the_pool_waits_for_its_slot_is_kept_and_the_return_counted()
    {
        using PageAllocator allocator = WarmAllocator(arenaSize: 1 << 20);
        using (var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator }))
        {
            IMemoryOwner<byte> owner = pool.Rent(500);
            using var busy = new ManualResetEventSlim();
            using var release = new ManualResetEventSlim();
            var holder = new Thread(() =>
            {
                IMemoryOwner<byte> mine = pool.Rent(100);
                PageFragMemoryPool.ThreadSlot slot = ((FragmentMemoryOwner)mine).Home;
                Assert.True(slot.Enter());
                busy.Set();
                release.Wait();
                slot.Exit();
                mine.Dispose();
            });
            holder.Start();
            busy.Wait();

            // A trim holds the slots' lock while it waits for the busy slot; the return on a new thread frees the
            // fragment, then needs a slot of its own to count the return in, and waits for that lock.
            var trimmer = new Thread(() => pool.Trim());
            trimmer.Start();
            WaitUntilBlocked(trimmer);
            Interrupts.Outcome outcome = Interrupts.WhileBlocked([release], static _ => { }, static r => r.Set(), owner.Dispose);

            Assert.True(trimmer.Join(TimeSpan.FromSeconds(10)));
            Assert.True(holder.Join(TimeSpan.FromSeconds(10)));
            Interrupts.AssertCompletedAndKept(outcome);
            PageFragMemoryPoolStats stats = pool.GetStats();
            Assert.Equal(stats.Rents, stats.Returns);
            Assert.Equal(0, stats.OutstandingBytes);
        }

        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Disposing_the_pool_from_a_listener_called_back_inside_a_rent_drains_that_threads_slot_and_its_parked_buffers()
    {
        // A limit of two order-3 pages: the slot's cache holds one, the test the other, so a rent of a dedicated block
        // reaches the limit, and the allocator reports it (PageFragEventSource.LimitReached) on the renting thread.
        using PageAllocator allocator = WarmAllocator(arenaSize: 64 * 1024, maxBytes: 64 * 1024);
        var pool = new PageFragMemoryPool(new PageFragMemoryPoolOptions { Allocator = allocator, MaxBufferSize = 64 * 1024 });
        IMemoryOwner<byte> parked = pool.Rent(100);
        IMemoryOwner<byte> held = pool.Rent(200);
        parked.Dispose();
        PageFragMemoryPool.ThreadSlot slot = ((FragmentMemoryOwner)held).Home;
        Assert.Equal(1, slot.ParkedCount);
        Assert.True(allocator.TryAllocPages(3, AllocFlags.None, out Page other));
        Assert.Equal(16, allocator.PagesInUse);

        using (var listener = new DisposeOnLimitListener(pool, Environment.CurrentManagedThreadId))
        {
            Assert.Throws<InsufficientMemoryException>(() => pool.Rent(40000));
            Assert.True(listener.Disposed, "the listener was not called back inside the rent");
        }

        Assert.True(pool.IsDisposed);
        Assert.Equal(0, slot.ParkedCount);

        // Only the held buffer keeps the slot's page now; once it is back, the page is the allocator's.
        held.Dispose();
        allocator.FreePages(other);
        allocator.DrainPerCpuLists();
        Leaks.AssertNone(allocator);
    }

    private static void WaitUntilBlocked(Thread thread)
    {
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while ((thread.ThreadState & ThreadState.WaitSleepJoin) == 0)
        {
            Assert.True(DateTime.UtcNow < deadline, "the thread never waited");
            Thread.Yield();
        }
    }

    /// <summary>Disposes the pool when the allocator reports its limit on the given thread (a callback inside a rent).</summary>
    private sealed class DisposeOnLimitListener : EventListener
    {
        private readonly PageFragMemoryPool _pool;
        private readonly int _threadId;
        private volatile bool _ready;

        public DisposeOnLimitListener(PageFragMemoryPool pool, int threadId)
        {
            _pool = pool;
            _threadId = threadId;
            _ready = true;
            EnableEvents(PageFragEventSource.Log, EventLevel.Informational);
        }

        public bool Disposed { get; private set; }

        protected override void OnEventWritten(EventWrittenEventArgs eventData)
        {
            if (_ready && eventData.EventName == "LimitReached" && Environment.CurrentManagedThreadId == _threadId && !Disposed)
            {
                Disposed = true;
                _pool.Dispose();
            }
        }
    }
}
