namespace PageFrag.Buffers;

/// <summary>
/// A small bounded stash of reusable objects, safe from any thread and allocation-free: each slot is
/// claimed with one compare-and-swap, so two threads never get the same object.
/// </summary>
/// <remarks>
/// When the stash is full a returned object is simply dropped for the garbage collector; when it is empty
/// the caller creates a new one. Both are correct, only slower, so the stash never blocks.
/// </remarks>
internal sealed class ObjectStash<T> where T : class
{
    private readonly T?[] _items;

    public ObjectStash(int capacity) => _items = new T?[capacity];

    public T? TryTake()
    {
        T?[] items = _items;
        for (int i = 0; i < items.Length; i++)
        {
            T? item = Volatile.Read(ref items[i]);
            if (item is not null && Interlocked.CompareExchange(ref items[i], null, item) == item)
            {
                return item;
            }
        }

        return null;
    }

    public bool TryReturn(T item)
    {
        T?[] items = _items;
        for (int i = 0; i < items.Length; i++)
        {
            if (Volatile.Read(ref items[i]) is null && Interlocked.CompareExchange(ref items[i], item, null) is null)
            {
                return true;
            }
        }

        return false;
    }
}
