using System.Globalization;

namespace PageFrag.Cli.Bench;

/// <summary>The five scenarios of <c>pagefrag bench</c>, numbered as in the issue.</summary>
internal enum BenchScenario
{
    /// <summary>1. The seed's push/pop test: one thread allocates, another frees.</summary>
    PushPop = 1,

    /// <summary>2. One thread allocates and frees.</summary>
    SingleThread = 2,

    /// <summary>3. Two threads each allocate and each free what the other allocated.</summary>
    BothWays = 3,

    /// <summary>4. One million small messages through an <c>IBufferWriter&lt;byte&gt;</c>.</summary>
    Writer = 4,

    /// <summary>5. Memory kept for a window of live receive buffers.</summary>
    Memory = 5,
}

/// <summary>How the memory scenario picks the buffer to free when the window is full.</summary>
internal enum ReleaseOrder
{
    /// <summary>The oldest (a receive queue consumed in order).</summary>
    Fifo,

    /// <summary>A random live buffer (connections that finish in any order).</summary>
    Random,
}

/// <summary>The options of <c>pagefrag bench</c>.</summary>
/// <remarks>
/// Defaults (full run): every scenario, 3 runs per figure, 5,000,000 operations per run for scenarios 1–3
/// with sizes 12 and 2048 bytes (1, 3) and 12, 256, 1500 and 4096 bytes (2), 1,000,000 messages of 10–300
/// bytes (4), a window of 100,000 buffers renewed 5 times over in both release orders (5). <c>--quick</c>
/// divides everything down to a few seconds in total and makes one run the default.
/// </remarks>
internal sealed record BenchOptions
{
    public const int MaxSize = 4096;
    public const long DefaultOps = 5_000_000;
    public const long QuickOps = 20_000;
    public const int DefaultMessages = 1_000_000;
    public const int QuickMessages = 20_000;
    public const int DefaultWindow = 100_000;
    public const int QuickWindow = 2_000;
    public const int DefaultRuns = 3;

    public static readonly int[] PushPopSizes = [12, 2048];
    public static readonly int[] SingleThreadSizes = [12, 256, 1500, 4096];

    public static readonly string[] ScenarioNames = ["pushpop", "single", "bothways", "writer", "memory"];

    public IReadOnlyList<BenchScenario> Scenarios { get; init; } = Enum.GetValues<BenchScenario>();

    public bool Quick { get; init; }

    public int Runs { get; init; } = DefaultRuns;

    public bool Json { get; init; }

    /// <summary>Sizes for scenarios 1–3 instead of their own defaults; null for the defaults.</summary>
    public IReadOnlyList<int>? Sizes { get; init; }

    /// <summary>Operations per run of scenarios 1–3 (fragments pushed, pairs, fragments per thread).</summary>
    public long Ops { get; init; } = DefaultOps;

    /// <summary>Messages per run of scenario 4.</summary>
    public int Messages { get; init; } = DefaultMessages;

    /// <summary>Live buffers in the window of scenario 5.</summary>
    public int Window { get; init; } = DefaultWindow;

    /// <summary>How many times over scenario 5 renews the whole window once it is full.</summary>
    public int Renewals { get; init; } = 5;

    /// <summary>The release orders scenario 5 measures.</summary>
    public IReadOnlyList<ReleaseOrder> Orders { get; init; } = [ReleaseOrder.Fifo, ReleaseOrder.Random];

    /// <summary>Peers to measure besides PageFrag's own baseline row; null for all.</summary>
    public IReadOnlySet<BenchPeer>? Peers { get; init; }

    /// <summary>Seed of the packet and message size sequences (the same for every peer).</summary>
    public int Seed { get; init; } = 42;

    /// <summary>Measure scenario 5 in this process instead of one child process per peer and run.</summary>
    public bool InProcess { get; init; }

    /// <summary>How long a thread of scenarios 1 and 3 may make no progress before the run fails.</summary>
    public TimeSpan Watchdog { get; init; } = TimeSpan.FromSeconds(10);

