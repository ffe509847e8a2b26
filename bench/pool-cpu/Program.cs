using System;
using System.IO;
using System.Linq;
using System.Threading;
using System.Buffers;
using System.Reflection;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

static class P
{
    [StructLayout(LayoutKind.Sequential)] struct Ts { public long s; public long ns; }
    [DllImport("libc")] static extern int clock_gettime(int clk, out Ts ts);
    static long Cpu() { clock_gettime(3, out Ts t); return t.s * 1_000_000_000 + t.ns; }

    [MethodImpl(MethodImplOptions.NoInlining)]
    static long Loop(MemoryPool<byte> pool, int size)
    {
        long sum = 0;
        for (int i = 0; i < 1024; i++)
        {
            IMemoryOwner<byte> o = pool.Rent(size);
            Span<byte> b = o.Memory.Span[..size];
            b[0] = (byte)i; b[size - 1] = (byte)i;
            sum += b[0] + b[size - 1];
            o.Dispose();
        }
        return sum;
    }

    static double Cross(MemoryPool<byte> pool, int size, int ops)
    {
        var ring = new IMemoryOwner<byte>[256];
        long head = 0, tail = 0;
        var consumer = new Thread(() =>
        {
            long t = 0;
            while (t < ops)
            {
                if (Volatile.Read(ref head) == t) { Thread.SpinWait(1); continue; }
                IMemoryOwner<byte> o = ring[t & 255];
                o.Dispose();
                t++;
                Volatile.Write(ref tail, t);
            }
        });
        var sw = System.Diagnostics.Stopwatch.StartNew();
        consumer.Start();
        for (long h = 0; h < ops; h++)
        {
            while (h - Volatile.Read(ref tail) >= 256) Thread.SpinWait(1);
            IMemoryOwner<byte> o = pool.Rent(size);
            o.Memory.Span[0] = 1;
            ring[h & 255] = o;
            Volatile.Write(ref head, h + 1);
        }
        consumer.Join();
        return sw.Elapsed.TotalMilliseconds * 1e6 / ops;
    }

    static double Batch(MemoryPool<byte> pool, int size, int rounds)
    {
        var arr = new IMemoryOwner<byte>[1024];
        using var barrier = new Barrier(2);
        double best = double.MaxValue;
        int total = rounds * 400;
        var worker = new Thread(() =>
        {
            for (int k = 0; k < total; k++)
            {
                barrier.SignalAndWait();
                long c0 = Cpu();
                for (int i = 0; i < arr.Length; i++) arr[i].Dispose();
                double ns = (Cpu() - c0) / (double)arr.Length;
                if (k > total / 4) best = Math.Min(best, ns);
                barrier.SignalAndWait();
            }
        });
        worker.Start();
        for (int k = 0; k < total; k++)
        {
            for (int i = 0; i < arr.Length; i++) { arr[i] = pool.Rent(size); arr[i].Memory.Span[0] = 1; }
            barrier.SignalAndWait();
            barrier.SignalAndWait();
        }
        worker.Join();
        return best;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    static long Mixed(MemoryPool<byte> pool)
    {
        long sum = 0;
        for (int i = 0; i < 1024; i++)
        {
            int size = 64 * (1 + (int)((uint)(i * 7919) % 64u));
            IMemoryOwner<byte> o = pool.Rent(size);
            Span<byte> b = o.Memory.Span[..size];
            b[0] = (byte)i; b[size - 1] = (byte)i;
            sum += b[0] + b[size - 1];
            o.Dispose();
        }
        return sum;
    }

    static void Main(string[] args)
    {
        // args: which (shared|dir) size rounds
        int size = int.Parse(args[1]);
        int rounds = args.Length > 2 ? int.Parse(args[2]) : 5;
        MemoryPool<byte> pool;
        if (args[0] == "shared") pool = MemoryPool<byte>.Shared;
        else
        {
            Assembly a = Assembly.LoadFrom(Path.Combine(args[0], "PageFrag.dll"));
            Type t = a.GetType("PageFrag.Buffers.PageFragMemoryPool")!;
            Type ot = a.GetType("PageFrag.Buffers.PageFragMemoryPoolOptions")!;
            pool = (MemoryPool<byte>)t.GetConstructor(new[] { ot })!.Invoke(new object[] { null });
        }
        if (args.Length > 3 && args[3] == "bdnclass")
        {
            Assembly ba = Assembly.LoadFrom(Path.Combine(args[0], "PageFrag.Benchmarks.dll"));
            Type bt = ba.GetType("PageFrag.Benchmarks.MemoryPoolBenchmarks")!;
            object bench = Activator.CreateInstance(bt)!;
            bt.GetProperty("Size")!.SetValue(bench, size);
            bt.GetMethod("GlobalSetup")!.Invoke(bench, null);
            var f = (Func<long>)Delegate.CreateDelegate(typeof(Func<long>), bench, bt.GetMethod("PageFragRentDispose")!);
            var g = (Func<long>)Delegate.CreateDelegate(typeof(Func<long>), bench, bt.GetMethod("SharedRentDispose")!);
            foreach (var (name, fn) in new[] { ("PageFragRentDispose", f), ("SharedRentDispose", g) })
            {
                for (int i = 0; i < 8000; i++) fn();
                double bb = double.MaxValue;
                for (int r = 0; r < rounds; r++)
                {
                    long c0 = Cpu(); long n = 0;
                    while (Cpu() - c0 < 80_000_000) { fn(); n++; }
                    bb = Math.Min(bb, (Cpu() - c0) / (double)(n * 1024));
                }
                Console.WriteLine($"{args[0].Split('/').Last(),-20} {name} size {size}: best {bb:F2} ns/op thread CPU (the BDN class's method)");
            }
            return;
        }
        if (args.Length > 3 && args[3] == "mixed")
        {
            for (int i = 0; i < 8000; i++) Mixed(pool);
            double bm = double.MaxValue;
            for (int r = 0; r < rounds; r++)
            {
                long c0 = Cpu(); long n = 0;
                while (Cpu() - c0 < 80_000_000) { Mixed(pool); n++; }
                bm = Math.Min(bm, (Cpu() - c0) / (double)(n * 1024));
            }
            Console.WriteLine($"{args[0].Split('/').Last(),-20} 64 sizes 64..4096: best {bm:F2} ns/op thread CPU");
            return;
        }
        if (args.Length > 3 && args[3] == "batch")
        {
            Console.WriteLine($"{args[0].Split('/').Last(),-20} size {size}: Dispose on another thread, best {Batch(pool, size, rounds):F2} ns/op thread CPU");
            return;
        }
        if (args.Length > 3 && args[3] == "cross")
        {
            Cross(pool, size, 2_000_000);
            double b = double.MaxValue;
            for (int r = 0; r < rounds; r++) b = Math.Min(b, Cross(pool, size, 2_000_000));
            Console.WriteLine($"{args[0].Split('/').Last(),-20} size {size}: cross-thread rent->dispose best {b:F2} ns/op wall");
            return;
        }
        for (int i = 0; i < 8000; i++) Loop(pool, size);
        double best = double.MaxValue;
        int gcs = GC.CollectionCount(0);
        for (int r = 0; r < rounds; r++)
        {
            long c0 = Cpu(); long n = 0;
            while (Cpu() - c0 < 80_000_000) { Loop(pool, size); n++; }
            double ns = (Cpu() - c0) / (double)(n * 1024);
            best = Math.Min(best, ns);
        }
        Console.WriteLine($"{args[0].Split('/').Last(),-20} size {size}: best {best:F2} ns/op thread CPU, gen0 GCs {GC.CollectionCount(0) - gcs}");
    }
}
