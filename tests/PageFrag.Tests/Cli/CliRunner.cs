using System.Text.Json;
using PageFrag.Cli;
using PageFrag.Cli.Infrastructure;

namespace PageFrag.Tests.Cli;

/// <summary>Runs a <c>pagefrag</c> command line in-process and captures what it writes.</summary>
internal sealed record CliRun(int ExitCode, string Out, string Error)
{
    public static CliRun Of(params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int code = Program.Run(args, new CliIO(stdout, stderr, Interactive: false));
        return new CliRun(code, stdout.ToString(), stderr.ToString());
    }

    /// <summary>Standard output must be exactly one JSON object.</summary>
    public JsonElement Json()
    {
        using JsonDocument doc = JsonDocument.Parse(Out);
        Assert.Equal(JsonValueKind.Object, doc.RootElement.ValueKind);
        return doc.RootElement.Clone();
    }
}
