using System.Runtime.CompilerServices;

namespace PageFrag.Pages;

/// <summary>
/// Finds the arena that owns an address in constant time, without locks for readers: the part of the
/// kernel's <c>virt_to_page</c> that a process has to build itself.
/// </summary>
/// <remarks>
/// A two-level radix table over the address space in 4 MiB slots: <c>level1[addr &gt;&gt; 34]</c> is a
/// table of 4096 slots, and a slot holds the (usually one or two) arenas that overlap it. Writers
/// (arena creation and trimming, both rare) take a lock and publish copies; readers see either the old
/// or the new array, both valid.
/// </remarks>
internal static class ArenaRegistry
{
    private const int SlotShift = 22;
    private const int Level2Bits = 12;
    private const int Level1Shift = SlotShift + Level2Bits;
    private const int Level1Count = 1 << (57 - Level1Shift); // room for 57-bit (5-level paging) addresses

    private static readonly Arena[]?[]?[] s_level1 = new Arena[]?[]?[Level1Count];
    private static readonly Lock s_writeLock = new();

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Arena? Find(nint address)
    {
        ulong a = (ulong)address;
        ulong i1 = a >> Level1Shift;
        if (i1 >= Level1Count)
        {
            return null;
        }

        Arena[]?[]? level2 = Volatile.Read(ref s_level1[i1]);
        if (level2 is null)
        {
            return null;
        }

        Arena[]? slot = Volatile.Read(ref level2[(int)((a >> SlotShift) & ((1 << Level2Bits) - 1))]);
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

    public static void Register(Arena arena)
    {
        lock (s_writeLock)
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
    }

    public static void Unregister(Arena arena)
    {
        lock (s_writeLock)
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
    }

    private static void ForEachSlot(Arena arena, Action<Arena[]?[], int> action)
    {
        ulong first = (ulong)arena.BaseAddress >> SlotShift;
        ulong last = ((ulong)arena.BaseAddress + (ulong)arena.ByteLength - 1) >> SlotShift;
        for (ulong s = first; s <= last; s++)
        {
            ulong i1 = s >> Level2Bits;
            if (i1 >= Level1Count)
            {
                throw new PlatformNotSupportedException("Address space above 57 bits is not supported.");
            }

            Arena[]?[]? level2 = s_level1[i1];
            if (level2 is null)
            {
                level2 = new Arena[]?[1 << Level2Bits];
                Volatile.Write(ref s_level1[i1], level2);
            }

            action(level2, (int)(s & ((1 << Level2Bits) - 1)));
        }
    }
}
