#!/usr/bin/env bash
# Engram side by side with Redis and the loopback floor, in one run on this machine.
#
# Every server runs on core 0 (taskset), every load on core 1, and engram-bench drives
# all of them with the same load shape:
#   - a raw TCP ping-pong (`engram-bench echo-server`, target tcp-echo://): the floor;
#   - redis-server (its own instance on a free port, persistence off);
#   - engramd --cores 1.
# Shapes: GET of VALUE_BYTES-byte values over KEYS prefilled keys, 1 connection (p50/p99),
# 50 connections pipeline 1 and 50 connections pipeline 16 (throughput, p99); the spin
# pair (engramd --spin-us with engram-bench --client-spin-us, 1 connection) with the CPU
# both processes burn, against the echo floor spinning the same way; then resident
# memory per key: RSS growth (VmRSS) of a fresh server after 1,000,000 SETs of 32-byte
# values to distinct keys. Around every run, the server's CPU (user and system, from
# /proc); around the 50-connection runs of redis and engramd, where perf can count the
# raw_syscalls:sys_enter tracepoint (as root), the system calls the server's threads
# entered: per request, the server's own work. The tracepoint puts every process on the
# traced system-call path while it counts, so those runs (both servers alike) are
# measured with it on, and the others without.
#
# All servers run side by side (idle ones sleep) and the measurements are interleaved:
# ROUNDS rounds (even, so that each order runs as often), each measuring every target
# in every shape for DURATION seconds, in an order that alternates between rounds. A shared machine's speed drifts over minutes,
# so a ratio is taken within each round, where its two sides ran seconds apart, and
# the table shows the median over the rounds with the range; the absolute figures are
# medians too. This script only starts the processes and records raw facts (results,
# /proc lines, clock readings) in its work directory; `engram-bench report compare`
# computes every figure from them and prints the table.
#
# Usage: tools/compare.sh [--json FILE | FILE]   (release binaries from target/release,
#        built with cargo if missing; ENGRAM_BIN_DIR=DIR takes them from DIR instead).
#        Tunables as environment variables:
#   ROUNDS=6 DURATION=3 WARMUP=1 KEYS=10000 VALUE_BYTES=32 MEMORY_KEYS=1000000 SPIN_US=50
#   SERVER_CORE=0 LOAD_CORE=1 RUN_TIMEOUT=120 (seconds, per bench run)
set -euo pipefail
# A decimal comma in a clock reading would not parse as a number.
export LC_ALL=C

repository_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${ENGRAM_BIN_DIR:-$repository_root/target/release}
# shellcheck source=tools/common.sh
source "$repository_root/tools/common.sh"
parse_report_arguments compare 2,34 "$@"
rounds=${ROUNDS:-6}
duration=${DURATION:-3}
warmup=${WARMUP:-1}
keys=${KEYS:-10000}
value_bytes=${VALUE_BYTES:-32}
memory_keys=${MEMORY_KEYS:-1000000}
spin_us=${SPIN_US:-50}
server_core=${SERVER_CORE:-0}
load_core=${LOAD_CORE:-1}
run_timeout=${RUN_TIMEOUT:-120}
work=$(mktemp -d /tmp/engram-compare.XXXXXX)
facts=$work/facts
fact "$facts" started_at "$(utc_now)"

stop_started_on_exit

