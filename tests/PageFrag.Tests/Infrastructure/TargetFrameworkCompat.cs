// The net8.0 run of the tests: System.Threading.Lock (.NET 9) mapped to a monitor, as in the library.
#if !NET9_0_OR_GREATER
global using Lock = PageFrag.Tests.Infrastructure.MonitorLock;

namespace PageFrag.Tests.Infrastructure;

/// <summary>The net8.0 stand-in for <c>System.Threading.Lock</c>: the members the tests call, on <see cref="Monitor"/>.</summary>
internal sealed class MonitorLock
{
    public void Enter() => Monitor.Enter(this);

    public bool TryEnter() => Monitor.TryEnter(this);

    public void Exit() => Monitor.Exit(this);
}
#endif
