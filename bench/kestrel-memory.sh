#!/usr/bin/env bash
# Where Kestrel's memory goes, with its own pool and with PageFrag's: both servers of bench/kestrel-wrk.sh run at
# once with PAGEFRAG_STATS=1 (the example app's GET /stats); for each path both are warmed up, then loaded back to
# back, and right after each one's run the script prints its requests/s and the GC bytes it allocated per request
# during the run, its VmRSS, the anonymous and file-backed parts of
# /proc/PID/smaps_rollup, and its /stats: the GC heap per generation (after the last collection) and committed,
# Kestrel's memory pool instruments, and for PageFrag the allocator's pages (in use, parked in recycle slots, on
# per-CPU lists, free), the pools' thread slots, the descriptor arrays, and the resident bytes of arenas and state
# arrays. IDLE=seconds (default 0) reads everything again that long after the last path.
#
# Usage: bench/kestrel-memory.sh [seconds per run, default 5] [connections, default 64]
# Environment: WARMUP (default 3), PATHS (default "/hello /bytes/4096 /bytes/65536 /bytes/1048576"), IDLE, APP (a built
# PageFrag.Examples.Kestrel.dll to run instead of this tree's example, as in kestrel-wrk.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-5}
connections=${2:-64}
warmup=${WARMUP:-3}
read -r -a paths <<<"${PATHS:-/hello /bytes/4096 /bytes/65536 /bytes/1048576}"
pools=(default pagefrag)
declare -A port=([default]=5080 [pagefrag]=5081)
declare -A pid=()

if [[ -n ${APP:-} ]]; then
    app=$APP
else
    dotnet build -c Release --nologo -v quiet examples/PageFrag.Examples.Kestrel >/dev/null
    app=examples/PageFrag.Examples.Kestrel/bin/Release/net10.0/PageFrag.Examples.Kestrel.dll
fi

cleanup() {
    for p in "${pid[@]}"; do
        kill "$p" 2>/dev/null || true
    done
}
trap cleanup EXIT

for pool in "${pools[@]}"; do
    PAGEFRAG_STATS=1 dotnet "$app" --pool "$pool" --urls "http://127.0.0.1:${port[$pool]}" >/dev/null &
    pid[$pool]=$!
done
for pool in "${pools[@]}"; do
    for _ in $(seq 100); do
        curl -fs "http://127.0.0.1:${port[$pool]}/hello" >/dev/null 2>&1 && break
        sleep 0.1
    done
done

# Everything about pool $1's server now.
report() {
    local p=${pid[$1]}
    awk -v name="$1" '$1 == "VmRSS:" { rss = $2 } $1 == "VmHWM:" { hwm = $2 } END { printf "%s: VmRSS %.1f MiB, peak %.1f MiB", name, rss / 1024, hwm / 1024 }' "/proc/$p/status"
    awk '$1 == "Anonymous:" { a = $2 } $1 == "Rss:" { r = $2 } END { printf ", anonymous %.1f MiB, file-backed %.1f MiB\n", a / 1024, (r - a) / 1024 }' "/proc/$p/smaps_rollup"
    curl -fs "http://127.0.0.1:${port[$1]}/stats" | sed 's/^/    /'
}

echo "load average $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores; wrk -t1 -c$connections -d${seconds}s after ${warmup}s of warm-up"
for pool in "${pools[@]}"; do
    report "$pool"
done
for path in "${paths[@]}"; do
    for pool in "${pools[@]}"; do
        wrk -t1 -c"$connections" -d"${warmup}s" "http://127.0.0.1:${port[$pool]}$path" >/dev/null
    done
    echo
    echo "== $path (load $(cut -d' ' -f1 /proc/loadavg))"
    for pool in "${pools[@]}"; do
        before=$(curl -fs "http://127.0.0.1:${port[$pool]}/stats" | awk '{ for (i = 1; i < NF; i++) if ($i == "allocatedSinceStart") print $(i + 1) }')
        out=$(wrk -t1 -c"$connections" -d"${seconds}s" "http://127.0.0.1:${port[$pool]}$path")
        rps=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' <<<"$out")
        requests=$(awk '/requests in/ { print $1 }' <<<"$out")
        after=$(curl -fs "http://127.0.0.1:${port[$pool]}/stats" | awk '{ for (i = 1; i < NF; i++) if ($i == "allocatedSinceStart") print $(i + 1) }')
        echo "$pool: $rps requests/s; GC allocation $(awk -v a="$after" -v b="$before" -v n="$requests" 'BEGIN { printf "%.0f", (n > 0 ? (a - b) * 1024 / n : 0) }') bytes per request (the /stats reads included)"
        report "$pool"
    done
done
if ((${IDLE:-0} > 0)); then
    sleep "$IDLE"
    echo
    echo "== idle ${IDLE}s"
    for pool in "${pools[@]}"; do
        report "$pool"
    done
fi
