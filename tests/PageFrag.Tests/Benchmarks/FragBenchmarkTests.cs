using System.Reflection;
using BenchmarkDotNet.Attributes;
using PageFrag.Benchmarks;
using PageFrag.Frag;
using PageFrag.Pages;
using PageFrag.Tests.Infrastructure;

namespace PageFrag.Tests.Benchmarks;

/// <summary>
/// Runs every benchmark of every fragment cache suite (the writer suite included) once, for every parameter value, as BenchmarkDotNet
/// would (global set-up, the method, global clean-up), so that a suite cannot rot: each variant must
/// give the suite's checksum (the variants are thereby cross-checked against each other) and leave no
/// page behind. The cases are found by reflection, so a new benchmark is tested without being listed here.
/// </summary>
public class FragBenchmarkTests
{
    // Room for the largest burst (64 x 4096 bytes = 8 order-3 blocks) plus what the per-CPU lists hold back,
    // so that the cache keeps getting 32 KiB pages, as in a benchmark run (4 MiB arenas).
    private const int ArenaSize = 1 << 20;

    public static TheoryData<string, int, string> AllBenchmarks() => Cases(_ => true);

    public static TheoryData<string, int, string> PageFragBenchmarks() => Cases(m => m.Name.StartsWith("PageFrag", StringComparison.Ordinal));

    [Theory]
    [MemberData(nameof(AllBenchmarks))]
    public void Every_benchmark_gives_its_suite_checksum_twice_in_a_row_and_leaks_no_page(string suite, int size, string benchmark)
    {
        using var allocators = new Allocators();
        FragCacheBenchmark bench = Create(suite, size, allocators);
        MethodInfo method = bench.GetType().GetMethod(benchmark)!;

        bench.GlobalSetup();

        // The second call starts from the state the first left behind (a partly used or reused page).
        Assert.Equal(bench.ExpectedChecksum, (long)method.Invoke(bench, null)!);
        Assert.Equal(bench.ExpectedChecksum, (long)method.Invoke(bench, null)!);
        Assert.True(bench.Cache.CurrentPageSize is 0 or PageFragCache.MaxFragmentSize, "the PageFrag variants must run on 32 KiB pages");
        bench.GlobalCleanup();

        allocators.AssertNoLeaks();
    }

    [Theory]
    [MemberData(nameof(PageFragBenchmarks))]
    public void PageFrag_benchmarks_allocate_nothing_on_the_GC_heap(string suite, int size, string benchmark)
    {
        using var allocators = new Allocators();
        FragCacheBenchmark bench = Create(suite, size, allocators);
        bench.GlobalSetup();
        Func<long> run = bench.GetType().GetMethod(benchmark)!.CreateDelegate<Func<long>>(bench);

        // Warm up: JIT, the first pages, the allocator's arenas and per-CPU lists.
        long sum = run() + run();
        int rounds = 2;
        ZeroAlloc.AssertSteadyState(() =>
        {
            sum += run();
            rounds++;
        });
        bench.GlobalCleanup();

        Assert.Equal(rounds * bench.ExpectedChecksum, sum);
        allocators.AssertNoLeaks();
    }

    [Fact]
    public void Clean_up_fails_the_run_when_a_benchmark_left_a_fragment_behind()
    {
        using var allocators = new Allocators();
        var bench = new FragAllocFreeBenchmarks { Size = 12, Allocator = allocators.Checked };
        bench.GlobalSetup();
        Assert.True(bench.Cache.TryAlloc(12, out PageFragment forgotten));

        var e = Assert.Throws<InvalidOperationException>(bench.GlobalCleanup);
        Assert.Equal("FragAllocFreeBenchmarks leaked 8 pages.", e.Message);

        // The cache was drained before the check, so the forgotten fragment is the page's last reference.
        forgotten.Free();
        allocators.AssertNoLeaks();
    }

    private static TheoryData<string, int, string> Cases(Func<MethodInfo, bool> filter)
    {
        var data = new TheoryData<string, int, string>();
        IEnumerable<Type> suites = typeof(FragCacheBenchmark).Assembly.GetTypes()
            .Where(t => t.IsSubclassOf(typeof(FragCacheBenchmark)) && !t.IsAbstract)
            .OrderBy(t => t.Name, StringComparer.Ordinal);
        foreach (Type suite in suites)
        {
            object?[] sizes = Parameter(suite).GetCustomAttribute<ParamsAttribute>()!.Values;
            IEnumerable<MethodInfo> benchmarks = suite.GetMethods()
                .Where(m => m.GetCustomAttribute<BenchmarkAttribute>() is not null && filter(m))
                .OrderBy(m => m.Name, StringComparer.Ordinal);
            foreach (MethodInfo method in benchmarks)
            {
                foreach (object? size in sizes)
                {
                    data.Add(suite.Name, (int)size!, method.Name);
                }
            }
        }

        Assert.NotEmpty(data);
        return data;
    }

    private static FragCacheBenchmark Create(string suite, int size, Allocators allocators)
    {
        Type type = typeof(FragCacheBenchmark).Assembly.GetType($"PageFrag.Benchmarks.{suite}", throwOnError: true)!;
        var bench = (FragCacheBenchmark)Activator.CreateInstance(type)!;
        Parameter(type).SetValue(bench, size);
        bench.Allocator = allocators.Checked;
        return bench;
    }

    /// <summary>The suite's one [Params] property: the buffer size, or the writer suite's message count.</summary>
    private static PropertyInfo Parameter(Type suite) =>
        Assert.Single(suite.GetProperties(), p => p.GetCustomAttribute<ParamsAttribute>() is not null);

    /// <summary>The private allocator a suite runs on, checked for leaks and disposed.</summary>
    private sealed class Allocators : IDisposable
    {
        public PageAllocator Checked { get; } = Leaks.NewAllocator(ArenaSize);

        public void AssertNoLeaks()
        {
            Leaks.AssertNone(Checked);
        }

        public void Dispose()
        {
            Checked.Dispose();
        }
    }
}
