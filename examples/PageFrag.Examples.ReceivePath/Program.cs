using PageFrag.Examples.ReceivePath;

// A UDP receive path on 127.0.0.1 built on a PagePool, the job the kernel's page pool exists for:
//   dotnet run --project examples/PageFrag.Examples.ReceivePath -- [datagrams] [max datagram size]
// Exit code 0 when every datagram arrived intact and every page came back to the allocator.
int count = args.Length > 0 ? int.Parse(args[0], System.Globalization.CultureInfo.InvariantCulture) : 50_000;
int maxSize = args.Length > 1 ? int.Parse(args[1], System.Globalization.CultureInfo.InvariantCulture) : 9000;

ReceivePathResult result = ReceivePathDemo.Run(new ReceivePathOptions { Datagrams = count, MaxDatagramSize = maxSize });
Console.WriteLine(result.Report());
return result.IsClean ? 0 : 1;
