using System.Text.RegularExpressions;
using System.Xml.Linq;

namespace PageFrag.Tests.Packaging;

/// <summary>
/// The packages a team installs: metadata, readme, licence, repository, symbols, and the dotnet tool
/// installed from the packed folder and run. Packs once for the class (<see cref="PackagesFixture"/>).
/// </summary>
public sealed class PackageTests(PackagesFixture packages) : IClassFixture<PackagesFixture>
{
    public static TheoryData<string> Ids => new(PackagesFixture.Packable.Select(p => p.Id));

    [Fact]
    public void Packing_every_packable_project_succeeds_with_no_warning()
    {
        Assert.All(packages.ExitCodes, code => Assert.Equal(0, code));
        Assert.DoesNotMatch(new Regex(@"\bwarning\b", RegexOptions.IgnoreCase), packages.PackOutput);
        foreach ((_, string id) in PackagesFixture.Packable)
        {
            Assert.True(File.Exists(packages.PackagePath(id)), $"{id} was not packed:\n{packages.PackOutput}");
        }
    }

    [Theory]
    [MemberData(nameof(Ids))]
    public void Each_package_carries_the_MIT_licence_a_readme_the_repository_and_the_version(string id)
    {
        XElement meta = packages.Nuspec(id);
        string? Value(string name) => meta.Elements().SingleOrDefault(e => e.Name.LocalName == name)?.Value;

        Assert.Equal(id, Value("id"));
        Assert.Equal(packages.Version, Value("version"));
        Assert.Equal("PageFrag contributors", Value("authors"));
        Assert.False(string.IsNullOrWhiteSpace(Value("description")));
        Assert.Contains("page-frag", Value("tags") ?? "", StringComparison.Ordinal);
        Assert.Equal("https://github.com/pagefrag/pagefrag", Value("projectUrl"));

        XElement license = meta.Elements().Single(e => e.Name.LocalName == "license");
        Assert.Equal("expression", license.Attribute("type")?.Value);
        Assert.Equal("MIT", license.Value);

        XElement repository = meta.Elements().Single(e => e.Name.LocalName == "repository");
        Assert.Equal("git", repository.Attribute("type")?.Value);
        Assert.Equal("https://github.com/pagefrag/pagefrag", repository.Attribute("url")?.Value);

        Assert.Equal("README.md", Value("readme"));
        string[] entries = PackagesFixture.Entries(packages.PackagePath(id));
        Assert.Contains("README.md", entries);
        Assert.Contains("LICENSE", entries);
    }

    [Theory]
    [MemberData(nameof(Ids))]
    public void Each_package_has_a_symbol_package_with_the_pdb_of_every_assembly(string id)
    {
        string snupkg = packages.PackagePath(id, "snupkg");
        Assert.True(File.Exists(snupkg), $"no symbol package for {id}");
        string[] dlls = PackagesFixture.Entries(packages.PackagePath(id))
            .Where(e => e.EndsWith(".dll", StringComparison.Ordinal) && e.StartsWith("lib/", StringComparison.Ordinal))
            .ToArray();
        string[] pdbs = PackagesFixture.Entries(snupkg);
        foreach (string dll in dlls)
        {
            Assert.Contains(Path.ChangeExtension(dll, ".pdb"), pdbs);
        }
    }

    [Fact]
    public void The_core_library_ships_for_net8_and_net10_and_the_AspNetCore_package_for_net10()
    {
        string[] core = PackagesFixture.Entries(packages.PackagePath("PageFrag"));
        Assert.Contains("lib/net8.0/PageFrag.dll", core);
        Assert.Contains("lib/net10.0/PageFrag.dll", core);
        Assert.Contains("lib/net8.0/PageFrag.xml", core);

        string[] aspnet = PackagesFixture.Entries(packages.PackagePath("PageFrag.AspNetCore"));
        Assert.Contains("lib/net10.0/PageFrag.AspNetCore.dll", aspnet);
    }

    [Fact]
    public void The_tool_installs_from_the_packed_folder_and_runs_pagefrag_help()
    {
        string toolPath = Directory.CreateTempSubdirectory("pagefrag-tool-").FullName;
        try
        {
            // Only the packed folder as a source, so that the test proves the folder alone is enough.
            string config = Path.Combine(toolPath, "nuget.config");
            File.WriteAllText(config, $"""
                <?xml version="1.0" encoding="utf-8"?>
                <configuration>
                  <packageSources>
                    <clear />
                    <add key="packed" value="{packages.Folder}" />
                  </packageSources>
                </configuration>
                """);
            string bin = Path.Combine(toolPath, "bin");
            ProcessResult install = Dotnet.Run(toolPath, TimeSpan.FromMinutes(2),
                "tool", "install", "--tool-path", bin, "--configfile", config, "--add-source", packages.Folder,
                "--version", packages.Version, "PageFrag.Tool");
            Assert.True(install.ExitCode == 0, install.Output);

            ProcessResult help = Dotnet.RunProgram(Path.Combine(bin, "pagefrag"), toolPath, TimeSpan.FromMinutes(1), "--help");
            Assert.True(help.ExitCode == 0, help.Output);
            foreach (string command in new[] { "test", "stress", "bench", "nc" })
            {
                Assert.Contains(command, help.Output, StringComparison.Ordinal);
            }
        }
        finally
        {
            Directory.Delete(toolPath, recursive: true);
        }
    }
}
