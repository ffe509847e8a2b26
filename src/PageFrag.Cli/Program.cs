using System.CommandLine;
using PageFrag.Cli.Commands;
using PageFrag.Cli.Infrastructure;

namespace PageFrag.Cli;

/// <summary>
/// The <c>pagefrag</c> tool. Each subcommand lives in its own class under <c>Commands/</c> and contributes
/// a <see cref="Command"/> through a <c>Create(CliIO)</c> factory listed in <see cref="s_commands"/>.
/// </summary>
internal static class Program
{
    private static readonly Func<CliIO, Command>[] s_commands =
    [
        TestCommand.Create,
        StressCommand.Create,
        BenchCommand.Create,
        NcCommand.Create,
    ];

    private static int Main(string[] args) => Run(args, CliIO.FromConsole());

    /// <summary>Parses and runs a command line; tests call this in-process with their own writers.</summary>
    public static int Run(string[] args, CliIO io)
    {
        var root = new RootCommand("pagefrag: the Linux networking buffer memory subsystem for .NET, measured.");
        foreach (Func<CliIO, Command> create in s_commands)
        {
            root.Add(create(io));
        }

        ParseResult parse = root.Parse(args);
        if (parse.Errors.Count > 0)
        {
            // One line for the whole command line (the first problem), in the tool's words, and with --json one
            // JSON object on standard output as well.
            Command command = parse.CommandResult.Command;
            string name = ReferenceEquals(command, root) ? "" : command.Name;
            string message = CliErrors.Friendly(parse.Errors[0].Message);
            if (name.Length == 0 && args.Length > 0 && !args[0].StartsWith('-'))
            {
                message = $"unknown command '{args[0]}'; the commands are {string.Join(", ", root.Subcommands.Select(c => c.Name))}";
            }

            string help = name.Length == 0 ? "pagefrag --help" : $"pagefrag {name} --help";
            return CliErrors.Report(io, name, $"{message} (see '{help}')", ExitCodes.Usage, args.Contains("--json"));
        }

        return parse.Invoke(new InvocationConfiguration { Output = io.Out, Error = io.Error });
    }
}
