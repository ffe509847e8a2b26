using System.Globalization;

namespace PageFrag.Cli.Infrastructure;

/// <summary>
/// The one way <c>pagefrag test --allocator all</c> and <c>pagefrag bench</c> compare PageFrag with a peer, so that
/// their tables and JSON agree: the advantage is PageFrag's figure over the peer's (time: peer / PageFrag; rate:
/// PageFrag / peer), above 1 when PageFrag did better, shown with two decimals and the word only when it is above 1.
/// </summary>
internal static class Ratio
{
    /// <summary>"1.23x faster", or "0.91x" when the peer did better.</summary>
    public static string Text(double advantage, string word = "faster") =>
        advantage >= 1
            ? string.Create(CultureInfo.InvariantCulture, $"{advantage:0.00}x {word}")
            : string.Create(CultureInfo.InvariantCulture, $"{advantage:0.00}x");

    /// <summary>The value written to JSON: four decimals, 0 for a figure that is not finite.</summary>
    public static double Json(double advantage) => double.IsFinite(advantage) ? Math.Round(advantage, 4) : 0;
}
