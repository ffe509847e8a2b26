using System.Buffers;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using PageFrag.Buffers;
using PageFrag.Frag;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;
using static PageFrag.Tests.Buffers.BufferTestSupport;

namespace PageFrag.Tests.Buffers;

public class FragmentChainTests
{
    [Fact]
    public void Appended_fragments_read_back_in_order_and_are_freed_with_the_chain()
    {
        using PageAllocator allocator = WarmAllocator();
        var cache = new PageFragCache(allocator);
        var chain = new FragmentChain();
        long position = 0;
        foreach (int size in new[] { 10, 4000, 1, 700 })
        {
            Assert.True(cache.TryAlloc(size, out PageFragment f));
            Fill(f.Span, position);
            position += size;
            chain.Append(f);
        }

        Assert.Equal(4, chain.SegmentCount);
        Assert.Equal(position, chain.Length);
        AssertPattern(chain.Sequence, position);
        chain.Dispose();
        cache.Drain();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Array_segments_cover_the_pinned_arrays_behind_the_sequence()
    {
        using PageAllocator allocator = WarmAllocator();
        var cache = new PageFragCache(allocator);
        using (var chain = new FragmentChain())
        {
            Assert.True(cache.TryAlloc(100, out PageFragment a));
            Assert.True(cache.TryAlloc(200, out PageFragment b));
            chain.Append(a);
            chain.Append(b);
            IList<ArraySegment<byte>> segments = chain.AsArraySegments();
            Assert.Equal(2, segments.Count);
            Assert.Equal(a.ArraySegment, segments[0]);
            Assert.Equal(b.ArraySegment, segments[1]);

            var copied = new List<ArraySegment<byte>>();
            Assert.Equal(2, SequenceSegments.CopyArraySegmentsTo(chain.Sequence, copied));
            Assert.Equal(segments, copied);
        }

        cache.Drain();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_sequence_over_native_memory_cannot_be_turned_into_array_segments()
    {
        using var native = new NativeMemoryManager(16);
        var sequence = new ReadOnlySequence<byte>(native.Memory);
        var e = Assert.Throws<ArgumentException>(() => SequenceSegments.CopyArraySegmentsTo(sequence, new List<ArraySegment<byte>>()));
        Assert.Equal("sequence", e.ParamName);
        Assert.StartsWith("A segment of the sequence is not backed by an array, so it cannot be sent as an ArraySegment.", e.Message);
    }

    [Fact]
    public async Task A_written_chain_goes_out_in_one_gather_send_and_arrives_intact()
    {
        using PageAllocator allocator = WarmAllocator(arenaSize: 256 * 1024);
        var cache = new PageFragCache(allocator);
        FragmentChain chain;
        using (var writer = new FragBufferWriter(cache))
        {
            long written = 0;
            foreach (int size in new[] { 1000, 30_000, 5000, 50_000, 7 })
            {
                Fill(writer.GetSpan(size)[..size], written);
                writer.Advance(size);
                written += size;
                Assert.True(cache.TryAlloc(64, out PageFragment gap));
                gap.Free();
            }

            chain = writer.Detach();
        }

        Assert.True(chain.SegmentCount > 1);
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen(1);
        using var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        await client.ConnectAsync(listener.LocalEndPoint!);
        using Socket server = await listener.AcceptAsync();

        long length = chain.Length;
        Task<byte[]> receive = ReceiveAllAsync(server, length);
        int sent = await client.SendAsync(chain.AsArraySegments(), SocketFlags.None);
        Assert.Equal(length, sent);
        byte[] received = await receive;
        chain.Dispose();

        AssertPattern(new ReadOnlySequence<byte>(received), length);
        cache.Drain();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_second_Dispose_of_a_chain_never_releases_the_chain_of_another_writer()
    {
        // A chain is recycled only by the writer it came from, never through a process-wide stash: a caller's
        // second Dispose after another writer took the object would otherwise free that writer's bytes.
        using PageAllocator allocator = WarmAllocator();
        var cache = new PageFragCache(allocator);
        for (int round = 0; round < 200; round++)
        {
            var mine = new FragmentChain();
            Assert.True(cache.TryAlloc(100, out PageFragment f));
            mine.Append(f);
            mine.Dispose();

            using var writer = new FragBufferWriter(cache);
            writer.Write(new byte[64]);
            mine.Dispose(); // the caller's bug: a second Dispose after the object may have been reused
            Assert.Equal(64, writer.WrittenCount);
            using FragmentChain detached = writer.Detach();
            Assert.Equal(64, detached.Length);
        }

        cache.Drain();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void A_disposed_chain_throws_ObjectDisposedException_and_a_second_Dispose_does_nothing()
    {
        using PageAllocator allocator = WarmAllocator();
        var cache = new PageFragCache(allocator);
        var chain = new FragmentChain();
        Assert.True(cache.TryAlloc(100, out PageFragment f));
        chain.Append(f);
        chain.Dispose();
        chain.Dispose();
        Assert.Equal(nameof(FragmentChain), Assert.Throws<ObjectDisposedException>(() => chain.Sequence).ObjectName);
        Assert.Throws<ObjectDisposedException>(() => chain.Append(f));
        cache.Drain();
        Leaks.AssertNone(allocator);
    }

    [Fact]
    public void Appending_an_empty_fragment_throws_and_leaves_the_chain_as_it_was()
    {
        using var chain = new FragmentChain();
        var e = Assert.Throws<ArgumentException>(() => chain.Append(default));
        Assert.Equal("fragment", e.ParamName);
        Assert.Equal(0, chain.SegmentCount);
    }

    [Fact]
    public void Disposing_a_chain_whose_fragment_was_freed_elsewhere_reports_it_and_frees_the_rest()
    {
        using PageAllocator allocator = WarmAllocator();
        var cache = new PageFragCache(allocator);
        var chain = new FragmentChain();
        Assert.True(cache.TryAlloc(100, out PageFragment a));
        Assert.True(cache.TryAlloc(100, out PageFragment b));
        chain.Append(a);
        chain.Append(b);
        a.Free();
        Assert.Throws<PageFragDoubleFreeException>(() => chain.Dispose());
        cache.Drain();
        Leaks.AssertNone(allocator);
    }

    private static async Task<byte[]> ReceiveAllAsync(Socket socket, long length)
    {
        byte[] buffer = new byte[length];
        int received = 0;
        while (received < length)
        {
            int n = await socket.ReceiveAsync(buffer.AsMemory(received), SocketFlags.None);
            Assert.NotEqual(0, n);
            received += n;
        }

        return buffer;
    }

    private sealed unsafe class NativeMemoryManager : MemoryManager<byte>
    {
        private readonly byte* _pointer;
        private readonly int _length;

        public NativeMemoryManager(int length)
        {
            _pointer = (byte*)NativeMemory.Alloc((nuint)length);
            _length = length;
        }

        public override Span<byte> GetSpan() => new(_pointer, _length);

        public override MemoryHandle Pin(int elementIndex = 0) => new(_pointer + elementIndex);

        public override void Unpin()
        {
        }

        protected override void Dispose(bool disposing) => NativeMemory.Free(_pointer);
    }
}
