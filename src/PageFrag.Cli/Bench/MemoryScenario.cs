using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;

namespace PageFrag.Cli.Bench;

/// <summary>
/// Scenario 5: a receive mix held in a window of live buffers. The window is filled, then renewed several
/// times over (free one buffer, allocate the next packet into its slot), either oldest first (FIFO) or at
/// random. The figure is the bytes the allocator keeps for the live buffers per byte they hold, sampled
/// in steady state (after one whole renewal of the window) and taken as the median of the samples; beside
/// it the peak working set and the garbage collections of the process.
/// </summary>
/// <remarks>
/// <para><b>The mix.</b> IMIX (7:4:1 small : 576 B : 1500 B packets), its seven small parts split 3:4
/// between the seed's 12-byte fragments and 64-byte packets, plus one 9000-byte jumbo frame per 120 IMIX
/// packets: per 121 packets, 30 × 12 B, 40 × 64 B, 40 × 576 B, 10 × 1500 B and 1 × 9000 B (413 B on
/// average). The sequence is drawn from a seeded generator, the same for every peer.</para>
/// <para><b>Isolation.</b> Each peer and run is measured in a child process of its own (the same
/// executable, <c>bench --child</c>), so the peak working set and the collections are that allocator's
/// alone and no peer reuses memory another left behind. <c>--in-process</c> measures here instead; the
/// working set figures then mix every peer measured before.</para>
/// </remarks>
internal static class MemoryScenario
{
    /// <summary>The receive mix: (packet size, weight).</summary>
    public static readonly (int Size, int Weight)[] Mix = [(12, 30), (64, 40), (576, 40), (1500, 10), (9000, 1)];

    public const string MixDescription = "IMIX 7:4:1 with the small part split 3:4 between 12 B and 64 B, plus 1 jumbo (9000 B) per 120 packets: 30x12 B, 40x64 B, 40x576 B, 10x1500 B, 1x9000 B per 121";

    /// <summary>Samples taken over the steady-state part of a run.</summary>
    private const int Samples = 20;

    public static int[] PacketSizes(int count, int seed)
    {
        int total = Mix.Sum(m => m.Weight);
        var random = new Random(seed);
        int[] sizes = new int[count];
        for (int i = 0; i < sizes.Length; i++)
        {
            int pick = random.Next(total);
            foreach ((int size, int weight) in Mix)
            {
                if (pick < weight)
                {
                    sizes[i] = size;
                    break;
                }

                pick -= weight;
            }
        }

        return sizes;
    }

