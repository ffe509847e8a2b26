using System.Text.Json;
using PageFrag.Cli;

namespace PageFrag.Tests.Cli;

/// <summary>The one error style of every command: one line on standard error, exit code 2 for a bad command
/// line, and with --json exactly one JSON object with "ok": false on standard output.</summary>
public class CliErrorTests
{
    [Fact]
    public void An_unknown_command_prints_one_error_line_that_lists_the_commands()
    {
        CliRun run = CliRun.Of("frob");

        Assert.Equal(ExitCodes.Usage, run.ExitCode);
        Assert.Equal("", run.Out);
        Assert.Equal(
            $"pagefrag: unknown command 'frob'; the commands are test, stress, bench, nc (see 'pagefrag --help'){Environment.NewLine}",
            run.Error);
    }

    [Fact]
    public void No_command_at_all_is_one_error_line()
    {
        CliRun run = CliRun.Of();

        Assert.Equal(ExitCodes.Usage, run.ExitCode);
        Assert.Single(run.Error.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith("pagefrag: no command given", run.Error, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(new[] { "test", "--json", "--runs", "abc" }, "test", "--runs: 'abc' is not a whole number")]
    [InlineData(new[] { "test", "--json", "--ring-size", "1073741824" }, "test", "--ring-size must be a power of two from 2 to 524288")]
    [InlineData(new[] { "stress", "--json", "--seconds", "x" }, "stress", "--seconds: 'x' is not a number")]
    [InlineData(new[] { "stress", "--json", "--threads", "1" }, "stress", "--threads must be from 2")]
    [InlineData(new[] { "bench", "--json", "--runs", "three" }, "bench", "--runs: 'three' is not a whole number")]
    [InlineData(new[] { "bench", "--json", "--ops", "0" }, "bench", "--ops must be positive, got 0")]
    [InlineData(new[] { "frob", "--json" }, null, "unknown command 'frob'")]
    public void With_json_every_command_prints_exactly_one_error_object(string[] args, string? command, string message)
    {
        CliRun run = CliRun.Of(args);

        Assert.Equal(ExitCodes.Usage, run.ExitCode);
        JsonElement json = run.Json();
        Assert.False(json.GetProperty("ok").GetBoolean());
        if (command is null)
        {
            Assert.Equal(JsonValueKind.Null, json.GetProperty("command").ValueKind);
        }
        else
        {
            Assert.Equal(command, json.GetProperty("command").GetString());
        }

        Assert.Contains(message, json.GetProperty("error").GetString(), StringComparison.Ordinal);
        Assert.Equal(ExitCodes.Usage, json.GetProperty("exit_code").GetInt32());
        Assert.Single(run.Error.Split('\n', StringSplitOptions.RemoveEmptyEntries));
    }

    [Theory]
    [InlineData(new[] { "test", "--alloc-len", "1.5" }, "--alloc-len: '1.5' is not a whole number")]
    [InlineData(new[] { "test", "--pop-cpu", "two" }, "--pop-cpu: 'two' is not a whole number")]
    [InlineData(new[] { "test", "--memory-limit", "lots" }, "--memory-limit: 'lots' is not a whole number")]
    [InlineData(new[] { "stress", "--seed", "s" }, "--seed: 's' is not a whole number")]
    [InlineData(new[] { "nc", "-I", "big", "localhost", "1" }, "-I: 'big' is not a whole number")]
    public void Parse_messages_name_the_option_and_the_kind_of_value_never_a_CLR_type(string[] args, string message)
    {
        CliRun run = CliRun.Of(args);

        Assert.Equal(ExitCodes.Usage, run.ExitCode);
        Assert.Contains(message, run.Error, StringComparison.Ordinal);
        Assert.DoesNotContain("System.", run.Error, StringComparison.Ordinal);
        Assert.DoesNotContain("expected type", run.Error, StringComparison.Ordinal);
    }
}
