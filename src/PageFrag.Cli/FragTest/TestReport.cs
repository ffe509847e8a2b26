using System.Globalization;
using System.Text;
using System.Text.Json;
using PageFrag.Cli.Infrastructure;
using Spectre.Console;

namespace PageFrag.Cli.FragTest;

/// <summary>Writes the results of <c>pagefrag test</c> as tables for people or as one JSON object for scripts.</summary>
internal static class TestReport
{
    private static readonly CultureInfo s_inv = CultureInfo.InvariantCulture;

    /// <summary>Exactly one JSON object: the result itself, or with <c>--allocator all</c> a <c>results</c> array.</summary>
    public static void WriteJson(TestOptions options, IReadOnlyList<AllocatorResult> results, TextWriter output)
    {
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer, new JsonWriterOptions { Indented = true }))
        {
            json.WriteStartObject();
            json.WriteString("command", "test");
            string? failure = results.FirstOrDefault(r => !r.Ok)?.Failure;
            json.WriteBoolean("ok", failure is null);
            if (failure is null)
            {
                json.WriteNull("error");
            }
            else
            {
                json.WriteString("error", failure);
            }

            WriteOptionalInt(json, "push_cpu", options.PushCpu);
            WriteOptionalInt(json, "pop_cpu", options.PopCpu);
            json.WriteNumber("runs", options.Runs);
            if (options.MemoryLimit == 0)
            {
                json.WriteNull("memory_limit");
            }
            else
            {
                json.WriteNumber("memory_limit", options.MemoryLimit);
            }

            if (options.Allocator == AllocatorKind.All)
            {
                json.WriteString("allocator", "all");
                json.WriteNumber("alloc_len", options.AllocLen);
                json.WriteNumber("nr_test", options.NrTest);
                json.WriteNumber("align", options.Align);
                json.WriteBoolean("prepare", options.Prepare);
                json.WriteNumber("ring_size", options.RingSize);
                AllocatorResult? baseline = results.FirstOrDefault(r => r.Allocator == AllocatorKind.PageFrag && r.Ok);
                json.WriteStartArray("results");
                foreach (AllocatorResult r in results)
                {
                    json.WriteStartObject();
                    WriteResultFields(json, r, withStatus: true);
                    if (baseline is not null && r.Ok && r.Mops > 0)
                    {
                        // As pagefrag bench: above 1, PageFrag did better than this allocator.
                        json.WriteNumber("pagefrag_advantage", Ratio.Json(baseline.Mops / r.Mops));
                    }
                    else
                    {
                        json.WriteNull("pagefrag_advantage");
                    }

                    json.WriteEndObject();
                }

                json.WriteEndArray();
            }
            else
            {
                // The top-level ok/error already describe the one result.
                WriteResultFields(json, results[0], withStatus: false);
            }

            json.WriteEndObject();
        }

        output.WriteLine(Encoding.UTF8.GetString(buffer.GetBuffer(), 0, (int)buffer.Length));
    }

    private static void WriteResultFields(Utf8JsonWriter json, AllocatorResult r, bool withStatus)
    {
        json.WriteString("allocator", TestOptions.AllocatorName(r.Allocator));
        json.WriteString("mode", r.Mode);
        json.WriteNumber("alloc_len", r.AllocLen);
        json.WriteNumber("nr_test", r.NrTest);
        json.WriteNumber("align", r.Align);
        json.WriteBoolean("prepare", r.Prepare);
        json.WriteNumber("ring_size", r.RingSize);
        json.WriteNumber("elapsed_s", Math.Round(r.ElapsedSeconds, 6));
        json.WriteStartArray("elapsed_s_runs");
        foreach (double s in r.ElapsedRuns)
        {
            json.WriteNumberValue(Math.Round(s, 6));
        }

        json.WriteEndArray();
        json.WriteNumber("mops", Math.Round(r.Mops, 3));
        json.WriteNumber("dropped", r.Dropped);
        json.WriteNumber("push_wait_share", Math.Round(r.PushWaitShare, 4));
        json.WriteBoolean("threads_took_turns", r.ThreadsTookTurns);
        json.WriteNumber("failed_allocs", r.FailedAllocs);
        json.WriteNumber("gc_allocated_bytes", r.GcAllocatedBytes);
        json.WriteNumber("gc_allocated_bytes_push", r.GcAllocatedBytesPush);
        json.WriteNumber("gc_allocated_bytes_pop", r.GcAllocatedBytesPop);
        json.WriteStartObject("gc_collections");
        json.WriteNumber("gen0", r.Gen0);
        json.WriteNumber("gen1", r.Gen1);
        json.WriteNumber("gen2", r.Gen2);
        json.WriteEndObject();
        WriteOptionalLong(json, "pages_allocated", r.PagesAllocated);
        WriteOptionalLong(json, "pages_reused", r.PagesReused);
        WriteOptionalLong(json, "leaked_pages", r.LeakedPages);
        if (!withStatus)
        {
            return;
        }

        json.WriteBoolean("ok", r.Ok);
        if (r.Failure is null)
        {
            json.WriteNull("error");
        }
        else
        {
            json.WriteString("error", r.Failure);
        }
    }

    /// <summary>A table: one column of figures for one allocator, one row per allocator for <c>all</c>.</summary>
    public static void WriteTable(TestOptions options, IReadOnlyList<AllocatorResult> results, IAnsiConsole console)
    {
        string pins = options.PushCpu is null && options.PopCpu is null
            ? "threads not pinned"
            : $"push CPU {options.PushCpu?.ToString(s_inv) ?? "any"}, pop CPU {options.PopCpu?.ToString(s_inv) ?? "any"}";
        console.MarkupLine(Markup.Escape(
            $"page_frag_test: alloc_len {options.AllocLen}, nr_test {options.NrTest}, ring {options.RingSize}, {pins}, {options.Runs} run(s), median shown" +
            (options.MemoryLimit == 0 ? "" : $", pagefrag memory limit {options.MemoryLimit} B")));

        foreach (AllocatorResult r in results.Where(r => r.Ok))
        {
            // The kernel module's own line, for side-by-side reading with its dmesg output.
            console.WriteLine(string.Create(s_inv,
                $"{r.NrTest} of iterations for {(r.Align == 0 ? "non-aligned" : "aligned")} testing took: {r.ElapsedSeconds * 1e6:0} us ({TestOptions.AllocatorName(r.Allocator)}{(r.Prepare ? ", prepare" : "")})"));
        }

        if (options.Allocator == AllocatorKind.All)
        {
            console.Write(CompareTable(results));
        }
        else
        {
            console.Write(SingleTable(results[0]));
        }

        foreach (AllocatorResult r in results)
        {
            console.Profile.Out.Writer.WriteLine(Verdict(r)); // one line, never wrapped
        }
    }

    /// <summary>The kernel's best published time for its default run (51.2M fragments of 12 B, non-aligned).</summary>
    public const double KernelSeconds = 0.935;

    /// <summary>
    /// The closing line of one allocator: PASS or FAIL, what was checked, and our time beside the kernel's.
    /// </summary>
    public static string Verdict(AllocatorResult r)
    {
        string name = TestOptions.AllocatorName(r.Allocator);
        if (!r.Ok)
        {
            return $"FAIL {name} ({r.Mode}): {r.Failure}";
        }

        string leaks = r.LeakedPages is long leaked ? string.Create(s_inv, $"{leaked} pages leaked") : "pages not tracked";
        string gc = r.GcAllocatedBytes == 0 ? "no GC allocation in the loops" : string.Create(s_inv, $"{r.GcAllocatedBytes:N0} GC bytes in the loops");
        string turns = r.ThreadsTookTurns
            ? "; the push and pop threads took turns (one drop per ring of pushes, no pop in between: no two free cores), so the drop count is nr_test / ring size for any allocator"
            : "";
        string kernel = r.NrTest == 51_200_000 && r.AllocLen == 12 && r.Align == 0 ? "kernel" : "kernel, 51.2M x 12 B";
        return string.Create(s_inv,
            $"PASS {name}: {r.NrTest:N0} x {r.AllocLen} B allocated and freed across threads, {r.Dropped:N0} dropped (ring full; push waited {r.PushWaitShare:P0} of the run), " +
            $"{r.FailedAllocs:N0} failed, {leaks}, {gc}; {r.ElapsedSeconds:0.000} s ({kernel}: {KernelSeconds:0.000} s){turns}");
    }

    private static Table SingleTable(AllocatorResult r)
    {
        var table = new Table().Border(TableBorder.Rounded).AddColumn("").AddColumn(new TableColumn(TestOptions.AllocatorName(r.Allocator)).RightAligned());
        table.AddRow("mode", r.Mode);
        table.AddRow("elapsed", Seconds(r.ElapsedSeconds) + (r.ElapsedRuns.Length > 1 ? $" (median of {r.ElapsedRuns.Length})" : ""));
        table.AddRow("throughput", Mops(r.Mops));
        table.AddRow("dropped (ring full)", Count(r.Dropped));
        table.AddRow("push thread waited", Share(r.PushWaitShare));
        table.AddRow("failed allocations", Count(r.FailedAllocs));
        table.AddRow("GC bytes in loops", Count(r.GcAllocatedBytes));
        table.AddRow("GC collections 0/1/2", Collections(r));
        table.AddRow("pages allocated", Optional(r.PagesAllocated));
        table.AddRow("pages reused in place", Optional(r.PagesReused));
        table.AddRow("leaked pages", Optional(r.LeakedPages));
        table.AddRow("result", r.Ok ? "[green]PASS[/]" : "[red]FAIL[/]");
        return table;
    }

    private static Table CompareTable(IReadOnlyList<AllocatorResult> results)
    {
        AllocatorResult? baseline = results.FirstOrDefault(r => r.Allocator == AllocatorKind.PageFrag && r.Ok);
        var table = new Table().Border(TableBorder.Rounded)
            .AddColumn("allocator")
            .AddColumn("mode")
            .AddColumn(new TableColumn("elapsed").RightAligned())
            .AddColumn(new TableColumn("Mops/s").RightAligned())
            .AddColumn(new TableColumn("pagefrag is").RightAligned())
            .AddColumn(new TableColumn("dropped").RightAligned())
            .AddColumn(new TableColumn("push waited").RightAligned())
            .AddColumn(new TableColumn("failed").RightAligned())
            .AddColumn(new TableColumn("GC bytes").RightAligned())
            .AddColumn(new TableColumn("GCs 0/1/2").RightAligned())
            .AddColumn(new TableColumn("leaked").RightAligned())
            .AddColumn("result");
        foreach (AllocatorResult r in results)
        {
            string ratio = baseline is null || !r.Ok || r.Mops <= 0
                ? "-"
                : r.Allocator == AllocatorKind.PageFrag ? "(baseline)" : Ratio.Text(baseline.Mops / r.Mops);
            table.AddRow(
                TestOptions.AllocatorName(r.Allocator),
                r.Mode,
                Seconds(r.ElapsedSeconds),
                r.Ok ? Mops(r.Mops) : "-",
                ratio,
                Count(r.Dropped),
                Share(r.PushWaitShare),
                Count(r.FailedAllocs),
                Count(r.GcAllocatedBytes),
                Collections(r),
                Optional(r.LeakedPages),
                r.Ok ? "[green]PASS[/]" : "[red]FAIL[/]");
        }

        return table;
    }

    private static string Seconds(double s) => string.Create(s_inv, $"{s:0.000} s");

    private static string Mops(double m) => string.Create(s_inv, $"{m:0.00} Mops/s");

    private static string Count(long n) => n.ToString("N0", s_inv);

    private static string Share(double share) => share.ToString("P0", s_inv);

    private static string Optional(long? n) => n is long v ? Count(v) : "-";

    private static string Collections(AllocatorResult r) => string.Create(s_inv, $"{r.Gen0}/{r.Gen1}/{r.Gen2}");

    private static void WriteOptionalInt(Utf8JsonWriter json, string name, int? value)
    {
        if (value is int v)
        {
            json.WriteNumber(name, v);
        }
        else
        {
            json.WriteNull(name);
        }
    }

    private static void WriteOptionalLong(Utf8JsonWriter json, string name, long? value)
    {
        if (value is long v)
        {
            json.WriteNumber(name, v);
        }
        else
        {
            json.WriteNull(name);
        }
    }
}