    public IReadOnlyList<int> SizesFor(BenchScenario scenario) =>
        Sizes ?? (scenario == BenchScenario.SingleThread ? SingleThreadSizes : PushPopSizes);

    /// <summary>The peers measured in <paramref name="scenario"/>: the chosen ones, and always the baseline.</summary>
    public IReadOnlyList<BenchPeer> PeersFor(BenchScenario scenario) =>
        [.. BenchPeers.For(scenario).Where(p => p == BenchPeer.PageFrag || Peers is null || Peers.Contains(p))];

    /// <summary>The reason these options cannot run, or null when they can.</summary>
    public string? Validate()
    {
        if (Scenarios.Count == 0)
        {
            return "--scenario names no scenario.";
        }

        if (Runs <= 0)
        {
            return $"--runs must be positive, got {Runs}.";
        }

        if (Sizes is not null)
        {
            if (Sizes.Count == 0)
            {
                return "--sizes names no size.";
            }

            foreach (int size in Sizes)
            {
                if (size is <= 0 or > MaxSize)
                {
                    return $"--sizes must be from 1 to {MaxSize} bytes (Kestrel's block and the page pool's page), got {size}.";
                }
            }
        }

        if (Ops <= 0)
        {
            return $"--ops must be positive, got {Ops}.";
        }

        if (Messages <= 0)
        {
            return $"--messages must be positive, got {Messages}.";
        }

        if (Window <= 0)
        {
            return $"--window must be positive, got {Window}.";
        }

        if (Renewals <= 0)
        {
            return $"--renewals must be positive, got {Renewals}.";
        }

        return Watchdog <= TimeSpan.Zero ? "The watchdog time must be positive." : null;
    }

    /// <summary>Parses <c>--scenario</c>: numbers or names, separated by commas, or <c>all</c>.</summary>
    public static bool TryParseScenarios(IEnumerable<string> values, out List<BenchScenario> scenarios, out string? error)
    {
        scenarios = [];
        error = null;
        foreach (string raw in values.SelectMany(v => v.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)))
        {
            if (raw.Equals("all", StringComparison.OrdinalIgnoreCase))
            {
                scenarios.AddRange(Enum.GetValues<BenchScenario>());
                continue;
            }

            int index = Array.FindIndex(ScenarioNames, n => n.Equals(raw, StringComparison.OrdinalIgnoreCase));
            if (index < 0 && int.TryParse(raw, NumberStyles.None, CultureInfo.InvariantCulture, out int number) && number is >= 1 and <= 5)
            {
                index = number - 1;
            }

            if (index < 0)
            {
                error = $"--scenario: unknown scenario '{raw}'; use 1-5, {string.Join(", ", ScenarioNames)} or all.";
                return false;
            }

            scenarios.Add((BenchScenario)(index + 1));
        }

        scenarios = [.. scenarios.Distinct().Order()];
        return true;
    }

    /// <summary>Parses a comma-separated list of integers (<c>--sizes 12,1500</c>).</summary>
    public static bool TryParseSizes(string value, out List<int> sizes, out string? error)
    {
        sizes = [];
        error = null;
        foreach (string raw in value.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            if (!int.TryParse(raw, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out int size))
            {
                error = $"--sizes: '{raw}' is not a whole number of bytes.";
                return false;
            }

            sizes.Add(size);
        }

        return true;
    }

    public static string ScenarioName(BenchScenario scenario) => ScenarioNames[(int)scenario - 1];

    public static string ScenarioTitle(BenchScenario scenario) => scenario switch
    {
        BenchScenario.PushPop => "1. The seed's push/pop test: one thread allocates, the other frees",
        BenchScenario.SingleThread => "2. One thread: alloc + touch + free",
        BenchScenario.BothWays => "3. Both threads allocate, each frees what the other allocated",
        BenchScenario.Writer => "4. Writer: small messages through IBufferWriter<byte> into a sequence, then released",
        BenchScenario.Memory => "5. Memory: IMIX receive mix held in a window of live buffers",
        _ => throw new ArgumentOutOfRangeException(nameof(scenario), scenario, null),
    };
}
