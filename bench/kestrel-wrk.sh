#!/usr/bin/env bash
# Kestrel with its own memory pool against Kestrel with PageFrag's (one line:
# builder.Services.AddPageFragMemoryPool()), loaded by wrk on loopback. For each pool and each path, one
# warm-up and one measured wrk run; prints requests/s, transfer rate, and the server's resident and peak
# resident memory (VmRSS, VmHWM from /proc) side by side.
#
# Usage: bench/kestrel-wrk.sh [seconds per run, default 10] [connections, default 64]
# Installs wrk with apt-get when it is missing (as root).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-10}
connections=${2:-64}
port=5080
paths=(/hello /bytes/4096 /bytes/65536 /bytes/1048576)

if ! command -v wrk >/dev/null 2>&1; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "installing wrk" >&2
        apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
    else
        echo "kestrel-wrk.sh: wrk is not installed" >&2
        exit 1
    fi
fi

dotnet build -c Release --nologo -v quiet examples/PageFrag.Examples.Kestrel >/dev/null
app=examples/PageFrag.Examples.Kestrel/bin/Release/net10.0/PageFrag.Examples.Kestrel.dll

server=
cleanup() { [[ -n $server ]] && kill "$server" 2>/dev/null || true; }
trap cleanup EXIT

# Resident memory of process $1 in MiB: field $2 of /proc/$1/status (VmRSS now, VmHWM peak).
mib() { awk -v f="$2:" '$1 == f { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }

echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores; wrk -t1 -c$connections -d${seconds}s"
printf '%-9s %-16s %12s %12s %12s %12s\n' pool path "requests/s" "MB/s" "RSS MiB" "peak MiB"
for pool in default pagefrag; do
    dotnet "$app" --pool "$pool" --urls "http://127.0.0.1:$port" >/dev/null &
    server=$!
    for _ in $(seq 100); do
        curl -fs "http://127.0.0.1:$port/hello" >/dev/null 2>&1 && break
        sleep 0.1
    done

    for path in "${paths[@]}"; do
        url="http://127.0.0.1:$port$path"
        wrk -t1 -c"$connections" -d3s "$url" >/dev/null
        out=$(wrk -t1 -c"$connections" -d"${seconds}s" "$url")
        rps=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")
        rate=$(awk '/^Transfer\/sec:/ { v = $2; if (v ~ /GB$/) m = v * 1024; else if (v ~ /MB$/) m = v + 0; else if (v ~ /KB$/) m = v / 1024; else m = v / 1048576; printf "%.1f", m }' <<<"$out")
        printf '%-9s %-16s %12s %12s %12s %12s\n' "$pool" "$path" "$rps" "$rate" "$(mib "$server" VmRSS)" "$(mib "$server" VmHWM)"
    done

    kill "$server"
    wait "$server" 2>/dev/null || true
    server=
done