note() { echo "compare: $*" >&2; }
die() { note "$*"; exit 1; }
[[ $rounds =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer, not '$rounds'"
((rounds % 2 == 0)) || note "ROUNDS=$rounds is odd: one target order runs once more than the other"

if [[ ! -x "$bin/engramd" || ! -x "$bin/engram-bench" || ! -x "$bin/engram" ]]; then
    [[ -z ${ENGRAM_BIN_DIR:-} ]] || die "engramd, engram-bench or engram missing in ENGRAM_BIN_DIR=$ENGRAM_BIN_DIR"
    note "building release binaries"
    (cd "$repository_root" && cargo build --release -p engram-server -p engram-tools --bins) >&2
fi
if ! command -v redis-server >/dev/null; then
    note "installing redis-server"
    apt-get install -y redis-server >/dev/null 2>&1 || die "redis-server missing and apt-get install failed"
fi
[[ $(nproc) -ge 2 ]] || note "only $(nproc) CPU: servers and load share a core"
if ! command -v perf >/dev/null; then
    note "installing linux-perf (system calls per request)"
    apt-get install -y linux-perf >/dev/null 2>&1 || note "linux-perf could not be installed"
fi
count_syscalls=false
if perf_error=$(perf stat -x, -e raw_syscalls:sys_enter -p $$ -o /dev/null -- sleep 0.01 2>&1); then
    count_syscalls=true
else
    note "perf cannot count system calls here, so they are not measured: ${perf_error:0:300}"
fi
for setting in rounds duration warmup keys value_bytes memory_keys spin_us server_core load_core; do
    fact "$facts" "$setting" "${!setting}"
done
fact "$facts" ticks_per_second "$(getconf CLK_TCK)"

rss_line() { grep '^VmRSS:' "/proc/$1/status"; }

# Servers by name: echo, echo-spin, redis, engram, engram-spin (the -spin ones poll
# SPIN_US before parking), and fresh ones for the memory measurement.
declare -A server_pids server_addresses
start_server() { # name kind [extra flags...]
    local name=$1 kind=$2
    shift 2
    start_benchmarked_server "$kind" "$server_core" "$work/server-$name" "$@"
    server_pids[$name]=$started_pid
    server_addresses[$name]=$started_address
}

stop_server() { # name
    stop_pid "${server_pids[$1]}"
}

# The count of a `perf stat -x,` file: its raw_syscalls:sys_enter line's first field,
# `<not counted>` when no thread of the server ran while perf counted. Fails on anything
# else (`<not supported>`, no such line), so the run is recorded as not counted.
syscall_count() { # perf-output
    awk -F, '$3 == "raw_syscalls:sys_enter" && $1 ~ /^[0-9]+$/ { print $1; found = 1 }
             $3 == "raw_syscalls:sys_enter" && $1 == "<not counted>" { print 0; found = 1 }
             END { if (!found) exit 1 }' "$1"
}

# Whether the system calls of this run are counted: the servers compared at 50
# connections, where the report gives work per request.
counts_syscalls() { # name shape
    $count_syscalls && [[ $2 == c50* && $1 != echo* ]]
}

scheme() { case "$1" in echo*) echo tcp-echo ;; redis*) echo redis ;; engram*) echo engram ;; esac; }

bench() { # out-json name [flags...]
    local out=$1 name=$2
    shift 2
    timeout "$run_timeout" taskset -c "$load_core" "$bin/engram-bench" \
        --target "$(scheme "$name")://${server_addresses[$name]}" --json "$out" "$@" >"$out.txt" 2>"$out.err" || {
        cat "$out.txt" "$out.err" >&2
        die "engram-bench failed: $name $*"
    }
}

shape_flags() { # shape
    local common=(--workload get --keys "$keys" --value-bytes "$value_bytes" --duration "$duration" --warmup "$warmup")
    case "$1" in
        c1) echo "${common[@]}" --connections 1 --pipeline 1 ;;
        c50p1) echo "${common[@]}" --connections 50 --pipeline 1 ;;
        c50p16) echo "${common[@]}" --connections 50 --pipeline 16 ;;
        spin-c1) echo "${common[@]}" --connections 1 --pipeline 1 --client-spin-us "$spin_us" ;;
    esac
}

# The targets of each shape, in the order of odd rounds (even rounds reverse it).
declare -A shape_targets=(
    [c1]="echo redis engram"
    [c50p1]="echo redis engram"
    [c50p16]="redis engram"
    [spin-c1]="echo-spin engram-spin"
)
shapes=(c1 c50p1 c50p16 spin-c1)

