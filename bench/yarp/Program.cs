using PageFrag.Bench.Yarp;

// Usage:
//   PageFrag.Bench.Yarp backend --port 5090
//   PageFrag.Bench.Yarp proxy --pool default|pagefrag --port 5091 --backend 5090 --stats 5093
//   PageFrag.Bench.Yarp relay --pool default|pagefrag --port 5092 --backend 5090 --stats 5093
const string Usage = "usage: backend --port P | proxy|relay --pool default|pagefrag --port P --backend P --stats P";
if (args.Length == 0)
{
    Console.Error.WriteLine(Usage);
    return 2;
}

string mode = args[0], pool = "pagefrag";
int port = 0, backendPort = 5090, statsPort = 0;
for (int i = 1; i + 1 < args.Length; i += 2)
{
    switch (args[i])
    {
        case "--pool":
            pool = args[i + 1];
            break;
        case "--port":
            port = int.Parse(args[i + 1]);
            break;
        case "--backend":
            backendPort = int.Parse(args[i + 1]);
            break;
        case "--stats":
            statsPort = int.Parse(args[i + 1]);
            break;
        default:
            Console.Error.WriteLine($"Unknown option '{args[i]}'. {Usage}");
            return 2;
    }
}

if (pool is not ("default" or "pagefrag") || port == 0)
{
    Console.Error.WriteLine(Usage);
    return 2;
}

using var stats = statsPort != 0 ? GcStatsServer.Start(statsPort) : null;
switch (mode)
{
    case "backend":
        await using (var backend = Backend.Build(port))
        {
            await backend.RunAsync();
        }

        return 0;
    case "proxy":
        await using (var proxy = Proxy.Build(pool, port, backendPort))
        {
            Console.WriteLine($"yarp proxy, pool {pool}, 127.0.0.1:{port} -> 127.0.0.1:{backendPort}");
            await proxy.RunAsync();
        }

        return 0;
    case "relay":
        Console.WriteLine($"pipelines relay, pool {pool}, 127.0.0.1:{port} -> 127.0.0.1:{backendPort}");
        await Relay.RunAsync(pool, port, backendPort);
        return 0;
    default:
        Console.Error.WriteLine(Usage);
        return 2;
}
