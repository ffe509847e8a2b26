#!/usr/bin/env bash
# The seed's netcat test (seed 004: `head -c 20G /dev/zero | nc 127.0.0.1 1234` into `nc -l -k 1234 > /dev/null`)
# on loopback, in one run: OpenBSD nc into OpenBSD nc (the baseline), nc into `pagefrag nc -l` (the page pool
# receive path), `pagefrag nc` into nc -l (the fragment cache send path), pagefrag into pagefrag, and iperf3 as
# the ceiling. Prints a markdown table (median of RUNS) with the load average before and after.
#
#   bench/nc-speed.sh                 # 4 GiB per transfer, 3 runs each
#   SIZE=1G RUNS=5 bench/nc-speed.sh
#
# Installs netcat-openbsd and iperf3 with apt-get when they are missing and the script runs as root.
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE=${SIZE:-4G}
RUNS=${RUNS:-3}
PORT=${PORT:-47211}

need=()
command -v nc >/dev/null 2>&1 || need+=(netcat-openbsd)
command -v iperf3 >/dev/null 2>&1 || need+=(iperf3)
if ((${#need[@]})); then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "nc-speed: installing ${need[*]}" >&2
        apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    else
        echo "nc-speed: please install ${need[*]}" >&2
        exit 2
    fi
fi

./pagefrag --help >/dev/null # builds the tool in Release when needed
PF=(dotnet "$PWD/src/PageFrag.Cli/bin/Release/net10.0/PageFrag.Cli.dll" nc)
BYTES=$(numfmt --from=iec "$SIZE")

# Waits until something listens on TCP port $1 of 127.0.0.1 (read from /proc, so that no probe connection is used up).
wait_listening() {
    local hex
    hex=$(printf ':%04X' "$1")
    for _ in $(seq 1 500); do
        if awk -v p="$hex" 'NR > 1 && $2 ~ p"$" && $4 == "0A" { found = 1 } END { exit !found }' /proc/net/tcp; then
            return 0
        fi
        sleep 0.01
    done
    echo "nc-speed: nothing listens on port $1" >&2
    return 1
}

# One transfer: $1 = listener command, $2 = client command (reads the data on stdin). Prints seconds.
transfer() {
    local listener=$1 client=$2 start end
    bash -c "$listener > /dev/null" &
    local lpid=$!
    wait_listening "$PORT"
    start=$(date +%s.%N)
    head -c "$SIZE" /dev/zero | bash -c "$client"
    wait "$lpid"
    end=$(date +%s.%N)
    awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f\n", b - a }'
}

median() { sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

row() {
    local label=$1 listener=$2 client=$3 times=() t
    for _ in $(seq 1 "$RUNS"); do
        t=$(transfer "$listener" "$client")
        times+=("$t")
    done
    local med
    med=$(printf '%s\n' "${times[@]}" | median)
    printf '| %s | %.2f s | %.0f MB/s | %s|\n' "$label" "$med" "$(awk -v b="$BYTES" -v t="$med" 'BEGIN { print b / t / 1e6 }')" "$(printf '%.2f s ' "${times[@]}")"
}

iperf_row() {
    local rates=() r
    for _ in $(seq 1 "$RUNS"); do
        iperf3 -s -1 -B 127.0.0.1 -p "$PORT" >/dev/null 2>&1 &
        local spid=$!
        wait_listening "$PORT"
        # The receiver's figure, in Mbit/s.
        r=$(iperf3 -c 127.0.0.1 -p "$PORT" -n "$SIZE" -f m | awk '/receiver/ { for (i = 1; i <= NF; i++) if ($i == "Mbits/sec") print $(i - 1) }')
        wait "$spid" || true
        rates+=("$r")
    done
    local med
    med=$(printf '%s\n' "${rates[@]}" | median)
    printf '| iperf3 -c → iperf3 -s (the ceiling: no pipe, no stdout) | %.2f s | %.0f MB/s | %s|\n' \
        "$(awk -v b="$BYTES" -v r="$med" 'BEGIN { print b * 8 / (r * 1e6) }')" "$(awk -v r="$med" 'BEGIN { print r / 8 }')" "$(printf '%s Mbit/s ' "${rates[@]}")"
}

echo "nc-speed: $SIZE per transfer, median of $RUNS, $(nproc) CPUs, load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| transfer (\`head -c $SIZE /dev/zero | client\` → \`listener > /dev/null\`) | median time | throughput | runs |"
echo "|---|---:|---:|---|"
row "nc → nc -l (baseline)" "nc -l 127.0.0.1 $PORT" "nc -N 127.0.0.1 $PORT"
row "nc → pagefrag nc -l (page pool receive path)" "${PF[*]} -l 127.0.0.1 $PORT" "nc -N 127.0.0.1 $PORT"
row "pagefrag nc → nc -l (fragment cache send path)" "nc -l 127.0.0.1 $PORT" "${PF[*]} -N 127.0.0.1 $PORT"
row "pagefrag nc → pagefrag nc -l (both)" "${PF[*]} -l 127.0.0.1 $PORT" "${PF[*]} -N 127.0.0.1 $PORT"
iperf_row
echo
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
