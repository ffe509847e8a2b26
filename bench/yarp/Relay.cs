using System.Buffers;
using System.IO.Pipelines;
using System.Net;
using System.Net.Sockets;
using PageFrag.Buffers;

namespace PageFrag.Bench.Yarp;

/// <summary>
/// A TCP relay built on System.IO.Pipelines: for each accepted connection it opens one to the backend and
/// moves bytes both ways, each way through a <see cref="Pipe"/> whose buffers come from the chosen pool
/// (<see cref="MemoryPool{T}.Shared"/> or one <see cref="PageFragMemoryPool"/> for the whole process).
/// One task receives from a socket into the pipe, another sends from the pipe to the other socket, so a
/// buffer is usually rented on one thread and returned on another.
/// </summary>
internal static class Relay
{
    public static async Task RunAsync(string pool, int port, int backendPort)
    {
        MemoryPool<byte> memoryPool = pool == "pagefrag" ? new PageFragMemoryPool() : MemoryPool<byte>.Shared;
        var options = new PipeOptions(
            pool: memoryPool,
            readerScheduler: PipeScheduler.ThreadPool,
            writerScheduler: PipeScheduler.ThreadPool,
            useSynchronizationContext: false);
        var backend = new IPEndPoint(IPAddress.Loopback, backendPort);

        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, port));
        listener.Listen(512);
        while (true)
        {
            Socket client = await listener.AcceptAsync();
            _ = Task.Run(() => RelayConnectionAsync(client, backend, options));
        }
    }

    private static async Task RelayConnectionAsync(Socket client, IPEndPoint backend, PipeOptions options)
    {
        using (client)
        using (var server = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp))
        {
            try
            {
                client.NoDelay = true;
                server.NoDelay = true;
                await server.ConnectAsync(backend);
                await Task.WhenAll(PumpAsync(client, server, options), PumpAsync(server, client, options));
            }
            catch (SocketException)
            {
                // A peer went away: both sockets are closed below.
            }
        }
    }

    // One direction: a receiving task fills the pipe, a sending task drains it.
    private static Task PumpAsync(Socket from, Socket to, PipeOptions options)
    {
        var pipe = new Pipe(options);
        Task fill = Task.Run(() => FillAsync(from, pipe.Writer));
        Task drain = Task.Run(() => DrainAsync(pipe.Reader, to));
        return Task.WhenAll(fill, drain);
    }

    private static async Task FillAsync(Socket from, PipeWriter writer)
    {
        Exception? error = null;
        try
        {
            while (true)
            {
                Memory<byte> memory = writer.GetMemory(4096);
                int received = await from.ReceiveAsync(memory, SocketFlags.None);
                if (received == 0)
                {
                    break;
                }

                writer.Advance(received);
                FlushResult flush = await writer.FlushAsync();
                if (flush.IsCompleted || flush.IsCanceled)
                {
                    break;
                }
            }
        }
        catch (SocketException e)
        {
            error = e;
        }
        catch (ObjectDisposedException e)
        {
            error = e;
        }

        await writer.CompleteAsync(error);
    }

    private static async Task DrainAsync(PipeReader reader, Socket to)
    {
        Exception? error = null;
        try
        {
            while (true)
            {
                ReadResult read = await reader.ReadAsync();
                ReadOnlySequence<byte> buffer = read.Buffer;
                foreach (ReadOnlyMemory<byte> segment in buffer)
                {
                    await to.SendAsync(segment, SocketFlags.None);
                }

                reader.AdvanceTo(buffer.End);
                if (read.IsCompleted || read.IsCanceled)
                {
                    break;
                }
            }

            to.Shutdown(SocketShutdown.Send);
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException or IOException)
        {
            error = e;
        }

        await reader.CompleteAsync(error);
    }
}
