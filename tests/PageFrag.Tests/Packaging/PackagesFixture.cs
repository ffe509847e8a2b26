using System.Diagnostics;
using System.IO.Compression;
using System.Text;
using System.Xml.Linq;

namespace PageFrag.Tests.Packaging;

/// <summary>
/// Packs the three packable projects once per test run into a temporary folder (as
/// <c>dotnet pack PageFrag.slnx -c Release -o DIR</c> does for them) and keeps what pack printed.
/// </summary>
public sealed class PackagesFixture : IDisposable
{
    /// <summary>The projects that make packages, with the package id each must produce.</summary>
    public static readonly (string Project, string Id)[] Packable =
    [
        ("src/PageFrag/PageFrag.csproj", "PageFrag"),
        ("src/PageFrag.AspNetCore/PageFrag.AspNetCore.csproj", "PageFrag.AspNetCore"),
        ("src/PageFrag.Cli/PageFrag.Cli.csproj", "PageFrag.Tool"),
    ];

    public PackagesFixture()
    {
        RepoRoot = FindRepoRoot();
        Folder = Directory.CreateTempSubdirectory("pagefrag-pack-").FullName;
        var output = new StringBuilder();
        foreach ((string project, _) in Packable)
        {
            // Each project alone, not the solution: packing the solution would rebuild this running test assembly.
            ProcessResult r = Dotnet.Run(RepoRoot, TimeSpan.FromMinutes(4),
                "pack", project, "-c", "Release", "-o", Folder, "--nologo", "-v", "minimal");
            output.AppendLine(r.Output);
            ExitCodes.Add(r.ExitCode);
        }

        PackOutput = output.ToString();
    }

    public string RepoRoot { get; }

    public string Folder { get; }

    public string PackOutput { get; }

    public List<int> ExitCodes { get; } = [];

    public string PackagePath(string id, string extension = "nupkg") =>
        Path.Combine(Folder, $"{id}.{Version}.{extension}");

    /// <summary>The version every package must carry, read from the one place that sets it.</summary>
    public string Version
    {
        get
        {
            XDocument props = XDocument.Load(Path.Combine(RepoRoot, "Directory.Build.props"));
            string prefix = props.Descendants("VersionPrefix").Single().Value;
            string suffix = props.Descendants("VersionSuffix").Single().Value;
            return suffix.Length == 0 ? prefix : $"{prefix}-{suffix}";
        }
    }

    /// <summary>The nuspec of a package, read out of the .nupkg (a zip).</summary>
    public XElement Nuspec(string id)
    {
        using ZipArchive zip = ZipFile.OpenRead(PackagePath(id));
        ZipArchiveEntry entry = zip.Entries.Single(e => e.FullName.EndsWith(".nuspec", StringComparison.Ordinal));
        using Stream s = entry.Open();
        XElement root = XElement.Load(s);
        return root.Elements().Single(e => e.Name.LocalName == "metadata");
    }

    public static string[] Entries(string path)
    {
        using ZipArchive zip = ZipFile.OpenRead(path);
        return zip.Entries.Select(e => e.FullName).ToArray();
    }

    public void Dispose()
    {
        try
        {
            Directory.Delete(Folder, recursive: true);
        }
        catch (IOException)
        {
        }
    }

    private static string FindRepoRoot()
    {
        for (DirectoryInfo? d = new(AppContext.BaseDirectory); d is not null; d = d.Parent)
        {
            if (File.Exists(Path.Combine(d.FullName, "PageFrag.slnx")))
            {
                return d.FullName;
            }
        }

        throw new InvalidOperationException("PageFrag.slnx not found above " + AppContext.BaseDirectory);
    }
}

internal sealed record ProcessResult(int ExitCode, string Output);

internal static class Dotnet
{
    /// <summary>Runs a program (dotnet by default) to its end, with a deadline, and returns its exit code and output.</summary>
    public static ProcessResult Run(string workingDirectory, TimeSpan deadline, params string[] args) =>
        RunProgram("dotnet", workingDirectory, deadline, args);

    public static ProcessResult RunProgram(string program, string workingDirectory, TimeSpan deadline, params string[] args)
    {
        var psi = new ProcessStartInfo(program)
        {
            WorkingDirectory = workingDirectory,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (string a in args)
        {
            psi.ArgumentList.Add(a);
        }

        // The test host's own MSBuild and host variables must not leak into a nested build.
        foreach (string v in new[] { "MSBuildExtensionsPath", "MSBuildSDKsPath", "MSBUILD_EXE_PATH", "VSTEST_HOST_DEBUG" })
        {
            psi.Environment.Remove(v);
        }

        psi.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        psi.Environment["DOTNET_NOLOGO"] = "1";
        using var p = Process.Start(psi)!;
        Task<string> stdout = p.StandardOutput.ReadToEndAsync();
        Task<string> stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(deadline))
        {
            p.Kill(entireProcessTree: true);
            p.WaitForExit();
            return new ProcessResult(-1, $"timed out after {deadline}: {program} {string.Join(' ', args)}\n{stdout.Result}{stderr.Result}");
        }

        return new ProcessResult(p.ExitCode, stdout.Result + stderr.Result);
    }
}
