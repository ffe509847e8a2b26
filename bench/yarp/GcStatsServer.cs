using System.Net;
using System.Net.Sockets;
using System.Text;

namespace PageFrag.Bench.Yarp;

/// <summary>
/// A line of statistics on a port of its own, outside the path being measured: each connection receives
/// <c>GC.CollectionCount(0) GC.CollectionCount(1) GC.CollectionCount(2)</c> and is closed
/// (<c>run.sh</c> reads it with bash's <c>/dev/tcp</c> before and after each measured run).
/// </summary>
internal sealed class GcStatsServer : IDisposable
{
    private readonly TcpListener _listener;
    private readonly Thread _thread;

    private GcStatsServer(int port)
    {
        _listener = new TcpListener(IPAddress.Loopback, port);
        _listener.Start();
        _thread = new Thread(Serve) { IsBackground = true, Name = "gc-stats" };
        _thread.Start();
    }

    public static GcStatsServer Start(int port) => new(port);

    public void Dispose() => _listener.Stop();

    private void Serve()
    {
        while (true)
        {
            Socket client;
            try
            {
                client = _listener.AcceptSocket();
            }
            catch (SocketException)
            {
                return;
            }
            catch (ObjectDisposedException)
            {
                return;
            }

            using (client)
            {
                string line = $"{GC.CollectionCount(0)} {GC.CollectionCount(1)} {GC.CollectionCount(2)}\n";
                client.Send(Encoding.ASCII.GetBytes(line));
                client.Shutdown(SocketShutdown.Both);
            }
        }
    }
}
