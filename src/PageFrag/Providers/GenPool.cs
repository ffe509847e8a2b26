using System.Numerics;

namespace PageFrag.Providers;

/// <summary>
/// A small general-purpose range allocator (the kernel's <c>genalloc</c>, gen_pool): ranges of an address
/// space (here: offsets in a region) are added with an owner, and carved in units of 2^minAllocShift bytes by a
/// first-fit search over one bitmap per range.
/// </summary>
/// <remarks>Not thread-safe: the provider that owns it serializes calls.</remarks>
internal sealed class GenPool
{
    private readonly int _unitShift;
    private readonly List<Range> _ranges = [];
    private long _available;
    private long _size;

    public GenPool(int minAllocShift)
    {
        _unitShift = minAllocShift;
    }

    /// <summary>Bytes not allocated (gen_pool_avail).</summary>
    public long Available => _available;

    /// <summary>Bytes added (gen_pool_size).</summary>
    public long Size => _size;

    /// <summary>Adds the range [start, start + size) with its owner (gen_pool_add_owner).</summary>
    public void AddOwner(long start, long size, object? owner)
    {
        long unit = 1L << _unitShift;
        if (start < 0 || size <= 0 || (size & (unit - 1)) != 0 || (start & (unit - 1)) != 0 || (size >> _unitShift) > int.MaxValue)
        {
            throw new ArgumentOutOfRangeException(nameof(size), size, "A range must start and end on a unit boundary and hold at most 2^31 units.");
        }

        foreach (Range r in _ranges)
        {
            if (start < r.Start + r.Size && r.Start < start + size)
            {
                throw new ArgumentException("The range overlaps one already added.", nameof(start));
            }
        }

        int units = (int)(size >> _unitShift);
        _ranges.Add(new Range(start, size, owner, units));
        _available += size;
        _size += size;
    }

    /// <summary>Allocates <paramref name="size"/> bytes, first fit (gen_pool_alloc_owner).</summary>
    /// <returns>False when no range has that many consecutive free units.</returns>
    public bool TryAlloc(long size, out long address, out object? owner)
    {
        if (size <= 0 || size > _size)
        {
            // Also keeps the unit count below (size + unit - 1, shifted) inside an int.
            address = -1;
            owner = null;
            return false;
        }

        int units = (int)((size + (1L << _unitShift) - 1) >> _unitShift);
        foreach (Range r in _ranges)
        {
            if (r.Free >= units && r.TryTake(units, out int first))
            {
                address = r.Start + ((long)first << _unitShift);
                owner = r.Owner;
                _available -= (long)units << _unitShift;
                return true;
            }
        }

        address = -1;
        owner = null;
        return false;
    }

    /// <summary>Frees what <see cref="TryAlloc"/> returned (gen_pool_free_owner).</summary>
    /// <exception cref="ArgumentException">The address is in no range, or part of it is already free.</exception>
    public object? Free(long address, long size)
    {
        foreach (Range r in _ranges)
        {
            // Differences, not sums: address + size may pass long.MaxValue for a bad address.
            if (size > 0 && size <= r.Size && address >= r.Start && address - r.Start <= r.Size - size)
            {
                int units = (int)((size + (1L << _unitShift) - 1) >> _unitShift);
                r.Give((int)((address - r.Start) >> _unitShift), units);
                _available += (long)units << _unitShift;
                return r.Owner;
            }
        }

        throw new ArgumentException($"No range of the pool holds {size} bytes at {address}.", nameof(address));
    }

    private sealed class Range
    {
        public readonly long Start;
        public readonly long Size;
        public readonly object? Owner;
        public int Free;
        private readonly ulong[] _bits;
        private readonly int _units;
        private int _hint;

        public Range(long start, long size, object? owner, int units)
        {
            Start = start;
            Size = size;
            Owner = owner;
            _units = units;
            Free = units;
            _bits = new ulong[(units + 63) >> 6];
        }

        public bool TryTake(int count, out int first)
        {
            // Search from the hint (where the last allocation ended), then wrap once.
            if (TryFind(_hint, _units, count, out first) || TryFind(0, Math.Min(_hint + count, _units), count, out first))
            {
                for (int i = first; i < first + count; i++)
                {
                    _bits[i >> 6] |= 1UL << (i & 63);
                }

                Free -= count;
                _hint = first + count == _units ? 0 : first + count;
                return true;
            }

            return false;
        }

        public void Give(int first, int count)
        {
            for (int i = first; i < first + count; i++)
            {
                if ((_bits[i >> 6] & (1UL << (i & 63))) == 0)
                {
                    throw new ArgumentException("Part of the range is already free (double free).", nameof(first));
                }
            }

            for (int i = first; i < first + count; i++)
            {
                _bits[i >> 6] &= ~(1UL << (i & 63));
            }

            Free += count;
        }

        private bool TryFind(int from, int to, int count, out int first)
        {
            int run = 0;
            int i = from;
            while (i < to)
            {
                ulong word = _bits[i >> 6];
                if (run == 0 && (i & 63) == 0 && word == ulong.MaxValue)
                {
                    i += 64;
                    continue;
                }

                if (count == 1 && run == 0)
                {
                    // Single units (the provider's case): the first zero bit at or after i in this word.
                    ulong free = ~word & (ulong.MaxValue << (i & 63));
                    if (free != 0)
                    {
                        int bit = (i & ~63) + BitOperations.TrailingZeroCount(free);
                        if (bit < to)
                        {
                            first = bit;
                            return true;
                        }

                        break;
                    }

                    i = (i | 63) + 1;
                    continue;
                }

                run = (word & (1UL << (i & 63))) == 0 ? run + 1 : 0;
                i++;
                if (run == count)
                {
                    first = i - count;
                    return true;
                }
            }

            first = -1;
            return false;
        }
    }
}
