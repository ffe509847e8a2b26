using System.Globalization;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace PageFrag.Cli.Infrastructure;

/// <summary>
/// The one error style of every <c>pagefrag</c> command: one line <c>pagefrag COMMAND: message</c> on standard
/// error, and with <c>--json</c> also one JSON object <c>{"ok": false, "command": …, "error": …, "exit_code": …}</c>
/// on standard output, so that a script reading the JSON always gets exactly one object.
/// </summary>
internal static partial class CliErrors
{
    /// <summary>Reports <paramref name="message"/> and returns <paramref name="exitCode"/>.</summary>
    /// <param name="command">The subcommand (<c>test</c>, <c>nc</c>…), or empty for the root command.</param>
    public static int Report(CliIO io, string command, string message, int exitCode, bool json)
    {
        message = message.Replace(". (", " (", StringComparison.Ordinal);
        if (json)
        {
            WriteJson(io.Out, command, message, exitCode);
        }

        io.Error.WriteLine(command.Length == 0 ? $"pagefrag: {message}" : $"pagefrag {command}: {message}");
        return exitCode;
    }

    /// <summary>The error object of <c>--json</c>.</summary>
    public static void WriteJson(TextWriter output, string command, string message, int exitCode)
    {
        using var stream = new MemoryStream();
        using (var json = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            json.WriteStartObject();
            json.WriteBoolean("ok", false);
            json.WriteString("command", command.Length == 0 ? null : command);
            json.WriteString("error", message);
            json.WriteNumber("exit_code", exitCode);
            json.WriteEndObject();
        }

        output.WriteLine(System.Text.Encoding.UTF8.GetString(stream.ToArray()));
    }

    /// <summary>
    /// System.CommandLine's parse messages in the tool's words: "--runs: 'abc' is not a whole number" rather than
    /// "Cannot parse argument 'abc' for option '--runs' as expected type 'System.Int32'".
    /// </summary>
    public static string Friendly(string message)
    {
        Match m = CannotParse().Match(message);
        if (m.Success)
        {
            string what = m.Groups["type"].Value switch
            {
                var t when t.Contains("Int32", StringComparison.Ordinal) || t.Contains("Int64", StringComparison.Ordinal) => "a whole number",
                var t when t.Contains("Double", StringComparison.Ordinal) || t.Contains("Single", StringComparison.Ordinal) => "a number",
                var t when t.Contains("Boolean", StringComparison.Ordinal) => "true or false",
                _ => "a valid value",
            };
            return string.Create(CultureInfo.InvariantCulture, $"{m.Groups["option"].Value}: '{m.Groups["value"].Value}' is not {what}");
        }

        m = NotAmong().Match(message);
        if (m.Success)
        {
            string[] choices = [.. Choice().Matches(m.Groups["choices"].Value).Select(c => c.Groups[1].Value)];
            return $"'{m.Groups["value"].Value}' is not one of {string.Join(", ", choices)}";
        }

        m = Unrecognized().Match(message);
        if (m.Success)
        {
            string token = m.Groups["token"].Value;
            return token.StartsWith('-') ? $"unknown option '{token}'" : $"unexpected argument '{token}'";
        }

        return message.Replace("Required command was not provided.", "no command given", StringComparison.Ordinal).TrimEnd('.');
    }

    [GeneratedRegex(@"^Cannot parse argument '(?<value>.*)' for option '(?<option>[^']+)' as expected type '(?<type>[^']+)'")]
    private static partial Regex CannotParse();

    [GeneratedRegex(@"^Argument '(?<value>.*)' not recognized\. Must be one of:(?<choices>.*)$", RegexOptions.Singleline)]
    private static partial Regex NotAmong();

    [GeneratedRegex(@"'([^']*)'")]
    private static partial Regex Choice();

    [GeneratedRegex(@"^Unrecognized command or argument '(?<token>.*)'")]
    private static partial Regex Unrecognized();
}