start_server echo echo
start_server echo-spin echo --spin-us "$spin_us"
start_server redis redis
start_server engram engram
start_server engram-spin engram --spin-us "$spin_us"
for name in redis engram engram-spin; do
    note "prefilling $name"
    bench "$work/prefill-$name.json" "$name" --workload get --keys "$keys" --value-bytes "$value_bytes" \
        --requests 1 --connections 1 --warmup 0 --prefill
done

# Around each run, the server's /proc stat line (its CPU), this script's (whose waited-for
# children are the load: engram-bench, and the few helpers run in between, which take
# no measurable CPU) and the clock.
for round in $(seq 1 "$rounds"); do
    for shape in "${shapes[@]}"; do
        read -r -a targets <<<"${shape_targets[$shape]}"
        if ((round % 2 == 0)); then
            for ((i = 0, j = ${#targets[@]} - 1; i < j; i++, j--)); do
                swap=${targets[i]} targets[i]=${targets[j]} targets[j]=$swap
            done
        fi
        for name in "${targets[@]}"; do
            note "round $round/$rounds: $name $shape"
            pid=${server_pids[$name]}
            run=$work/$name-$shape-$round
            fact "$run.facts" server_stat_before "$(stat_line "$pid")"
            fact "$run.facts" load_stat_before "$(stat_line $$)"
            fact "$run.facts" started "$(date +%s.%N)"
            if counts_syscalls "$name" "$shape"; then
                perf stat -x, -e raw_syscalls:sys_enter -p "$pid" -o "$run.perf" &
                perf_pid=$!
                pids+=("$perf_pid")
            fi
            # shellcheck disable=SC2046
            bench "$run.json" "$name" $(shape_flags "$shape")
            fact "$run.facts" ended "$(date +%s.%N)"
            fact "$run.facts" server_stat_after "$(stat_line "$pid")"
            fact "$run.facts" load_stat_after "$(stat_line $$)"
            if counts_syscalls "$name" "$shape"; then
                # perf prints its count when interrupted (it installs its own handler, so
                # the SIGINT a background job would ignore reaches it), then exits 130.
                kill -INT "$perf_pid" 2>/dev/null || true
                wait "$perf_pid" || true
                unset 'pids[-1]'
                if count=$(syscall_count "$run.perf"); then
                    fact "$run.facts" server_syscalls "$count"
                else
                    note "no system call count in $run.perf: this run is not counted"
                fi
            fi
        done
    done
done
for name in echo echo-spin redis engram engram-spin; do stop_server "$name"; done

# Memory: a fresh server, RSS before and after SETting MEMORY_KEYS distinct keys
# (sequential walkers that partition the key space exactly), and the keys it says it
# holds (redis-cli dbsize prints a number, engram info --json a document; both JSON).
load_keys() { # kind
    local kind=$1
    start_server "$kind-memory" "$kind"
    sleep 0.5
    local pid=${server_pids[$kind-memory]} memory=$work/memory-$kind
    fact "$memory.facts" rss_before "$(rss_line "$pid")"
    note "$kind: loading $memory_keys keys"
    bench "$work/$kind-load.json" "$kind-memory" --workload set --keys "$memory_keys" --key-pattern sequential \
        --value-bytes 32 --requests "$memory_keys" --connections 50 --pipeline 16
    sleep 0.5
    fact "$memory.facts" rss_after "$(rss_line "$pid")"
    case "$kind" in
        redis) redis-cli -p "${server_addresses[$kind-memory]##*:}" dbsize >"$memory-keys.json" ;;
        engram) "$bin/engram" --addr "${server_addresses[$kind-memory]}" info --json >"$memory-keys.json" ;;
    esac
    stop_server "$kind-memory"
}
load_keys redis
load_keys engram

fact "$facts" ended_at "$(utc_now)"
machine_facts "$facts"
report_flags=()
[[ -z $json_out ]] || report_flags=(--json "$json_out")
"$bin/engram-bench" report compare "$work" "${report_flags[@]}" | tee "$work/report.txt"
[[ -z $json_out ]] || note "JSON written to $json_out"
note "raw results in $work"
