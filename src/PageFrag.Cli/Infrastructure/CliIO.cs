using Spectre.Console;

namespace PageFrag.Cli.Infrastructure;

/// <summary>
/// Where a command writes: the process's console, or any pair of writers (tests run commands in-process).
/// </summary>
/// <param name="Out">Results (tables or the JSON object).</param>
/// <param name="Error">Errors and warnings.</param>
/// <param name="Interactive">A person watches a terminal: progress displays are welcome.</param>
internal sealed record CliIO(TextWriter Out, TextWriter Error, bool Interactive)
{
    /// <summary>Binary standard input for commands that move bytes (<c>pagefrag nc</c>); null: the process's own.</summary>
    public Stream? Input { get; init; }

    /// <summary>Binary standard output for commands that move bytes (<c>pagefrag nc</c>); null: the process's own.</summary>
    public Stream? Output { get; init; }

    /// <summary>The real console; interactive unless standard output is redirected.</summary>
    public static CliIO FromConsole() => new(Console.Out, Console.Error, !Console.IsOutputRedirected);

    /// <summary>A Spectre console over <see cref="Out"/>: the terminal's own when interactive, plain text otherwise.</summary>
    public IAnsiConsole CreateAnsiConsole()
    {
        if (Interactive && ReferenceEquals(Out, Console.Out))
        {
            return AnsiConsole.Console;
        }

        IAnsiConsole console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Out = new AnsiConsoleOutput(Out),
            Ansi = AnsiSupport.No,
            ColorSystem = ColorSystemSupport.NoColors,
            Interactive = InteractionSupport.No,
        });

        // Nobody resizes a file: give the tables room rather than wrapping them at 80 columns.
        console.Profile.Width = 160;
        return console;
    }
}
