// The net8.0 build of PageFrag: the few .NET 9+ types the library uses, given a .NET 8 equivalent here so
// that no layer's file needs an #if. Sits outside the layers (like ThrowHelper).
#if !NET9_0_OR_GREATER
global using Lock = PageFrag.MonitorLock;

namespace PageFrag;

/// <summary>
/// The net8.0 stand-in for <c>System.Threading.Lock</c> (.NET 9): the same members the library calls,
/// on <see cref="Monitor"/>. The <c>lock</c> statement on it is a plain monitor lock, as on any object.
/// </summary>
internal sealed class MonitorLock
{
    /// <summary>Takes the lock, waiting as long as it takes.</summary>
    public void Enter() => Monitor.Enter(this);

    /// <summary>Takes the lock if no other thread holds it; never waits.</summary>
    public bool TryEnter() => Monitor.TryEnter(this);

    /// <summary>Releases the lock taken by <see cref="Enter"/> or a successful <see cref="TryEnter"/>.</summary>
    public void Exit() => Monitor.Exit(this);

    /// <summary>True when the calling thread holds the lock.</summary>
    public bool IsHeldByCurrentThread => Monitor.IsEntered(this);
}
#endif
