// The README's quick starts, each in its own method, copied into the README between the markers.
using System.Buffers;
using System.IO.Pipelines;
using System.Net;
using System.Net.Sockets;
using System.Text;
using PageFrag.Buffers;
using PageFrag.Frag;
using PageFrag.Pool;

namespace PageFrag.Examples.QuickStart;

internal static class QuickStarts
{
    // quick-start: pipe
    public static async Task PipeAsync()
    {
        var pipe = new Pipe(new PipeOptions(pool: PageFragMemoryPool.Shared)); // fragments of pinned 32 KiB pages

        await pipe.Writer.WriteAsync(Encoding.UTF8.GetBytes("hello"));
        await pipe.Writer.CompleteAsync();

        ReadResult result = await pipe.Reader.ReadAsync();
        Console.WriteLine(Encoding.UTF8.GetString(result.Buffer)); // hello
        pipe.Reader.AdvanceTo(result.Buffer.End);
        await pipe.Reader.CompleteAsync();
    }
    // end

    // quick-start: socket
    public static void GatherSend(Socket socket)
    {
        using var cache = new PageFragCache();                 // one thread allocates; any thread frees
        using var writer = new FragBufferWriter(cache);        // an IBufferWriter<byte> on prepare/commit
        writer.Write("HTTP/1.1 200 OK\r\n"u8);
        writer.Write("Content-Length: 2\r\n\r\nok"u8);

        using FragmentChain chain = writer.Detach();           // the written bytes, owned by the chain
        socket.Send(chain.AsArraySegments());                  // one gather send (sendmsg with an iovec)
    }                                                          // disposing the chain frees its fragments
    // end

    // quick-start: cache
    public static void FragmentCache()
    {
        using var cache = new PageFragCache();                 // PageAllocator.Shared underneath
        if (cache.TryAlloc(1500, out PageFragment frag))       // false when memory runs out (or over the page size)
        {
            frag.Span.Fill(0x2A);                              // also frag.Memory, frag.ArraySegment, frag.Pointer
            ThreadPool.QueueUserWorkItem(_ => frag.Free());    // any thread may free
        }

        // Fill the rest of a page without copying twice: prepare, write, commit what was used.
        if (cache.TryPrepare(64, out PreparedFragment space))
        {
            int used = Encoding.ASCII.GetBytes("a line of text\n", space.Span);
            PageFragment line = cache.Commit(space, used);     // line.TrueSize counts alignment padding too
            cache.FreeLocal(line);                             // the owner's free: no atomic on the page's count
        }
    }
    // end

    // quick-start: pool
    public static void PagePoolReceive(Socket udp)
    {
        using var pool = new PagePool(new PagePoolOptions { Order = 0, PoolSize = 256 });
        if (pool.TryAllocFrag(2048, out PagePoolBuffer buffer))  // a 2 KiB fragment of a pooled 4 KiB page
        {
            int n = udp.Receive(buffer.Span);                    // receive straight into pinned memory
            Console.WriteLine($"{n} bytes, truesize {buffer.TrueSize}");
            PagePool.Free(buffer);                               // back to the pool's recycle ring, any thread
        }
    }
    // end

    public static async Task Main()
    {
        await PipeAsync();
        FragmentCache();

        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen(1);
        using var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        client.Connect(listener.LocalEndPoint!);
        using Socket server = listener.Accept();
        GatherSend(client);
        byte[] received = new byte[256];
        Console.WriteLine($"{server.Receive(received)} bytes through a gather send");

        using var udpIn = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        udpIn.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        using var udpOut = new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp);
        udpOut.SendTo("datagram"u8.ToArray(), udpIn.LocalEndPoint!);
        PagePoolReceive(udpIn);
    }
}
