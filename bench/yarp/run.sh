#!/usr/bin/env bash
# A YARP reverse proxy and a System.IO.Pipelines TCP relay, each in front of the same small Kestrel backend on
# loopback, each on the platform's pool (Kestrel's own for the proxy, MemoryPool<byte>.Shared for the relay)
# and on PageFrag's (the proxy: builder.Services.AddPageFragMemoryPool(); the relay: new PageFragMemoryPool()),
# loaded by wrk. For each case, pool and body size: one warm-up and one measured wrk run (--latency). Prints
# one table: requests/s, p50 and p99 latency, the proxy's (or relay's) resident and peak resident memory
# (VmRSS, VmHWM from /proc) after the run, and its garbage collections per 100k requests during the
# measured run (gen0/gen1/gen2, read from GC.CollectionCount on a separate stats port).
#
# Usage: bench/yarp/run.sh [seconds per run, default 10] [connections, default 64]
# Installs wrk with apt-get when it is missing (as root). The backend is started once; the proxy and the relay
# are started fresh for each pool.
set -euo pipefail
cd "$(dirname "$0")/../.."

seconds=${1:-10}
connections=${2:-64}
warmup=3
backend_port=5090
proxy_port=5091
relay_port=5092
stats_port=5093
bodies=(4096 65536)

if ! command -v wrk >/dev/null 2>&1; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "installing wrk" >&2
        apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
    else
        echo "bench/yarp/run.sh: wrk is not installed" >&2
        exit 1
    fi
fi

dotnet build -c Release --nologo -v quiet bench/yarp/PageFrag.Bench.Yarp.csproj >/dev/null
app=bench/yarp/bin/Release/net10.0/PageFrag.Bench.Yarp.dll

backend=
server=
cleanup() {
    [[ -n $server ]] && kill "$server" 2>/dev/null || true
    [[ -n $backend ]] && kill "$backend" 2>/dev/null || true
}
trap cleanup EXIT

# Waits until $1 answers (up to 10 s).
wait_for() {
    for _ in $(seq 100); do
        curl -fs "$1" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "bench/yarp/run.sh: $1 does not answer" >&2
    exit 1
}

# Resident memory of process $1 in MiB: field $2 of /proc/$1/status (VmRSS now, VmHWM peak).
mib() { awk -v f="$2:" '$1 == f { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }

# "gen0 gen1 gen2" collection counts of the server under test, from its stats port.
gc_counts() {
    local line
    exec 3<>"/dev/tcp/127.0.0.1/$stats_port"
    read -r line <&3
    exec 3<&-
    echo "$line"
}

# wrk's latency percentile $1 (50%, 99%) in ms.
percentile() {
    awk -v p="$1" '$1 == p {
        v = $2; if (v ~ /us$/) m = v / 1000; else if (v ~ /ms$/) m = v + 0; else if (v ~ /m$/) m = v * 60000; else m = v * 1000
        printf "%.2f", m }' <<<"$2"
}

dotnet "$app" backend --port "$backend_port" >/dev/null &
backend=$!
wait_for "http://127.0.0.1:$backend_port/bytes/1"

load=$(cut -d' ' -f1-3 /proc/loadavg)
echo "load average before: $load; $(nproc) cores; wrk -t1 -c$connections -d${seconds}s --latency (warm-up ${warmup}s)"
printf '%-6s %-9s %6s %11s %9s %9s %8s %9s %17s\n' case pool body "requests/s" "p50 ms" "p99 ms" "RSS MiB" "peak MiB" "GCs/100k g0/g1/g2"
for kind in proxy relay; do
    port=$proxy_port
    [[ $kind == relay ]] && port=$relay_port
    for pool in default pagefrag; do
        dotnet "$app" "$kind" --pool "$pool" --port "$port" --backend "$backend_port" --stats "$stats_port" >/dev/null &
        server=$!
        wait_for "http://127.0.0.1:$port/bytes/1"

        for body in "${bodies[@]}"; do
            url="http://127.0.0.1:$port/bytes/$body"
            wrk -t1 -c"$connections" -d"${warmup}s" "$url" >/dev/null
            read -r g0 g1 g2 <<<"$(gc_counts)"
            out=$(wrk -t1 -c"$connections" -d"${seconds}s" --latency "$url")
            read -r h0 h1 h2 <<<"$(gc_counts)"
            if grep -qE '^ *(Non-2xx|Socket errors)' <<<"$out"; then
                echo "warning: $kind $pool $body: $(grep -E '^ *(Non-2xx|Socket errors)' <<<"$out" | tr -s ' ' | tr '\n' ';')" >&2
            fi
            requests=$(awk '/ requests in / { print $1 }' <<<"$out")
            rps=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' <<<"$out")
            gcs=$(awk -v n="$requests" -v a=$((h0 - g0)) -v b=$((h1 - g1)) -v c=$((h2 - g2)) \
                'BEGIN { if (n > 0) printf "%.1f/%.1f/%.1f", a * 1e5 / n, b * 1e5 / n, c * 1e5 / n; else print "-" }')
            printf '%-6s %-9s %6s %11s %9s %9s %8s %9s %17s\n' "$kind" "$pool" "$((body / 1024))K" "$rps" \
                "$(percentile 50% "$out")" "$(percentile 99% "$out")" "$(mib "$server" VmRSS)" "$(mib "$server" VmHWM)" "$gcs"
        done

        kill "$server"
        wait "$server" 2>/dev/null || true
        server=
    done
done