    /// <summary>Measures one peer in this process.</summary>
    public static RunFigures RunHere(BenchPeer peer, ReleaseOrder order, int window, int renewals, int seed, PeerResources peers, bool isolated)
    {
        long total = window + ((long)window * renewals);
        int[] sizes = PacketSizes((int)Math.Min(total, int.MaxValue), seed);
        int[] slotSizes = new int[window];
        double[] samples = new double[Samples + 1];
        double[] trueSamples = new double[Samples + 1];
        var random = new Random(seed + 1);

        // Steady state starts once the window has been renewed once (or at once when it is renewed only once).
        long steadyFrom = renewals >= 2 ? (2L * window) - 1 : window - 1;
        long sampleEvery = Math.Max(1, (total - 1 - steadyFrom) / Samples);

        using IMemoryPeer target = MemoryPeers.Create(peer, window, peers);
        using Process self = Process.GetCurrentProcess();
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();
        self.Refresh();
        long baselineWorkingSet = self.WorkingSet64;

        GcSnapshot gc = GcSnapshot.Take();
        long samplingBytes = 0;
        long requested = 0;
        long maxKept = 0;
        int taken = 0;
        long start = Stopwatch.GetTimestamp();
        for (long i = 0; i < total; i++)
        {
            int slot;
            if (i < window)
            {
                slot = (int)i;
            }
            else
            {
                slot = order == ReleaseOrder.Fifo ? (int)(i % window) : random.Next(window);
                target.Free(slot);
                requested -= slotSizes[slot];
            }

            int size = sizes[i];
            target.Alloc(slot, size);
            slotSizes[slot] = size;
            requested += size;

            if (i >= steadyFrom && (i - steadyFrom) % sampleEvery == 0 && taken < samples.Length)
            {
                long before = GC.GetAllocatedBytesForCurrentThread();
                long kept = target.KeptBytes();
                maxKept = Math.Max(maxKept, kept);
                samples[taken] = (double)kept / requested;
                trueSamples[taken] = target.TrueSizeBytes is long t ? (double)t / requested : double.NaN;
                taken++;
                samplingBytes += GC.GetAllocatedBytesForCurrentThread() - before;
            }
        }

        long ticks = Stopwatch.GetTimestamp() - start;
        RunFigures figures = gc.Since(0);
        figures = figures with { GcBytes = figures.GcBytes - samplingBytes };
        self.Refresh();
        long peak = self.PeakWorkingSet64;
        long? leaked = target.Finish();

        double median = Statistics.Median(samples.Take(taken));
        var extra = new List<KeyValuePair<string, double>>
        {
            new("kept_bytes_max", maxKept),
            new("requested_bytes_last", requested),
            new("kept_per_requested_max", samples.Take(taken).Max()),
            new("samples", taken),
            new("peak_working_set_bytes", peak),
            new("baseline_working_set_bytes", baselineWorkingSet),
            new("working_set_growth_bytes", peak - baselineWorkingSet),
            new("isolated", isolated ? 1 : 0),
            new("elapsed_s", Statistics.Seconds(ticks)),
        };
        if (target.TrueSizeBytes is not null)
        {
            extra.Insert(0, new("truesize_per_requested", Statistics.Median(trueSamples.Take(taken))));
        }

        return figures with { Value = median, LeakedPages = leaked, Extra = extra };
    }

    /// <summary>Measures one peer in a child process of its own and reads back its figures.</summary>
    public static RunFigures RunInChild(BenchPeer peer, ReleaseOrder order, int window, int renewals, int seed, TimeSpan timeout)
    {
        ProcessStartInfo start = ChildStartInfo(
        [
            "bench", "--child", BenchPeers.Name(peer), "--child-order", OrderName(order),
            "--window", window.ToString(CultureInfo.InvariantCulture),
            "--renewals", renewals.ToString(CultureInfo.InvariantCulture),
            "--seed", seed.ToString(CultureInfo.InvariantCulture),
        ]);
        using Process child = Process.Start(start) ?? throw new BenchFailureException($"could not start {start.FileName}.");
        Task<string> stdout = child.StandardOutput.ReadToEndAsync();
        Task<string> stderr = child.StandardError.ReadToEndAsync();
        if (!child.WaitForExit(timeout))
        {
            child.Kill(entireProcessTree: true);
            throw new BenchFailureException($"the child process measuring {BenchPeers.Name(peer)} did not finish within {timeout.TotalSeconds:0} s.");
        }

        child.WaitForExit();
        string output = stdout.Result;
        if (child.ExitCode != ExitCodes.Success)
        {
            string error = stderr.Result.Trim();
            throw new BenchFailureException($"the child process measuring {BenchPeers.Name(peer)} exited with code {child.ExitCode}: {(error.Length > 0 ? error : output.Trim())}");
        }

        return ReadFigures(output);
    }

    public static string OrderName(ReleaseOrder order) => order == ReleaseOrder.Fifo ? "fifo" : "random";

    public static bool TryParseOrder(string name, out ReleaseOrder order)
    {
        order = name.Equals("random", StringComparison.OrdinalIgnoreCase) ? ReleaseOrder.Random : ReleaseOrder.Fifo;
        return name.Equals("random", StringComparison.OrdinalIgnoreCase) || name.Equals("fifo", StringComparison.OrdinalIgnoreCase);
    }

