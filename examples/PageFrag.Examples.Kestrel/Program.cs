using PageFrag.Examples.Kestrel;

// Usage: PageFrag.Examples.Kestrel [--pool default|pagefrag] [--urls http://127.0.0.1:5080] [--arena-size BYTES] [--discard on|off]
string pool = "pagefrag", urls = "http://127.0.0.1:5080";
int? arenaSize = null;
bool discard = true;
for (int i = 0; i + 1 < args.Length; i += 2)
{
    switch (args[i])
    {
        case "--pool":
            pool = args[i + 1];
            break;
        case "--urls":
            urls = args[i + 1];
            break;
        case "--arena-size" when int.TryParse(args[i + 1], out int size):
            arenaSize = size;
            break;
        case "--discard" when args[i + 1] is "on" or "off":
            discard = args[i + 1] == "on";
            break;
        default:
            Console.Error.WriteLine($"Unknown option '{args[i]}'. Usage: [--pool default|pagefrag] [--urls URL] [--arena-size BYTES] [--discard on|off]");
            return 2;
    }
}

try
{
    await using var app = KestrelExample.Build(pool, urls, arenaSize, discard);
    Console.WriteLine($"pool {pool}, listening on {urls}");
    await app.RunAsync();
    return 0;
}
catch (ArgumentException e)
{
    Console.Error.WriteLine(e.Message);
    return 2;
}
