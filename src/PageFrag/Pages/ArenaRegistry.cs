using System.Runtime.CompilerServices;

namespace PageFrag.Pages;

/// <summary>
/// Finds the arena that owns an address in constant time, without locks for readers: the part of the
/// kernel's <c>virt_to_page</c> that a process has to build itself.
/// </summary>
/// <remarks>
/// <para>A three-level radix table over the address space in 4 MiB slots: bits 46–56 of an address index
/// the top table, bits 34–45 a middle table, bits 22–33 a leaf table whose entry holds the (usually one or
/// two) arenas that overlap the slot. Writers (arena creation and trimming, both rare) take a lock and
/// publish copies; readers see either the old or the new array, both valid.</para>
/// <para>Every table is small (2048 or 4096 references) and only the tables on the path of a registered
/// arena exist: a process whose arenas lie within 16 GiB of each other holds 80 KB of tables. A flat top
/// level over all 57 address bits would be a 64 MiB array of references, which every full garbage
/// collection scans and so brings into the process's resident memory.</para>
/// </remarks>
internal static class ArenaRegistry
{
    private const int SlotShift = 22;
    private const int LeafBits = 12;
    private const int MiddleBits = 12;
    private const int MiddleShift = SlotShift + LeafBits;
    private const int TopShift = MiddleShift + MiddleBits;
    private const int TopCount = 1 << (57 - TopShift); // room for 57-bit (5-level paging) addresses

    private static readonly Arena[]?[]?[]?[] s_top = new Arena[]?[]?[]?[TopCount];
    private static readonly Lock s_writeLock = new();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Arena? Find(nint address)
    {
        ulong a = (ulong)address;
        ulong top = a >> TopShift;
        if (top >= TopCount)
        {
            return null;
        }

        Arena[]?[]?[]? middle = Volatile.Read(ref s_top[top]);
        if (middle is null)
        {
            return null;
        }

        Arena[]?[]? leaf = Volatile.Read(ref middle[(int)((a >> MiddleShift) & ((1 << MiddleBits) - 1))]);
        if (leaf is null)
        {
            return null;
        }

        Arena[]? slot = Volatile.Read(ref leaf[(int)((a >> SlotShift) & ((1 << LeafBits) - 1))]);
        if (slot is null)
        {
            return null;
        }

        foreach (Arena arena in slot)
        {
            if (arena.Contains(address))
            {
                return arena;
            }
        }

        return null;
    }

    /// <summary>The lock of every change to the registry (for the tests that hold it).</summary>
    internal static Lock WriteLockForTests => s_writeLock;

    /// <summary>Bytes of reference tables the registry holds (its memory cost; a test hook).</summary>
    internal static long TableBytes()
    {
        lock (s_writeLock)
        {
            long references = s_top.Length;
            foreach (Arena[]?[]?[]? middle in s_top)
            {
                if (middle is null)
                {
                    continue;
                }

                references += middle.Length;
                foreach (Arena[]?[]? leaf in middle)
                {
                    references += leaf?.Length ?? 0;
                }
            }

            return references * IntPtr.Size;
        }
    }

    public static void Register(Arena arena)
    {
        // Under the buddy lock of an allocator that grows, trims or is disposed: thrown half-way, an interrupt would
        // leave an arena the allocator still hands out unknown to the registry (its frees by address refused).
        bool interrupted = false;
        LockWait.EnterKeepingInterrupt(s_writeLock, ref interrupted);
        try
        {
            ForEachSlot(arena, (level2, i) =>
            {
                Arena[]? old = level2[i];
                Arena[] copy = old is null ? new Arena[1] : new Arena[old.Length + 1];
                old?.CopyTo(copy, 0);
                copy[^1] = arena;
                Volatile.Write(ref level2[i], copy);
            });
        }
        finally
        {
            s_writeLock.Exit();
            Arena.KeepInterrupt(interrupted);
        }
    }

    public static void Unregister(Arena arena)
    {
        // Under the buddy lock of an allocator that grows, trims or is disposed: thrown half-way, an interrupt would
        // leave an arena the allocator still hands out unknown to the registry (its frees by address refused).
        bool interrupted = false;
        LockWait.EnterKeepingInterrupt(s_writeLock, ref interrupted);
        try
        {
            ForEachSlot(arena, (level2, i) =>
            {
                Arena[]? old = level2[i];
                if (old is null)
                {
                    return;
                }

                Arena[] copy = Array.FindAll(old, a => !ReferenceEquals(a, arena));
                Volatile.Write(ref level2[i], copy.Length == 0 ? null : copy);
            });
        }
        finally
        {
            s_writeLock.Exit();
            Arena.KeepInterrupt(interrupted);
        }
    }

    private static void ForEachSlot(Arena arena, Action<Arena[]?[], int> action)
    {
        ulong first = (ulong)arena.BaseAddress >> SlotShift;
        ulong last = ((ulong)arena.BaseAddress + (ulong)arena.ByteLength - 1) >> SlotShift;
        for (ulong s = first; s <= last; s++)
        {
            ulong top = s >> (LeafBits + MiddleBits);
            if (top >= TopCount)
            {
                throw new PlatformNotSupportedException("Address space above 57 bits is not supported.");
            }

            // Tables are created on the way down and never removed: an empty leaf costs 32 KB.
            Arena[]?[]?[]? middle = s_top[top];
            if (middle is null)
            {
                middle = new Arena[]?[]?[1 << MiddleBits];
                Volatile.Write(ref s_top[top], middle);
            }

            int m = (int)((s >> LeafBits) & ((1 << MiddleBits) - 1));
            Arena[]?[]? leaf = middle[m];
            if (leaf is null)
            {
                leaf = new Arena[]?[1 << LeafBits];
                Volatile.Write(ref middle[m], leaf);
            }

            action(leaf, (int)(s & ((1 << LeafBits) - 1)));
        }
    }
}
