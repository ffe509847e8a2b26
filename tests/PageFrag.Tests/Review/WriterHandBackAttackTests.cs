using System.Buffers;
using System.Collections.Concurrent;
using System.Diagnostics;
using PageFrag.Buffers;
using PageFrag.Frag;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;

namespace PageFrag.Tests.Review;

/// <summary>
/// Review of session 5: a writer's detached chains handed back to it by Dispose on another thread, while the writer
/// writes its next chains (into the kept fragments), and the writer's own Dispose racing the last chains' Dispose.
/// A kept fragment written while a consumer still reads it shows as a chain whose bytes changed before its Dispose;
/// a fragment freed twice or never shows as a failure or a leaked page.
/// </summary>
public class WriterHandBackAttackTests
{
    [Fact]
    public void Chains_disposed_on_another_thread_while_the_writer_writes_and_closes_never_share_or_leak()
    {
        using PageAllocator allocator = Leaks.NewAllocator(1 << 20);
        var failures = new ConcurrentQueue<Exception>();
        var clock = Stopwatch.StartNew();
        int rounds = 0;
        long chains = 0;
        var random = new Random(9);
        while (rounds < 3 || (clock.ElapsedMilliseconds < 1500 && rounds < 200))
        {
            rounds++;
            var cache = new PageFragCache(allocator);
            var writer = new FragBufferWriter(cache);
            var queue = new ConcurrentQueue<(FragmentChain Chain, long Length, byte Pattern)>();
            int producing = 1;
            using var start = new Barrier(2);
            var consumer = new Thread(() =>
            {
                try
                {
                    start.SignalAndWait();
                    while (Volatile.Read(ref producing) != 0 || !queue.IsEmpty)
                    {
                        if (!queue.TryDequeue(out (FragmentChain Chain, long Length, byte Pattern) item))
                        {
                            Thread.Yield();
                            continue;
                        }

                        ReadOnlySequence<byte> sequence = item.Chain.Sequence;
                        Assert.Equal(item.Length, sequence.Length);
                        foreach (ReadOnlyMemory<byte> part in sequence)
                        {
                            int bad = part.Span.IndexOfAnyExcept(item.Pattern);
                            Assert.True(bad < 0, $"a chain's bytes changed before its Dispose (pattern {item.Pattern})");
                        }

                        item.Chain.Dispose();
                    }
                }
                catch (Exception e)
                {
                    failures.Enqueue(e);
                }
            });
            consumer.Start();
            start.SignalAndWait();
            byte next = 1;
            for (int message = 0; message < 200 && failures.IsEmpty; message++)
            {
                byte pattern = next;
                next = (byte)(next == 255 ? 1 : next + 1);
                int length = random.Next(1, 20000);
                for (int written = 0; written < length;)
                {
                    Span<byte> span = writer.GetSpan(random.Next(1, 3000));
                    int n = Math.Min(span.Length, Math.Min(length - written, random.Next(1, 5000)));
                    span[..n].Fill(pattern);
                    writer.Advance(n);
                    written += n;
                }

                queue.Enqueue((writer.Detach(), length, pattern));
                chains++;
                while (queue.Count > 16)
                {
                    Thread.Yield();
                }
            }

            // The writer's Dispose races the consumer's Dispose of the last chains (their hand-back or their own free).
            writer.Dispose();
            Volatile.Write(ref producing, 0);
            consumer.Join();
            cache.Dispose();
            Assert.Empty(failures);
        }

        Assert.True(chains > 100, $"only {chains} chains");
        allocator.Trim();
        allocator.DrainPerCpuLists();
        Leaks.AssertNone(allocator);
    }
}
