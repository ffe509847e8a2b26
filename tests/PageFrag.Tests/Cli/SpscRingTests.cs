using PageFrag.Cli.FragTest;

namespace PageFrag.Tests.Cli;

public class SpscRingTests
{
    [Fact]
    public void A_ring_holds_exactly_its_capacity_and_gives_items_back_in_order()
    {
        var ring = new SpscRing<nint>(8);
        SpscRing<nint>.Producer producer = ring.GetProducer();
        SpscRing<nint>.Consumer consumer = ring.GetConsumer();

        for (int i = 1; i <= 8; i++)
        {
            Assert.True(producer.TryPush(i));
        }

        Assert.False(producer.TryPush(9));
        for (int i = 1; i <= 8; i++)
        {
            Assert.True(consumer.TryPop(out nint item));
            Assert.Equal(i, item);
        }

        Assert.False(consumer.TryPop(out _));
        Assert.True(producer.TryPush(9));

        // Items are published in batches; a lone item becomes visible once the producer publishes.
        producer.Publish();
        Assert.True(consumer.TryPop(out nint last));
        Assert.Equal(9, last);
        consumer.Publish();
        Assert.Equal(9, ring.Published);
        Assert.Equal(9, ring.Consumed);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void A_ring_does_not_keep_objects_it_gave_out_alive(bool inRuns)
    {
        var ring = new SpscRing<byte[]>(4);
        SpscRing<byte[]>.Producer producer = ring.GetProducer();
        SpscRing<byte[]>.Consumer consumer = ring.GetConsumer();
        WeakReference weak = inRuns ? PushAndTakeRun(ref producer, ref consumer) : PushAndPop(ref producer, ref consumer);

        GC.Collect();
        GC.WaitForPendingFinalizers();

        Assert.False(weak.IsAlive);
    }

    [Fact]
    public void Two_threads_pass_many_items_through_a_small_ring_in_order()
    {
        const int count = 200_000;
        var ring = new SpscRing<nint>(16);
        var control = new RunControl();
        long mismatches = 0;
        var consumerThread = new Thread(() =>
        {
            SpscRing<nint>.Consumer consumer = ring.GetConsumer();
            for (nint expected = 1; expected <= count;)
            {
                if (consumer.TryPop(out nint item))
                {
                    mismatches += item == expected ? 0 : 1;
                    expected++;
                }
                else
                {
                    consumer.WaitForItems(control);
                }
            }
        });
        consumerThread.Start();

        SpscRing<nint>.Producer producer = ring.GetProducer();
        for (nint next = 1; next <= count;)
        {
            if (producer.TryPush(next))
            {
                next++;
            }
            else
            {
                producer.WaitForRoom(control);
            }
        }

        producer.Publish();
        Assert.True(consumerThread.Join(TimeSpan.FromSeconds(20)), "the consumer did not finish");
        Assert.Equal(0, mismatches);
        Assert.Equal(count, ring.Consumed);
    }

    [Fact]
    public void Runs_stop_at_the_wrap_and_at_what_the_other_side_left_and_keep_the_order()
    {
        var ring = new SpscRing<nint>(8);
        SpscRing<nint>.Producer producer = ring.GetProducer();
        SpscRing<nint>.Consumer consumer = ring.GetConsumer();

        Span<nint> run = producer.Reserve(5);
        Assert.Equal(5, run.Length);
        for (int i = 0; i < 3; i++)
        {
            run[i] = i + 1;
        }

        producer.Commit(3);          // two reserved slots left unused
        producer.Publish();
        Assert.Equal(3, consumer.Peek(32).Length);
        Assert.Equal([1, 2, 3], consumer.Peek(32).ToArray());
        consumer.Release(2);         // item 3 stays in the ring
        consumer.Publish();

        run = producer.Reserve(32);  // slots 3..7: the run ends at the wrap, not at max
        Assert.Equal(5, run.Length);
        for (int i = 0; i < run.Length; i++)
        {
            run[i] = i + 4;
        }

        producer.Commit(run.Length);
        run = producer.Reserve(32);  // slots 0..1 are free again; slot 2 still holds item 3
        Assert.Equal(2, run.Length);
        run[0] = 9;
        run[1] = 10;
        producer.Commit(2);
        Assert.Equal(0, producer.Reserve(32).Length);   // full
        Assert.False(producer.TryPush(11));
        producer.Publish();

        Assert.Equal([3], consumer.Peek(32).ToArray());  // what it saw last time: no look at the producer's index
        consumer.Release(1);
        Assert.Equal([4, 5, 6, 7, 8], consumer.Peek(32).ToArray());   // then a fresh look, up to the wrap
        consumer.Release(5);
        Assert.Equal(1, consumer.Peek(1).Length);       // at most max
        Assert.Equal([9, 10], consumer.Peek(32).ToArray());
        consumer.Release(2);
        Assert.Equal(0, consumer.Peek(32).Length);      // empty
        consumer.Publish();
        Assert.Equal(10, ring.Published);
        Assert.Equal(10, ring.Consumed);
    }

    [Fact]
    public void Committing_or_releasing_more_than_the_last_run_or_twice_throws_and_changes_nothing()
    {
        var ring = new SpscRing<byte[]>(8);
        SpscRing<byte[]>.Producer producer = ring.GetProducer();
        SpscRing<byte[]>.Consumer consumer = ring.GetConsumer();

        Assert.Throws<ArgumentOutOfRangeException>(() => producer.Reserve(-1));
        Span<byte[]> run = producer.Reserve(2);
        run[0] = [1];
        run[1] = [2];
        ArgumentOutOfRangeException e = Assert.Throws<ArgumentOutOfRangeException>(() => Commit(ref producer, 3));
        Assert.StartsWith("Only the 2 slots of the last run can be committed, once", e.Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => Commit(ref producer, -1));
        producer.Commit(2);
        Assert.Throws<ArgumentOutOfRangeException>(() => Commit(ref producer, 1));   // the run was committed
        producer.Publish();
        Assert.Equal(2, ring.Published);

        Assert.Throws<ArgumentOutOfRangeException>(() => consumer.Peek(-1));
        Assert.Equal(1, consumer.Peek(1).Length);
        Assert.Throws<ArgumentOutOfRangeException>(() => Release(ref consumer, 2));   // would clear a slot not taken
        consumer.Release(1);
        Assert.Throws<ArgumentOutOfRangeException>(() => Release(ref consumer, 1));
        Assert.Equal(2, consumer.Peek(8)[0]![0]);
        consumer.Release(1);
        consumer.Publish();
        Assert.Equal(2, ring.Consumed);

        static void Commit(ref SpscRing<byte[]>.Producer p, int n) => p.Commit(n);
        static void Release(ref SpscRing<byte[]>.Consumer c, int n) => c.Release(n);
    }

    [Fact]
    public void Two_threads_pass_many_items_in_runs_through_a_small_ring_in_order()
    {
        const int count = 200_000;
        var ring = new SpscRing<nint>(16);
        var control = new RunControl();
        long mismatches = 0;
        var consumerThread = new Thread(() =>
        {
            SpscRing<nint>.Consumer consumer = ring.GetConsumer();
            for (nint expected = 1; expected <= count;)
            {
                ReadOnlySpan<nint> run = consumer.Peek(5);
                if (run.Length == 0)
                {
                    consumer.WaitForItems(control);
                    continue;
                }

                foreach (nint item in run)
                {
                    mismatches += item == expected ? 0 : 1;
                    expected++;
                }

                consumer.Release(run.Length);
            }

            consumer.Publish();
        });
        consumerThread.Start();

        SpscRing<nint>.Producer producer = ring.GetProducer();
        for (nint next = 1; next <= count;)
        {
            Span<nint> run = producer.Reserve((int)Math.Min(7, count - next + 1));
            if (run.Length == 0)
            {
                producer.WaitForRoom(control);
                continue;
            }

            for (int i = 0; i < run.Length; i++)
            {
                run[i] = next++;
            }

            producer.Commit(run.Length);
        }

        producer.Publish();
        Assert.True(consumerThread.Join(TimeSpan.FromSeconds(20)), "the consumer did not finish");
        Assert.Equal(0, mismatches);
        Assert.Equal(count, ring.Consumed);
    }

    [Fact]
    public void After_a_full_ring_the_producer_waits_until_half_the_ring_is_free()
    {
        var ring = new SpscRing<nint>(16);
        var control = new RunControl();
        SpscRing<nint>.Producer producer = ring.GetProducer();
        for (int i = 1; i <= 16; i++)
        {
            Assert.True(producer.TryPush(i));
        }

        Assert.False(producer.TryPush(17));
        long popped = 0;
        var waiter = new Thread(() =>
        {
            producer.WaitForRoom(control);
            Volatile.Write(ref popped, ring.Consumed);
        });
        waiter.Start();

        // Give back one slot at a time; the waiter must not return before eight are free.
        SpscRing<nint>.Consumer consumer = ring.GetConsumer();
        for (int i = 0; i < 8; i++)
        {
            Assert.False(waiter.Join(TimeSpan.FromMilliseconds(i == 0 ? 200 : 20)), $"returned with {i} free slots");
            Assert.True(consumer.TryPop(out _));
            consumer.Publish();
        }

        Assert.True(waiter.Join(TimeSpan.FromSeconds(10)), "the producer did not see half the ring free");
        Assert.Equal(8, Volatile.Read(ref popped));
    }

    [Theory]
    [InlineData(0)]
    [InlineData(1)]
    [InlineData(12)]
    public void A_ring_size_that_is_not_a_power_of_two_of_at_least_2_is_rejected(int capacity)
    {
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => new SpscRing<nint>(capacity));
        Assert.StartsWith("The ring size must be a power of two of at least 2.", e.Message);
    }

    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.NoInlining)]
    private static WeakReference PushAndTakeRun(ref SpscRing<byte[]>.Producer producer, ref SpscRing<byte[]>.Consumer consumer)
    {
        byte[] item = new byte[16];
        Span<byte[]> run = producer.Reserve(4);
        run[0] = item;
        producer.Commit(1);
        producer.Publish();
        ReadOnlySpan<byte[]> taken = consumer.Peek(4);
        Assert.Same(item, taken[0]);
        consumer.Release(1);
        consumer.Publish();
        return new WeakReference(item);
    }

    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.NoInlining)]
    private static WeakReference PushAndPop(ref SpscRing<byte[]>.Producer producer, ref SpscRing<byte[]>.Consumer consumer)
    {
        byte[] payload = new byte[100];
        Assert.True(producer.TryPush(payload));
        Assert.True(consumer.TryPop(out byte[] popped));
        Assert.Same(payload, popped);
        return new WeakReference(payload);
    }
}
