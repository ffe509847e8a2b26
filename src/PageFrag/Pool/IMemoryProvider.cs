namespace PageFrag.Pool;

/// <summary>
/// A source of memory for a <see cref="PagePool"/> other than its page allocator (the kernel's
/// <c>memory_provider_ops</c>): device memory bound to a receive queue, a shared-memory region, and so on.
/// </summary>
/// <remarks>
/// <para>Threading: <see cref="Init"/> runs in the pool's constructor; <see cref="AllocNetMems"/> runs on the pool's
/// owner thread (its slow path); <see cref="ReleaseNetMem"/> may run on any thread (whoever returns the last
/// reference, or the pool's release timer); <see cref="Destroy"/> runs once, when the last in-flight memory came
/// back after the pool was disposed. Implementations must make <see cref="ReleaseNetMem"/> thread-safe.</para>
/// <para>The pool stamps its own fields (pool back-pointer, <c>pp_ref_count</c> = 1, a new generation) on what
/// <see cref="AllocNetMems"/> returns and clears them before <see cref="ReleaseNetMem"/>; the provider owns the
/// device address of its memory. While the pool gives a unit back its <c>pp_ref_count</c> holds a release mark; the
/// built-in providers take back only a unit that carries it (clearing it with one compare-and-swap), so that a direct
/// call of their public <see cref="ReleaseNetMem"/> cannot give away memory that a buffer still holds.</para>
/// <para>The hooks are public, so anyone holding the provider can call them. The built-in providers serve
/// <see cref="Init"/>, <see cref="AllocNetMems"/> and <see cref="Destroy"/> only while the pool itself calls them on
/// the calling thread (a provider that forwards to them from inside the pool's call is served), and throw
/// <see cref="InvalidOperationException"/> otherwise: a caller's direct call could hand the pool's memory to a second
/// owner, lose a unit for good, or unbind a live pool.</para>
/// </remarks>
public interface IMemoryProvider
{
    /// <summary>
    /// Binds the provider to <paramref name="pool"/> (mp_ops-&gt;init). Throw to refuse a pool whose parameters
    /// the memory cannot serve (order, flags); the pool's constructor then fails.
    /// </summary>
    public void Init(PagePool pool);

    /// <summary>
    /// Fills <paramref name="netmems"/> with up to its length of free memory units of the pool's size
    /// (mp_ops-&gt;alloc_netmems) and returns how many it filled; 0 when it has none (the pool's allocation fails).
    /// </summary>
    public int AllocNetMems(PagePool pool, Span<NetMem> netmems);

    /// <summary>Takes back memory the pool no longer holds (mp_ops-&gt;release_netmem). Any thread.</summary>
    public void ReleaseNetMem(PagePool pool, NetMem netmem);

    /// <summary>Unbinds the provider from a pool that has been freed (mp_ops-&gt;destroy).</summary>
    public void Destroy(PagePool pool);
}
