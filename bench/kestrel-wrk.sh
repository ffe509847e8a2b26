#!/usr/bin/env bash
# Kestrel with its own memory pool against Kestrel with PageFrag's (one line:
# builder.Services.AddPageFragMemoryPool()), loaded by wrk on loopback.
#
# Both servers run at once (ports 5080 and 5081), each with a fresh process. For each path the two are
# warmed up, then measured back to back, so that the load of a shared machine drifts as little as possible
# between the two figures of a pair; with several rounds the order alternates (default first in odd
# rounds, PageFrag first in even ones). Right after each measured run the server's resident memory (VmRSS)
# and its peak so far (VmHWM) are read from /proc/PID/status. Paths run in order, so the rows after
# /bytes/1048576 show the memory the large bodies left behind.
#
# Usage: bench/kestrel-wrk.sh [seconds per run, default 10] [connections, default 64] [rounds, default 1]
# Environment: WARMUP=seconds of wrk before each pair of measured runs (default 5). The servers start fresh,
# and the JIT tiers their code up while they serve: on a loaded machine a server gets so little CPU that a
# short warm-up leaves the JIT in the measured run (perf showed libclrjit at 29-39 % of the servers' samples
# after 3 s at load 38); give it 15 s or more there. ARENA_SIZE=bytes passes --arena-size to PageFrag's
# server (the factory's page allocator). DISCARD=off runs PageFrag's server with
# --discard off (its trims keep free pages resident, as before PageAllocator.DiscardFreeMemory). IDLE=seconds
# (default 0: off) waits that long after the last path and prints both servers' RSS again: the memory a burst
# leaves behind once the servers are idle (PageFrag's factory trims every 10 s). APP=path of a built
# PageFrag.Examples.Kestrel.dll runs that build instead of building the example of this tree (to alternate two
# builds: `dotnet build examples/PageFrag.Examples.Kestrel -c Release -o DIR` in each tree).
# Installs wrk with apt-get when it is missing (as root).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-10}
connections=${2:-64}
rounds=${3:-1}
warmup=${WARMUP:-5}
paths=(/hello /bytes/4096 /bytes/65536 /bytes/1048576)
pools=(default pagefrag)
declare -A port=([default]=5080 [pagefrag]=5081)
declare -A pid=()

if ! command -v wrk >/dev/null 2>&1; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "installing wrk" >&2
        apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
    else
        echo "kestrel-wrk.sh: wrk is not installed" >&2
        exit 1
    fi
fi

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

# Resident memory of process $1 in MiB: field $2 of /proc/$1/status (VmRSS now, VmHWM peak).
mib() { awk -v f="$2:" '$1 == f { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }

# One measured wrk run of pool $1 on path $2; sets rps, rate (MiB/s), rss, peak, errors.
measure() {
    local out
    out=$(wrk -t1 -c"$connections" -d"${seconds}s" "http://127.0.0.1:${port[$1]}$2")
    rss=$(mib "${pid[$1]}" VmRSS)
    peak=$(mib "${pid[$1]}" VmHWM)
    rps=$(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' <<<"$out")
    rate=$(awk '/^Transfer\/sec:/ { v = $2; if (v ~ /GB$/) m = v * 1024; else if (v ~ /MB$/) m = v + 0; else if (v ~ /KB$/) m = v / 1024; else m = v / 1048576; printf "%.1f", m }' <<<"$out")
    errors=$(awk '/Non-2xx|Socket errors/ { printf "%s ", $0 }' <<<"$out")
}

for round in $(seq "$rounds"); do
    for pool in "${pools[@]}"; do
        extra=()
        if [[ $pool == pagefrag && -n ${ARENA_SIZE:-} ]]; then
            extra=(--arena-size "$ARENA_SIZE")
        fi
        if [[ $pool == pagefrag && -n ${DISCARD:-} ]]; then
            extra+=(--discard "$DISCARD")
        fi
        dotnet "$app" --pool "$pool" --urls "http://127.0.0.1:${port[$pool]}" "${extra[@]}" >/dev/null &
        pid[$pool]=$!
    done
    for pool in "${pools[@]}"; do
        for _ in $(seq 100); do
            curl -fs "http://127.0.0.1:${port[$pool]}/hello" >/dev/null 2>&1 && break
            sleep 0.1
        done
    done

    order=("${pools[@]}")
    if ((round % 2 == 0)); then
        order=(pagefrag default)
    fi

    echo
    echo "round $round of $rounds: load average $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) cores; wrk -t1 -c$connections -d${seconds}s after ${warmup}s of warm-up; measured ${order[0]} first${ARENA_SIZE:+; PageFrag ARENA_SIZE=$ARENA_SIZE}${DISCARD:+; PageFrag DISCARD=$DISCARD}"
    echo "(K = Kestrel's own pool, PF = PageFrag's; RSS and peak in MiB, read right after each pool's measured run)"
    printf '%-15s %10s %10s %6s  %7s %7s %6s  %7s %7s  %8s %8s\n' path "K req/s" "PF req/s" "PF/K" "K RSS" "PF RSS" "PF/K" "K peak" "PF peak" "K MiB/s" "PF MiB/s"
    for path in "${paths[@]}"; do
        for pool in "${order[@]}"; do
            wrk -t1 -c"$connections" -d"${warmup}s" "http://127.0.0.1:${port[$pool]}$path" >/dev/null
        done

        declare -A r=()
        for pool in "${order[@]}"; do
            measure "$pool" "$path"
            r[$pool.rps]=$rps r[$pool.rss]=$rss r[$pool.peak]=$peak r[$pool.rate]=$rate
            if [[ -n $errors ]]; then
                echo "  $pool $path: $errors" >&2
            fi
        done

        ratio=$(awk -v a="${r[pagefrag.rps]}" -v b="${r[default.rps]}" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
        mem=$(awk -v a="${r[pagefrag.rss]}" -v b="${r[default.rss]}" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
        printf '%-15s %10s %10s %6s  %7s %7s %6s  %7s %7s  %8s %8s\n' "$path" \
            "${r[default.rps]}" "${r[pagefrag.rps]}" "$ratio" "${r[default.rss]}" "${r[pagefrag.rss]}" "$mem" \
            "${r[default.peak]}" "${r[pagefrag.peak]}" "${r[default.rate]}" "${r[pagefrag.rate]}"
        unset r
    done

    if ((${IDLE:-0} > 0)); then
        sleep "$IDLE"
        printf '%-15s %10s %10s %6s  %7s %7s %6s\n' "idle ${IDLE}s" "" "" "" "$(mib "${pid[default]}" VmRSS)" "$(mib "${pid[pagefrag]}" VmRSS)" \
            "$(awk -v a="$(mib "${pid[pagefrag]}" VmRSS)" -v b="$(mib "${pid[default]}" VmRSS)" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')"
    fi

    for pool in "${pools[@]}"; do
        kill "${pid[$pool]}"
        wait "${pid[$pool]}" 2>/dev/null || true
    done
    pid=()
done
echo
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
