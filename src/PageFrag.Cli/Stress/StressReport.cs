using System.Globalization;
using System.Text;
using System.Text.Json;
using Spectre.Console;

namespace PageFrag.Cli.Stress;

/// <summary>Writes the result of <c>pagefrag stress</c> as a table for people or as one JSON object for scripts.</summary>
internal static class StressReport
{
    private static readonly CultureInfo s_inv = CultureInfo.InvariantCulture;

    public static void WriteJson(StressResult r, TextWriter output)
    {
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer, new JsonWriterOptions { Indented = true }))
        {
            Counters t = r.Totals;
            json.WriteStartObject();
            json.WriteString("command", "stress");
            json.WriteBoolean("ok", r.Ok);
            if (r.Ok)
            {
                json.WriteNull("error");
            }
            else
            {
                json.WriteString("error", r.Violations.FirstOrDefault() ?? "violations");
            }

            json.WriteNumber("seconds", r.Options.Seconds);
            json.WriteNumber("elapsed_s", Math.Round(r.ElapsedSeconds, 3));
            json.WriteNumber("threads", r.Options.Threads);
            json.WriteNumber("owners", r.Options.Owners);
            json.WriteNumber("freers", r.Options.Freers);
            json.WriteNumber("seed", r.Seed);
            json.WriteNumber("memory_limit", r.Options.MemoryLimit);
            json.WriteNumber("reserve_bytes", r.Options.ReserveBytes);

            json.WriteStartObject("operations");
            json.WriteNumber("cache_allocs", t.CacheAllocs);
            json.WriteNumber("cache_commits", t.CacheCommits);
            json.WriteNumber("cache_coalesced", t.CacheCoalesced);
            json.WriteNumber("cache_aborts", t.CacheAborts);
            json.WriteNumber("cache_free_local", t.CacheFreeLocal);
            json.WriteNumber("cache_drains", t.CacheDrains);
            json.WriteNumber("reserve_cache_allocs", t.ReserveAllocs);
            json.WriteNumber("pool_allocs", t.PoolAllocs);
            json.WriteNumber("pool_puts_by_owner", t.PoolPutsByOwner);
            json.WriteNumber("pools_retired_in_flight", t.PoolsRetired);
            json.WriteNumber("writer_messages", t.WriterMessages);
            json.WriteNumber("writer_bytes", t.WriterBytes);
            json.WriteNumber("memory_pool_rents", t.MemoryPoolRents);
            json.WriteNumber("handed_off", t.HandedOff);
            json.WriteNumber("freed_by_other_threads", t.FreedByOtherThreads);
            json.WriteNumber("freed_by_owner_when_full", t.FreedByOwnerWhenFull);
            json.WriteEndObject();

            json.WriteStartObject("failed_allocations");
            json.WriteNumber("cache", t.CacheFailures);
            json.WriteNumber("pool", t.PoolFailures);
            json.WriteNumber("writer", t.WriterFailures);
            json.WriteNumber("memory_pool", t.MemoryPoolFailures);
            json.WriteEndObject();

            json.WriteStartObject("fault_windows");
            json.WriteNumber("high_order_failing", r.HighOrderWindows);
            json.WriteNumber("every_allocation_failing", r.AllFailingWindows);
            json.WriteNumber("one_in_five_failing", r.OneInFiveWindows);
            json.WriteNumber("only_reserve_left", r.ReserveOnlyWindows);
            json.WriteNumber("recoveries", r.Recoveries);
            json.WriteEndObject();

            json.WriteNumber("reserve_cache_pfmemalloc_pages", t.ReservePfMemallocPages);
            json.WriteNumber("checkpoints", r.Checkpoints);
            json.WriteNumber("trims", r.Trims);
            json.WriteNumber("violation_count", r.ViolationCount);
            json.WriteStartArray("violations");
            foreach (string v in r.Violations)
            {
                json.WriteStringValue(v);
            }

            json.WriteEndArray();
            if (r.End is EndAccounting end)
            {
                json.WriteStartObject("end");
                json.WriteNumber("leaked_pages", end.PagesInUse);
                json.WriteBoolean("consistent", end.Consistent);
                json.WriteNumber("arenas_after_trim", end.ArenasAfterTrim);
                json.WriteNumber("pools", end.Pools);
                json.WriteNumber("pools_released", end.PoolsReleased);
                json.WriteNumber("pfmemalloc_pages", end.PfMemallocPages);
                json.WriteNumber("allocator_failures", end.AllocatorFailures);
                json.WriteEndObject();
            }
            else
            {
                json.WriteNull("end");
            }

            json.WriteEndObject();
        }

        output.WriteLine(Encoding.UTF8.GetString(buffer.GetBuffer(), 0, (int)buffer.Length));
    }

    public static void WriteTable(StressResult r, IAnsiConsole console)
    {
        Counters t = r.Totals;
        console.MarkupLine(Markup.Escape(string.Create(s_inv,
            $"pagefrag stress: {r.ElapsedSeconds:0.0} s, {r.Options.Owners} owner and {r.Options.Freers} freer threads, seed {r.Seed}, limit {r.Options.MemoryLimit >> 20} MiB with a {r.Options.ReserveBytes >> 20} MiB reserve")));
        var table = new Table().Border(TableBorder.Rounded).HideHeaders().AddColumn("").AddColumn(new TableColumn("").RightAligned());
        table.AddRow("cache: allocs / commits / coalesced", $"{N(t.CacheAllocs)} / {N(t.CacheCommits)} / {N(t.CacheCoalesced)}");
        table.AddRow("cache: aborts / local frees / drains", $"{N(t.CacheAborts)} / {N(t.CacheFreeLocal)} / {N(t.CacheDrains)}");
        table.AddRow("reserve cache: allocs / pfmemalloc pages", $"{N(t.ReserveAllocs)} / {N(t.ReservePfMemallocPages)}");
        table.AddRow("pool: allocs / owner puts / retired in flight", $"{N(t.PoolAllocs)} / {N(t.PoolPutsByOwner)} / {N(t.PoolsRetired)}");
        table.AddRow("writer: messages / bytes", $"{N(t.WriterMessages)} / {N(t.WriterBytes)}");
        table.AddRow("memory pool rents", N(t.MemoryPoolRents));
        table.AddRow("freed on other threads / by owner (queue full)", $"{N(t.FreedByOtherThreads)} / {N(t.FreedByOwnerWhenFull)}");
        table.AddRow("failed allocations: cache / pool / writer / memory pool", $"{N(t.CacheFailures)} / {N(t.PoolFailures)} / {N(t.WriterFailures)} / {N(t.MemoryPoolFailures)}");
        table.AddRow("fault windows: high order / all / 1 in 5 / reserve only", $"{N(r.HighOrderWindows)} / {N(r.AllFailingWindows)} / {N(r.OneInFiveWindows)} / {N(r.ReserveOnlyWindows)}");
        table.AddRow("recoveries after a window", N(r.Recoveries));
        table.AddRow("checkpoints (full accounting) / trims", $"{N(r.Checkpoints)} / {N(r.Trims)}");
        table.AddRow("leaked pages at the end", r.End is EndAccounting e ? N(e.PagesInUse) : "-");
        table.AddRow("pools released", r.End is EndAccounting p ? $"{p.PoolsReleased} of {p.Pools}" : "-");
        table.AddRow("violations", N(r.ViolationCount));
        table.AddRow("result", r.Ok ? "[green]PASS[/]" : "[red]FAIL[/]");
        console.Write(table);
        foreach (string v in r.Violations)
        {
            console.MarkupLine("[red]violation:[/] " + Markup.Escape(v));
        }
    }

    private static string N(long n) => n.ToString("N0", s_inv);
}
