#!/usr/bin/env bash
# Server CPU per request of two engramd builds, measured side by side: the way to see a
# change of a few percent on a machine whose timings drift by tens of percent between
# runs minutes apart, which a comparison of separate runs cannot resolve.
#
# Both builds' engramd --cores 1 run at once on SERVER_CORE, idle but for the load;
# each build's own engram-bench on LOAD_CORE prefills KEYS keys into its server, then
# the two take turns, PAIRS times, each sending GETs of VALUE_BYTES-byte values over
# CONNECTIONS connections with the given pipeline for DURATION seconds. The order
# alternates per pair, so drift within a pair is charged to each build alike. A run's
# CPU per request is its server's user and system ticks (/proc) over the requests it
# answered. Prints one line per pair and, last, the B/A ratios of CPU per request
# sorted from lowest, how many pairs had B lower, and each build's mean.
#
# Usage: tools/ab-cpu.sh DIR_A DIR_B [PIPELINE]   (default 16; each DIR holds engramd
#        and engram-bench). Tunables as environment variables:
#   PAIRS=10 DURATION=4 KEYS=10000 VALUE_BYTES=32 CONNECTIONS=50 SERVER_CORE=0 LOAD_CORE=1
set -euo pipefail
export LC_ALL=C

repository_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=tools/common.sh
source "$repository_root/tools/common.sh"
case ${1:-} in -h | --help | "") sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
dir_a=$1
dir_b=${2:?two build directories are needed}
pipeline=${3:-16}
pairs=${PAIRS:-10}
duration=${DURATION:-4}
keys=${KEYS:-10000}
value_bytes=${VALUE_BYTES:-32}
connections=${CONNECTIONS:-50}
server_core=${SERVER_CORE:-0}
load_core=${LOAD_CORE:-1}

die() { echo "ab-cpu: $*" >&2; exit 1; }
for dir in "$dir_a" "$dir_b"; do
    [[ -x $dir/engramd && -x $dir/engram-bench ]] || die "engramd or engram-bench missing in $dir"
done
[[ $pipeline =~ ^[1-9][0-9]*$ ]] || die "PIPELINE must be a positive integer, not '$pipeline'"
[[ $pairs =~ ^[1-9][0-9]*$ && $duration =~ ^[1-9][0-9]*$ ]] || die "PAIRS and DURATION must be positive integers"

work=$(mktemp -d /tmp/engram-ab-cpu.XXXXXX)
stop_started_on_exit
ticks_per_second=$(getconf CLK_TCK)

declare -A server_pid address
for build in a b; do
    bin=$dir_a
    [[ $build == a ]] || bin=$dir_b
    start_benchmarked_server engram "$server_core" "$work/$build"
    server_pid[$build]=$started_pid
    address[$build]=$started_address
    taskset -c "$load_core" "$bin/engram-bench" --target "engram://$started_address" --workload get \
        --keys "$keys" --value-bytes "$value_bytes" --requests 1 --connections 1 --warmup 0 --prefill \
        >"$work/$build-prefill.txt" 2>&1 || { cat "$work/$build-prefill.txt" >&2; die "prefill failed"; }
done

run() { # build -> prints "requests/s cpu_us_per_request"
    local build=$1 bin=$dir_a user_before system_before user_after system_after rate
    [[ $build == a ]] || bin=$dir_b
    read -r user_before system_before < <(cpu_ticks "${server_pid[$build]}")
    taskset -c "$load_core" "$bin/engram-bench" --target "engram://${address[$build]}" --workload get \
        --keys "$keys" --value-bytes "$value_bytes" --connections "$connections" --pipeline "$pipeline" \
        --duration "$duration" --warmup 0 >"$work/$build-load.txt" 2>&1 ||
        { cat "$work/$build-load.txt" >&2; die "engram-bench failed against build $build"; }
    read -r user_after system_after < <(cpu_ticks "${server_pid[$build]}")
    rate=$(sed -n 's/.*: \([0-9]*\) ops\/s.*/\1/p' "$work/$build-load.txt" | head -1)
    [[ $rate =~ ^[1-9][0-9]*$ ]] || die "no ops/s in $work/$build-load.txt"
    awk -v ticks=$((user_after - user_before + system_after - system_before)) -v hz="$ticks_per_second" -v rate="$rate" -v seconds="$duration" \
        'BEGIN { printf "%d %.3f\n", rate, ticks / hz / (rate * seconds) * 1e6 }'
}

echo "ab-cpu: A=$dir_a B=$dir_b, pipeline $pipeline, $connections connections, $pairs pairs of ${duration} s"
for pair in $(seq 1 "$pairs"); do
    if ((pair % 2)); then
        read -r rate_a cpu_a < <(run a)
        read -r rate_b cpu_b < <(run b)
    else
        read -r rate_b cpu_b < <(run b)
        read -r rate_a cpu_a < <(run a)
    fi
    printf 'pair %2d  A: %8d/s %6.3f µs   B: %8d/s %6.3f µs   B/A %.3f\n' \
        "$pair" "$rate_a" "$cpu_a" "$rate_b" "$cpu_b" "$(awk -v a="$cpu_a" -v b="$cpu_b" 'BEGIN { print b / a }')"
    echo "$cpu_a $cpu_b" >>"$work/pairs.txt"
done
ratios=$(awk '{ printf "%.3f\n", $2 / $1 }' "$work/pairs.txt" | sort -n | tr '\n' ' ')
echo "B/A CPU per request, sorted: $ratios"
awk '{ a += $1; b += $2; lower += ($2 < $1) }
     END { printf "B lower in %d of %d pairs; mean CPU per request A %.3f µs, B %.3f µs\n", lower, NR, a / NR, b / NR }' \
    "$work/pairs.txt"