    /// <summary>The figures of one child measurement: exactly one JSON object on standard output.</summary>
    public static void WriteFigures(RunFigures figures, TextWriter output)
    {
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer))
        {
            json.WriteStartObject();
            json.WriteNumber("value", figures.Value);
            json.WriteNumber("gc_allocated_bytes", figures.GcBytes);
            json.WriteNumber("gen0", figures.Gen0);
            json.WriteNumber("gen1", figures.Gen1);
            json.WriteNumber("gen2", figures.Gen2);
            if (figures.LeakedPages is long leaked)
            {
                json.WriteNumber("leaked_pages", leaked);
            }
            else
            {
                json.WriteNull("leaked_pages");
            }

            json.WriteStartObject("extra");
            foreach (KeyValuePair<string, double> pair in figures.Extra)
            {
                json.WriteNumber(pair.Key, pair.Value);
            }

            json.WriteEndObject();
            json.WriteEndObject();
        }

        output.WriteLine(Encoding.UTF8.GetString(buffer.GetBuffer(), 0, (int)buffer.Length));
    }

    private static RunFigures ReadFigures(string text)
    {
        try
        {
            using JsonDocument doc = JsonDocument.Parse(text);
            JsonElement root = doc.RootElement;
            JsonElement leaked = root.GetProperty("leaked_pages");
            return new RunFigures
            {
                Value = root.GetProperty("value").GetDouble(),
                GcBytes = root.GetProperty("gc_allocated_bytes").GetInt64(),
                Gen0 = root.GetProperty("gen0").GetInt32(),
                Gen1 = root.GetProperty("gen1").GetInt32(),
                Gen2 = root.GetProperty("gen2").GetInt32(),
                LeakedPages = leaked.ValueKind == JsonValueKind.Null ? null : leaked.GetInt64(),
                Extra = [.. root.GetProperty("extra").EnumerateObject().Select(p => new KeyValuePair<string, double>(p.Name, p.Value.GetDouble()))],
            };
        }
        catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidOperationException or FormatException)
        {
            throw new BenchFailureException($"the child process wrote no figures: {e.Message} ({text.Trim()})");
        }
    }

    /// <summary>
    /// How to run this tool again: through the <c>dotnet</c> host with this assembly (also when the caller is a
    /// test host), or through the tool's own launcher when that is what is running.
    /// </summary>
    private static ProcessStartInfo ChildStartInfo(IEnumerable<string> args)
    {
        var start = new ProcessStartInfo
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        string assembly = typeof(Program).Assembly.Location;
        string? process = Environment.ProcessPath;
        string launcher = Path.Combine(Path.GetDirectoryName(assembly)!, Path.GetFileNameWithoutExtension(assembly));
        if (process is not null && string.Equals(Path.GetFullPath(process), Path.GetFullPath(launcher), StringComparison.Ordinal))
        {
            start.FileName = process;
        }
        else
        {
            start.FileName = DotNetHost(process);
            start.ArgumentList.Add(assembly);
        }

        foreach (string arg in args)
        {
            start.ArgumentList.Add(arg);
        }

        // The child's progress and colours would only disturb the one JSON object it writes.
        start.Environment["NO_COLOR"] = "1";
        return start;
    }

    private static string DotNetHost(string? process)
    {
        string exe = OperatingSystem.IsWindows() ? "dotnet.exe" : "dotnet";
        if (process is not null && Path.GetFileName(process).Equals(exe, StringComparison.OrdinalIgnoreCase))
        {
            return process;
        }

        // .../dotnet/shared/Microsoft.NETCore.App/<version>/System.Private.CoreLib.dll → .../dotnet/dotnet
        string? runtime = Path.GetDirectoryName(typeof(object).Assembly.Location);
        string? root = runtime is null ? null : Path.GetFullPath(Path.Combine(runtime, "..", "..", ".."));
        string? candidate = root is null ? null : Path.Combine(root, exe);
        return candidate is not null && File.Exists(candidate) ? candidate : exe;
    }
}
