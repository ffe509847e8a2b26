using System.Globalization;
using System.Text;
using System.Text.Json;
using PageFrag.Cli.Infrastructure;
using Spectre.Console;

namespace PageFrag.Cli.Bench;

/// <summary>Writes the results of <c>pagefrag bench</c> as tables for people or as one JSON object for scripts.</summary>
internal static class BenchReport
{
    private static readonly CultureInfo s_inv = CultureInfo.InvariantCulture;

    /// <summary>
    /// Exactly one JSON object: <c>scenarios[].cases[].results[]</c>, one result per peer with its median
    /// <c>value</c>, every run, <c>pagefrag_advantage</c> (above 1: PageFrag did better) and its GC figures;
    /// then <c>aims[]</c>.
    /// </summary>
    public static void WriteJson(BenchReportData report, TextWriter output)
    {
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer, new JsonWriterOptions { Indented = true }))
        {
            BenchOptions options = report.Options;
            json.WriteStartObject();
            json.WriteString("command", "bench");
            json.WriteBoolean("ok", report.Ok);
            WriteOptionalString(json, "error", report.FirstFailure());
            json.WriteBoolean("quick", options.Quick);
            json.WriteNumber("runs", options.Runs);
            json.WriteNumber("seed", options.Seed);
            WriteOptionalString(json, "load_average_before", report.LoadBefore);
            WriteOptionalString(json, "load_average_after", report.LoadAfter);
            json.WriteNumber("processors", Environment.ProcessorCount);
            json.WriteString("runtime", $".NET {Environment.Version}");
            json.WriteNumber("elapsed_s", Math.Round(report.Elapsed.TotalSeconds, 3));
            json.WriteStartObject("versions");
            foreach (BenchPeer peer in (BenchPeer[])[BenchPeer.Kestrel, BenchPeer.DotNettyHeap, BenchPeer.RecyclableMemoryStream])
            {
                json.WriteString(BenchPeers.Name(peer), PeerResources.Version(peer));
            }

            json.WriteEndObject();

            json.WriteStartArray("scenarios");
            foreach (ScenarioResult s in report.Scenarios)
            {
                json.WriteStartObject();
                json.WriteNumber("scenario", (int)s.Scenario);
                json.WriteString("name", BenchOptions.ScenarioName(s.Scenario));
                json.WriteString("title", BenchOptions.ScenarioTitle(s.Scenario));
                json.WriteString("unit", s.Unit);
                json.WriteBoolean("lower_is_better", s.LowerIsBetter);
                json.WriteStartArray("notes");
                foreach (string note in s.Notes)
                {
                    json.WriteStringValue(note);
                }

                json.WriteEndArray();
                json.WriteStartArray("cases");
                foreach (CaseResult c in s.Cases)
                {
                    json.WriteStartObject();
                    json.WriteString("case", c.Name);
                    if (c.Size is int size)
                    {
                        json.WriteNumber("size", size);
                    }
                    else
                    {
                        json.WriteNull("size");
                    }

                    json.WriteStartArray("results");
                    foreach (PeerResult r in c.Rows)
                    {
                        WriteRow(json, s, r);
                    }

                    json.WriteEndArray();
                    json.WriteEndObject();
                }

                json.WriteEndArray();
                json.WriteEndObject();
            }

            json.WriteEndArray();
            json.WriteStartArray("aims");
            foreach (AimResult aim in report.Aims)
            {
                json.WriteStartObject();
                json.WriteNumber("scenario", (int)aim.Scenario);
                json.WriteString("case", aim.Case);
                json.WriteString("aim", aim.Aim);
                json.WriteBoolean("met", aim.Met);
                json.WriteString("detail", aim.Detail);
                json.WriteEndObject();
            }

            json.WriteEndArray();
            json.WriteEndObject();
        }

        output.WriteLine(Encoding.UTF8.GetString(buffer.GetBuffer(), 0, (int)buffer.Length));
    }

    private static void WriteRow(Utf8JsonWriter json, ScenarioResult s, PeerResult r)
    {
        json.WriteStartObject();
        json.WriteString("peer", BenchPeers.Name(r.Peer));
        json.WriteString("display", BenchPeers.Display(r.Peer, s.Scenario));
        json.WriteBoolean("pagefrag", BenchPeers.IsPageFrag(r.Peer));
        json.WriteBoolean("ok", r.Ok);
        WriteOptionalString(json, "error", r.Failure);
        if (r.Runs.Count > 0)
        {
            json.WriteNumber("value", Round(r.Median));
        }
        else
        {
            json.WriteNull("value");
        }

        json.WriteStartArray("runs");
        foreach (RunFigures run in r.Runs)
        {
            json.WriteNumberValue(Round(run.Value));
        }

        json.WriteEndArray();
        if (r.Advantage is double advantage)
        {
            json.WriteNumber("pagefrag_advantage", Ratio.Json(advantage));
        }
        else
        {
            json.WriteNull("pagefrag_advantage");
        }

        json.WriteNumber("gc_allocated_bytes", r.GcBytes);
        json.WriteStartObject("gc_collections");
        json.WriteNumber("gen0", r.Gen0);
        json.WriteNumber("gen1", r.Gen1);
        json.WriteNumber("gen2", r.Gen2);
        json.WriteEndObject();
        if (r.LeakedPages is long leaked)
        {
            json.WriteNumber("leaked_pages", leaked);
        }
        else
        {
            json.WriteNull("leaked_pages");
        }

        json.WriteStartObject("extra");
        if (r.MedianRun is RunFigures median)
        {
            foreach (KeyValuePair<string, double> pair in median.Extra)
            {
                json.WriteNumber(pair.Key, Round(pair.Value));
            }
        }

        json.WriteEndObject();
        json.WriteEndObject();
    }

    /// <summary>One table per scenario, the aims, and the conditions of the run.</summary>
    public static void WriteTables(BenchReportData report, IAnsiConsole console)
    {
        BenchOptions options = report.Options;
        console.MarkupLine(Markup.Escape(string.Create(s_inv,
            $"pagefrag bench: {options.Runs} run(s) per figure, median shown{(options.Quick ? ", quick counts" : "")}; {Environment.ProcessorCount} CPUs, .NET {Environment.Version}; load average {report.LoadBefore ?? "n/a"} before, {report.LoadAfter ?? "n/a"} after; {report.Elapsed.TotalSeconds:0} s.")));
        console.MarkupLine(Markup.Escape("'PageFrag is' = the ratio to PageFrag's first row taken within each run, median over the runs (above 1x: PageFrag better)."));
        foreach (ScenarioResult s in report.Scenarios)
        {
            console.WriteLine();
            console.MarkupLine($"[bold]{Markup.Escape(BenchOptions.ScenarioTitle(s.Scenario))}[/]");
            foreach (string note in s.Notes)
            {
                console.MarkupLine(Markup.Escape(note));
            }

            console.Write(Table(s));
        }

        if (report.Aims.Count > 0)
        {
            console.WriteLine();
            console.MarkupLine("[bold]Aims[/]");
            foreach (IGrouping<(BenchScenario Scenario, string Aim), AimResult> group in report.Aims.GroupBy(a => (a.Scenario, a.Aim)))
            {
                console.MarkupLine($"{(int)group.Key.Scenario}. {Markup.Escape(group.Key.Aim)}:");
                foreach (AimResult aim in group)
                {
                    string verdict = aim.Met ? "[green]met[/]" : "[red]missed[/]";
                    console.MarkupLine($"   {Markup.Escape(aim.Case)}: {verdict} ({Markup.Escape(aim.Detail)})");
                }
            }
        }
    }

    private static Table Table(ScenarioResult s)
    {
        var table = new Table().Border(TableBorder.Rounded)
            .AddColumn("case")
            .AddColumn("allocator")
            .AddColumn(new TableColumn(Markup.Escape(s.Scenario == BenchScenario.Memory ? "kept/requested" : s.Unit)).RightAligned())
            .AddColumn(new TableColumn("PageFrag is").RightAligned());
        bool memory = s.Scenario == BenchScenario.Memory;
        if (memory)
        {
            table.AddColumn(new TableColumn("truesize/req").RightAligned())
                .AddColumn(new TableColumn("peak WS").RightAligned())
                .AddColumn(new TableColumn("WS growth").RightAligned());
        }
        else if (s.Scenario == BenchScenario.Writer)
        {
            table.AddColumn(new TableColumn("segments").RightAligned());
        }

        table.AddColumn(new TableColumn("GC bytes").RightAligned())
            .AddColumn(new TableColumn("GCs 0/1/2").RightAligned())
            .AddColumn(new TableColumn("leaked").RightAligned());

        foreach (CaseResult c in s.Cases)
        {
            bool first = true;
            foreach (PeerResult r in c.Rows)
            {
                var cells = new List<string>
                {
                    first ? Markup.Escape(c.Name) : "",
                    Markup.Escape(BenchPeers.Display(r.Peer, s.Scenario)),
                };
                first = false;
                if (!r.Ok && r.Runs.Count == 0)
                {
                    cells.Add("[red]FAILED[/]");
                    cells.Add(Markup.Escape(Shorten(r.Failure!)));
                    while (cells.Count < table.Columns.Count)
                    {
                        cells.Add("");
                    }

                    table.AddRow(cells.ToArray());
                    continue;
                }

                cells.Add(Value(s, r.Median) + (r.Ok ? "" : " [red]FAILED[/]"));
                cells.Add(Advantage(s, r));
                RunFigures? median = r.MedianRun;
                if (memory)
                {
                    cells.Add(median?.ExtraValue("truesize_per_requested") is double t ? t.ToString("0.000", s_inv) : "-");
                    cells.Add(Bytes(median?.ExtraValue("peak_working_set_bytes")));
                    cells.Add(Bytes(median?.ExtraValue("working_set_growth_bytes")));
                }
                else if (s.Scenario == BenchScenario.Writer)
                {
                    cells.Add(median?.ExtraValue("segments") is double segments ? segments.ToString("N0", s_inv) : "-");
                }

                cells.Add(r.GcBytes.ToString("N0", s_inv));
                cells.Add(string.Create(s_inv, $"{r.Gen0}/{r.Gen1}/{r.Gen2}"));
                cells.Add(r.LeakedPages is long leaked ? leaked.ToString("N0", s_inv) : "-");
                table.AddRow(cells.ToArray());
            }
        }

        return table;
    }

    private static string Value(ScenarioResult s, double value) =>
        value.ToString(s.Scenario == BenchScenario.Memory ? "0.000" : "0.00", s_inv);

    private static string Advantage(ScenarioResult s, PeerResult r)
    {
        if (r.Peer == BenchPeer.PageFrag)
        {
            return "(baseline)";
        }

        if (r.Advantage is not double a)
        {
            return "-";
        }

        string text = Ratio.Text(a, s.Scenario == BenchScenario.Memory ? "leaner" : "faster");
        return a >= 1 ? text : $"[yellow]{Markup.Escape(text)}[/]";
    }

    private static string Bytes(double? bytes) => bytes is double b ? string.Create(s_inv, $"{b / (1024 * 1024):0.0} MiB") : "-";

    private static string Shorten(string text) => text.Length <= 100 ? text : text[..97] + "...";

    private static double Round(double value) => double.IsFinite(value) ? Math.Round(value, 4) : 0;

    private static void WriteOptionalString(Utf8JsonWriter json, string name, string? value)
    {
        if (value is null)
        {
            json.WriteNull(name);
        }
        else
        {
            json.WriteString(name, value);
        }
    }
}
