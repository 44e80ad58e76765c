#!/usr/bin/env bash
# Where each server's CPU goes per request, at CONNECTIONS connections: the TCP send
# (`tcp_sendmsg` with everything it calls: on loopback that includes the receiving
# socket's side of TCP and the wake-up of its reader), the TCP receive (`tcp_recvmsg`
# and what it calls), the rest of the kernel (system calls, io_uring or epoll, the
# scheduler) and user space. The first two are what any server pays for one read and
# one write of the same segments; the last two are what a server can still cut.
#
# The TCP echo floor (`engram-bench echo-server`, pipeline 1 only), redis-server and
# engramd --cores 1 each run on SERVER_CORE, engram-bench on LOAD_CORE with the same
# GET load for each. While the load runs, `perf record -e cpu-clock -g -p PID` samples
# the server for DURATION seconds, and its /proc stat and the clock are read around
# the sampling. The requests in that window are estimated from the load's average
# rate over its whole run, and a sample's share of the server's CPU is taken as its
# share of the CPU per request. The sampling's own interrupts are charged to the
# server's system time, so "kernel" holds a little of perf too: compare servers
# measured alike, not these figures with unprofiled ones. Needs perf with kernel
# samples and symbols (root, or perf_event_paranoid < 2 and kptr_restrict 0).
#
# Usage: tools/cpu-breakdown.sh [PIPELINE]   (default 1; release binaries from
#        target/release, or ENGRAM_BIN_DIR=DIR). Tunables as environment variables:
#   DURATION=4 KEYS=10000 VALUE_BYTES=32 CONNECTIONS=50 SERVER_CORE=0 LOAD_CORE=1
set -euo pipefail
export LC_ALL=C

repository_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${ENGRAM_BIN_DIR:-$repository_root/target/release}
# shellcheck source=tools/common.sh
source "$repository_root/tools/common.sh"
case ${1:-} in -h | --help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
pipeline=${1:-1}
duration=${DURATION:-4}
keys=${KEYS:-10000}
value_bytes=${VALUE_BYTES:-32}
connections=${CONNECTIONS:-50}
server_core=${SERVER_CORE:-0}
load_core=${LOAD_CORE:-1}

die() { echo "cpu-breakdown: $*" >&2; exit 1; }
[[ $pipeline =~ ^[1-9][0-9]*$ ]] || die "PIPELINE must be a positive integer, not '$pipeline'"
[[ $duration =~ ^[1-9][0-9]*$ ]] || die "DURATION must be a positive whole number of seconds"
command -v perf >/dev/null || apt-get install -y linux-perf >/dev/null 2>&1 || die "perf missing and apt-get install failed"
command -v redis-server >/dev/null || apt-get install -y redis-server >/dev/null 2>&1 ||
    die "redis-server missing and apt-get install failed"
if [[ ! -x "$bin/engramd" || ! -x "$bin/engram-bench" ]]; then
    [[ -z ${ENGRAM_BIN_DIR:-} ]] || die "engramd or engram-bench missing in ENGRAM_BIN_DIR=$ENGRAM_BIN_DIR"
    (cd "$repository_root" && cargo build --release -p engram-server -p engram-tools --bins) >&2
fi

work=$(mktemp -d /tmp/engram-cpu-breakdown.XXXXXX)
stop_started_on_exit
ticks_per_second=$(getconf CLK_TCK)

start_server() { # name -> sets server_pid and server_target
    start_benchmarked_server "$1" "$server_core" "$work/$1"
    server_pid=$started_pid
    case "$1" in
        echo) server_target=tcp-echo://$started_address ;;
        *) server_target=$1://$started_address ;;
    esac
}

load() { # target out [flags...]
    local target=$1 out=$2
    shift 2
    taskset -c "$load_core" "$bin/engram-bench" --target "$target" --workload get --keys "$keys" \
        --value-bytes "$value_bytes" "$@" >"$out" 2>&1
}

# The percentage of samples in a kernel function and everything it called.
inclusive_share() { # report symbol
    awk -v symbol="$2" '$3 == "[k]" && $4 == symbol { sub("%", "", $1); print $1; found = 1; exit }
                         END { if (!found) print 0 }' "$1"
}

servers=(redis engram)
((pipeline > 1)) || servers=(echo "${servers[@]}")
printf '%-7s %10s %10s | %9s %9s %9s %9s   (µs per request, pipeline %s, %s connections)\n' \
    server requests/s CPU "TCP send" "TCP recv" "kernel" user "$pipeline" "$connections"
for name in "${servers[@]}"; do
    start_server "$name"
    [[ $name == echo ]] || load "$server_target" "$work/$name-prefill.txt" --requests 1 --connections 1 --warmup 0 --prefill
    load "$server_target" "$work/$name-load.txt" --connections "$connections" --pipeline "$pipeline" \
        --duration $((duration + 3)) --warmup 1 &
    load_pid=$!
    pids+=("$load_pid")
    sleep 2
    read -r user_before system_before < <(cpu_ticks "$server_pid")
    started=$(date +%s.%N)
    perf record -q -e cpu-clock -g -p "$server_pid" -o "$work/$name.perf" -- sleep "$duration" 2>"$work/$name.perf.err" ||
        die "perf record failed (see $work/$name.perf.err)"
    ended=$(date +%s.%N)
    read -r user_after system_after < <(cpu_ticks "$server_pid")
    load_status=0
    wait "$load_pid" || load_status=$?
    forget_pid "$load_pid"
    ((load_status == 0)) || { cat "$work/$name-load.txt" >&2; die "engram-bench failed against $name"; }
    stop_pid "$server_pid"
    perf report -i "$work/$name.perf" --children --sort sym -g none --stdio >"$work/$name.report" 2>"$work/$name.report.err" ||
        die "perf report failed (see $work/$name.report.err)"
    grep -q '\[k\] tcp_sendmsg$' "$work/$name.report" ||
        die "no kernel samples of tcp_sendmsg in $work/$name.report: perf needs kernel samples and symbols here"
    rate=$(sed -n 's/.*: \([0-9]*\) ops\/s.*/\1/p' "$work/$name-load.txt")
    [[ $rate =~ ^[0-9]+$ ]] || die "no ops/s in $work/$name-load.txt"
    # Self shares: the kernel's is the sum over [k] symbols, the rest is user space.
    kernel=$(awk '$3 == "[k]" { sub("%", "", $2); total += $2 } END { print total + 0 }' "$work/$name.report")
    send=$(inclusive_share "$work/$name.report" tcp_sendmsg)
    receive=$(inclusive_share "$work/$name.report" tcp_recvmsg)
    awk -v name="$name" -v rate="$rate" -v ticks=$((user_after - user_before + system_after - system_before)) \
        -v hz="$ticks_per_second" -v started="$started" -v ended="$ended" \
        -v send="$send" -v receive="$receive" -v kernel="$kernel" 'BEGIN {
            cpu = ticks / hz / (rate * (ended - started)) * 1e6
            printf "%-7s %10d %10.2f | %9.2f %9.2f %9.2f %9.2f\n", name, rate, cpu, cpu * send / 100,
                cpu * receive / 100, cpu * (kernel - send - receive) / 100, cpu * (100 - kernel) / 100 }'
done
echo "cpu-breakdown: samples and reports in $work" >&2
