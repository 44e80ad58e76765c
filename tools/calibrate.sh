#!/usr/bin/env bash
# engram-bench calibrated against redis-benchmark (issue 3: within 10% of it for the
# same shape): both load one redis-server with the same shape, and their throughputs
# are compared.
#
# redis-server runs on core 0 (taskset), the load on core 1. Shapes: GET and SET of
# VALUE_BYTES-byte values over KEYS random keys, 50 connections, pipeline 1 and 16
# (redis-benchmark -c 50 -P N -r KEYS -d VALUE_BYTES; engram-bench --connections 50
# --pipeline N --keys KEYS --value-bytes VALUE_BYTES). Each run makes the same number of
# requests in both tools (REQUESTS_UNPIPELINED, REQUESTS_PIPELINED), with no warm-up in
# either; GETs read keys that both tools' prefill wrote, and an engram-bench run that
# reports a miss or an error is refused. The key names differ: redis-benchmark's are
# `key:` and 12 digits, engram-bench's `key:` and the decimal index.
#
# A tool that saturates its own core measures itself rather than the server. So every
# run also records how busy each side was (CPU time over wall time: redis-server's,
# and the tool's) and how many commands redis-server counted (INFO's
# total_commands_processed). That count over the tool's wall time, start to exit, is the
# rate the server saw, a check of each tool's own figure that does not depend on the
# tool (slightly low: the wall time includes starting and connecting). redis-benchmark sends two CONFIG GETs of its own
# when it starts, so its count is the requests plus 2; engram-bench's must equal the
# requests it reports.
#
# As in compare.sh, the runs are interleaved: ROUNDS rounds, each running both tools on
# every shape in an order that alternates between rounds, and the ratio
# engram-bench/redis-benchmark is taken within each round. The table shows its median
# over the rounds with the range. A run that fails is kept as null and left out of the
# medians, so one bad run does not lose the others. This script only starts the
# processes and records raw facts (outputs, /proc lines, INFO counters, clock readings)
# in its work directory; `engram-bench report calibrate` computes every figure from them.
#
# Usage: tools/calibrate.sh [--json FILE | FILE]   (release engram-bench from
#        target/release, built with cargo if missing; ENGRAM_BIN_DIR=DIR takes it from
#        DIR instead). Tunables as environment variables:
#   ROUNDS=4 REQUESTS_UNPIPELINED=300000 REQUESTS_PIPELINED=2000000 KEYS=10000
#   VALUE_BYTES=32 SERVER_CORE=0 LOAD_CORE=1 RUN_TIMEOUT=120 (seconds, per run)
set -euo pipefail
export LC_ALL=C

repository_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${ENGRAM_BIN_DIR:-$repository_root/target/release}
# shellcheck source=tools/common.sh
source "$repository_root/tools/common.sh"
parse_report_arguments calibrate 2,36 "$@"
rounds=${ROUNDS:-4}
requests_unpipelined=${REQUESTS_UNPIPELINED:-300000}
requests_pipelined=${REQUESTS_PIPELINED:-2000000}
keys=${KEYS:-10000}
value_bytes=${VALUE_BYTES:-32}
server_core=${SERVER_CORE:-0}
load_core=${LOAD_CORE:-1}
run_timeout=${RUN_TIMEOUT:-120}
connections=50
work=$(mktemp -d /tmp/engram-calibrate.XXXXXX)
facts=$work/facts
fact "$facts" started_at "$(utc_now)"

