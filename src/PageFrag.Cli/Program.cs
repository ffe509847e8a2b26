namespace PageFrag.Cli;

internal static class Program
{
    private static int Main(string[] args)
    {
        Console.WriteLine("pagefrag: under construction");
        return 0;
    }
}