note() { echo "calibrate: $*" >&2; }
die() { note "$*"; exit 1; }
for setting in ROUNDS=$rounds REQUESTS_UNPIPELINED=$requests_unpipelined REQUESTS_PIPELINED=$requests_pipelined \
    KEYS=$keys VALUE_BYTES=$value_bytes RUN_TIMEOUT=$run_timeout; do
    [[ ${setting#*=} =~ ^[1-9][0-9]*$ ]] || die "${setting%%=*} must be a positive integer, not '${setting#*=}'"
done
for setting in SERVER_CORE=$server_core LOAD_CORE=$load_core; do
    [[ ${setting#*=} =~ ^[0-9]+$ ]] || die "${setting%%=*} must be a CPU number, not '${setting#*=}'"
done
((rounds % 2 == 0)) || note "ROUNDS=$rounds is odd: one tool order runs once more than the other"

if [[ ! -x "$bin/engram-bench" ]]; then
    [[ -z ${ENGRAM_BIN_DIR:-} ]] || die "no engram-bench in ENGRAM_BIN_DIR=$ENGRAM_BIN_DIR"
    note "building engram-bench"
    (cd "$repository_root" && cargo build --release -p engram-tools --bin engram-bench) >&2
fi
if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null; then
    note "installing redis-server and redis-tools"
    apt-get install -y redis-server redis-tools >/dev/null 2>&1 || die "redis-server or redis-benchmark missing and apt-get install failed"
fi
for setting in rounds requests_unpipelined requests_pipelined keys value_bytes connections server_core load_core; do
    fact "$facts" "$setting" "${!setting}"
done
fact "$facts" ticks_per_second "$(getconf CLK_TCK)"
fact "$facts" redis_version_line "$(redis-server --version)"

port=$(free_port)
taskset -c "$server_core" redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
    --daemonize no --protected-mode no --logfile "$work/redis.log" >/dev/null 2>&1 &
redis_pid=$!
trap 'kill "$redis_pid" 2>/dev/null || true; wait 2>/dev/null || true' EXIT
trap 'exit 130' INT TERM
for _ in $(seq 1 100); do
    redis-cli -p "$port" ping >/dev/null 2>&1 && break
    sleep 0.1
done
# The answer must come from our server, not from one that took the port first.
kill -0 "$redis_pid" 2>/dev/null && redis-cli -p "$port" ping >/dev/null 2>&1 ||
    die "redis-server did not start on port $port (see $work/redis.log)"

# Both tools' key spaces hold values before any GET is measured.
note "prefilling both key spaces"
redis-benchmark -p "$port" -c "$connections" -P 16 -t set -r "$keys" -d "$value_bytes" -n $((keys * 20)) -q \
    >"$work/prefill.out" 2>&1 || { cat "$work/prefill.out" >&2; die "redis-benchmark's prefill failed"; }
"$bin/engram-bench" --target "redis://127.0.0.1:$port" --workload get --keys "$keys" --value-bytes "$value_bytes" \
    --requests 1 --connections 1 --warmup 0 --prefill >"$work/prefill.out" 2>&1 ||
    { cat "$work/prefill.out" >&2; die "engram-bench's prefill failed"; }

requests_of() { case "$1" in *-unpipelined) echo "$requests_unpipelined" ;; *-pipelined) echo "$requests_pipelined" ;; esac; }
pipeline_of() { case "$1" in *-unpipelined) echo 1 ;; *-pipelined) echo 16 ;; esac; }
command_of() { echo "${1%%-*}"; }

# Runs one tool on one shape, its output to RUN.csv (redis-benchmark) or RUN.json
# (engram-bench); fails as the tool does.
run_tool() { # tool shape run
    local tool=$1 shape=$2 run=$3
    local requests pipeline command
    requests=$(requests_of "$shape") pipeline=$(pipeline_of "$shape") command=$(command_of "$shape")
    case "$tool" in
        redis-benchmark)
            timeout "$run_timeout" taskset -c "$load_core" redis-benchmark -p "$port" -c "$connections" \
                -P "$pipeline" -t "$command" -r "$keys" -d "$value_bytes" -n "$requests" --csv \
                >"$run.csv" 2>"$run.err"
            ;;
        engram-bench)
            timeout "$run_timeout" taskset -c "$load_core" "$bin/engram-bench" --target "redis://127.0.0.1:$port" \
                --workload "$command" --keys "$keys" --value-bytes "$value_bytes" --connections "$connections" \
                --pipeline "$pipeline" --requests "$requests" --warmup 0 --json "$run.json" \
                >/dev/null 2>"$run.err"
            ;;
    esac
}

# The raw total_commands_processed line of INFO.
commands_line() { redis-cli -p "$port" info stats | grep '^total_commands_processed:'; }

# Around each run: redis-server's command count and /proc stat line (its CPU), this
# script's stat line (whose waited-for children are the tool) and the clock.
shapes=(get-unpipelined get-pipelined set-unpipelined set-pipelined)
for round in $(seq 1 "$rounds"); do
    for shape in "${shapes[@]}"; do
        tools=(redis-benchmark engram-bench)
        ((round % 2 == 0)) && tools=(engram-bench redis-benchmark)
        for tool in "${tools[@]}"; do
            note "round $round/$rounds: $tool $shape"
            run=$work/$round-$shape-$tool
            fact "$run.facts" commands_before "$(commands_line)"
            fact "$run.facts" server_stat_before "$(stat_line "$redis_pid")"
            fact "$run.facts" load_stat_before "$(stat_line $$)"
            fact "$run.facts" started "$(date +%s.%N)"
            status=0
            run_tool "$tool" "$shape" "$run" || status=$?
            fact "$run.facts" ended "$(date +%s.%N)"
            fact "$run.facts" server_stat_after "$(stat_line "$redis_pid")"
            fact "$run.facts" load_stat_after "$(stat_line $$)"
            fact "$run.facts" commands_after "$(commands_line)"
            fact "$run.facts" exit_status "$status"
            ((status == 0)) || { cat "$run.err" >&2; note "round $round: $tool $shape failed (exit status $status)"; }
        done
    done
done

fact "$facts" ended_at "$(utc_now)"
machine_facts "$facts"
report_flags=()
[[ -z $json_out ]] || report_flags=(--json "$json_out")
"$bin/engram-bench" report calibrate "$work" "${report_flags[@]}"
[[ -z $json_out ]] || note "wrote $json_out"
note "raw results in $work"
