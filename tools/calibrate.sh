#!/usr/bin/env bash
# engram-bench calibrated against redis-benchmark: both load one redis-server with the
# same shape, and their throughputs are compared.
#
# redis-server runs on core 0 (taskset), the load on core 1. Shapes: GET and SET of
# VALUE_BYTES-byte values over KEYS random keys, 50 connections, pipeline 1 and 16
# (redis-benchmark -c 50 -P N -r KEYS -d VALUE_BYTES; engram-bench --connections 50
# --pipeline N --keys KEYS --value-bytes VALUE_BYTES). Each run makes the same number of
# requests in both tools (REQUESTS_P1, REQUESTS_P16), with no warm-up in either; GETs
# read keys that both tools' prefill wrote, so neither measures misses. The key names
# differ: redis-benchmark's are `key:` and 12 digits, engram-bench's `key:` and the
# decimal index.
#
# A tool that saturates its own core measures itself rather than the server. So every
# run also records how busy each side was (CPU time over wall time: redis-server's,
# and the tool's) and how many commands redis-server counted (INFO's
# total_commands_processed). That count over the run's wall time is the rate the server
# saw, a check of each tool's own figure that does not depend on the tool (slightly low:
# the wall time includes connecting). redis-benchmark sends two CONFIG GETs of its own
# when it starts, so its count is the requests plus 2.
#
# As in compare.sh, the runs are interleaved: ROUNDS rounds, each running both tools on
# every shape in an order that alternates between rounds, and the ratio
# engram-bench/redis-benchmark is taken within each round. The table shows its median
# over the rounds with the range; the issue's bar is a median within 0.9-1.1.
#
# Usage: tools/calibrate.sh [--json FILE | FILE]   (release engram-bench from
#        target/release; built with cargo if missing). Tunables as environment variables:
#   ROUNDS=4 REQUESTS_P1=300000 REQUESTS_P16=2000000 KEYS=10000 VALUE_BYTES=32
#   SERVER_CORE=0 LOAD_CORE=1 RUN_TIMEOUT=120 (seconds, per run)
set -euo pipefail
export LC_ALL=C

repository_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin="$repository_root/target/release"
json_out=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --json) json_out=${2:?--json needs a file}; shift 2 ;;
        -h | --help) sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "calibrate: unknown flag $1" >&2; exit 2 ;;
        *) json_out=$1; shift ;;
    esac
done
rounds=${ROUNDS:-4}
requests_p1=${REQUESTS_P1:-300000}
requests_p16=${REQUESTS_P16:-2000000}
keys=${KEYS:-10000}
value_bytes=${VALUE_BYTES:-32}
server_core=${SERVER_CORE:-0}
load_core=${LOAD_CORE:-1}
run_timeout=${RUN_TIMEOUT:-120}
connections=50
work=$(mktemp -d /tmp/engram-calibrate.XXXXXX)
started_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)

note() { echo "calibrate: $*" >&2; }
die() { note "$*"; exit 1; }
for number in "$rounds" "$requests_p1" "$requests_p16" "$keys" "$value_bytes"; do
    [[ $number =~ ^[1-9][0-9]*$ ]] || die "ROUNDS, REQUESTS_P1, REQUESTS_P16, KEYS and VALUE_BYTES must be positive integers, not '$number'"
done

if [[ ! -x "$bin/engram-bench" ]]; then
    note "building engram-bench"
    (cd "$repository_root" && cargo build --release -p engram-tools --bin engram-bench) >&2
fi
if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null; then
    note "installing redis-server and redis-tools"
    apt-get install -y redis-server redis-tools >/dev/null 2>&1 || die "redis-server or redis-benchmark missing and apt-get install failed"
fi

# shellcheck source=tools/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

port=$((20000 + RANDOM % 20000))
for _ in $(seq 1 100); do
    ss -Htln "sport = :$port" 2>/dev/null | grep -q . || break
    port=$((20000 + RANDOM % 20000))
done
taskset -c "$server_core" redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
    --daemonize no --protected-mode no --logfile "$work/redis.log" >/dev/null 2>&1 &
redis_pid=$!
trap 'kill "$redis_pid" 2>/dev/null || true; wait 2>/dev/null || true' EXIT
trap 'exit 130' INT TERM
for _ in $(seq 1 100); do
    redis-cli -p "$port" ping >/dev/null 2>&1 && break
    sleep 0.1
done
redis-cli -p "$port" ping >/dev/null 2>&1 || die "redis-server did not start (see $work/redis.log)"

# Both tools' key spaces hold values before any GET is measured.
note "prefilling both key spaces"
redis-benchmark -p "$port" -c "$connections" -P 16 -t set -r "$keys" -d "$value_bytes" -n $((keys * 20)) -q \
    >/dev/null
"$bin/engram-bench" --target "redis://127.0.0.1:$port" --workload get --keys "$keys" --value-bytes "$value_bytes" \
    --requests 1 --connections 1 --warmup 0 --prefill >/dev/null 2>&1

requests_of() { case "$1" in *p1) echo "$requests_p1" ;; *p16) echo "$requests_p16" ;; esac; }
pipeline_of() { case "$1" in *p1) echo 1 ;; *p16) echo 16 ;; esac; }
command_of() { echo "${1%-*}"; }

# Prints requests per second.
run_tool() { # tool shape
    local tool=$1 shape=$2 out
    local requests pipeline command
    requests=$(requests_of "$shape") pipeline=$(pipeline_of "$shape") command=$(command_of "$shape")
    case "$tool" in
        redis-benchmark)
            out=$(timeout "$run_timeout" taskset -c "$load_core" redis-benchmark -p "$port" -c "$connections" \
                -P "$pipeline" -t "$command" -r "$keys" -d "$value_bytes" -n "$requests" --csv) ||
                die "redis-benchmark failed: $shape"
            # The CSV's second column of the data row is requests per second.
            awk -F'"' 'NR == 2 { print $4 }' <<<"$out"
            ;;
        engram-bench)
            timeout "$run_timeout" taskset -c "$load_core" "$bin/engram-bench" --target "redis://127.0.0.1:$port" \
                --workload "$command" --keys "$keys" --value-bytes "$value_bytes" --connections "$connections" \
                --pipeline "$pipeline" --requests "$requests" --warmup 0 --json "$work/run.json" \
                >/dev/null 2>"$work/run.err" || { cat "$work/run.err" >&2; die "engram-bench failed: $shape"; }
            jq '.ops_per_sec' "$work/run.json"
            ;;
    esac
}

# utime + stime, in clock ticks: of a process, and of this script's reaped children.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
children_ticks() { awk '{ print $16 + $17 }' /proc/$$/stat; }
ticks_per_second=$(getconf CLK_TCK)
commands_processed() { redis-cli -p "$port" info stats | awk -F: '/^total_commands_processed:/ { print $2 + 0 }'; }
busy() { awk -v t="$1" -v hz="$ticks_per_second" -v w="$2" 'BEGIN { printf "%.3f", t / hz / w }'; }

shapes=(get-p1 get-p16 set-p1 set-p16)
declare -A rates server_busy load_busy commands walls
for round in $(seq 1 "$rounds"); do
    for shape in "${shapes[@]}"; do
        tools=(redis-benchmark engram-bench)
        ((round % 2 == 0)) && tools=(engram-bench redis-benchmark)
        for tool in "${tools[@]}"; do
            note "round $round/$rounds: $tool $shape"
            commands_before=$(commands_processed)
            server_before=$(cpu_ticks "$redis_pid")
            load_before=$(children_ticks)
            started=$(date +%s.%N)
            run_tool "$tool" "$shape" >"$work/rate"
            wall=$(echo "$(date +%s.%N) - $started" | bc -l)
            rate=$(cat "$work/rate")
            [[ $rate =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "$tool $shape: no throughput in its output ('$rate')"
            rates[$tool-$shape]="${rates[$tool-$shape]:-} $rate"
            walls[$tool-$shape]="${walls[$tool-$shape]:-} $wall"
            server_busy[$tool-$shape]="${server_busy[$tool-$shape]:-} $(busy $(($(cpu_ticks "$redis_pid") - server_before)) "$wall")"
            load_busy[$tool-$shape]="${load_busy[$tool-$shape]:-} $(busy $(($(children_ticks) - load_before)) "$wall")"
            # Less the INFO command that reads the count after the run.
            commands[$tool-$shape]="${commands[$tool-$shape]:-} $(($(commands_processed) - commands_before - 1))"
        done
    done
done

# ---- summary: per-round rates into JSON; medians and per-round ratios by jq ----
json_list() { echo "[$(echo $1 | tr ' ' ',')]"; }
tool_json() { # tool shape
    local key=$1-$2
    echo "{\"rates\": $(json_list "${rates[$key]}"), \"server_busy\": $(json_list "${server_busy[$key]}"),
        \"load_busy\": $(json_list "${load_busy[$key]}"), \"server_commands\": $(json_list "${commands[$key]}"),
        \"wall_seconds\": $(json_list "${walls[$key]}")}"
}
shape_args=()
for shape in "${shapes[@]}"; do
    shape_args+=(--argjson "$shape" "{\"redis_benchmark\": $(tool_json redis-benchmark "$shape"),
        \"engram_bench\": $(tool_json engram-bench "$shape"), \"requests\": $(requests_of "$shape")}")
done
summary=$work/summary.json
jq -n "${shape_args[@]}" \
    --arg machine "$(uname -srm), $(nproc) CPUs, $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)" \
    --arg redis_version "$(redis-server --version | awk '{ print $3 }')" \
    --arg started_at "$started_at" --arg ended_at "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    --argjson rounds "$rounds" --argjson requests_p1 "$requests_p1" --argjson requests_p16 "$requests_p16" \
    --argjson keys "$keys" --argjson value_bytes "$value_bytes" --argjson connections "$connections" '
    def median: sort | if length % 2 == 1 then .[length / 2 | floor]
        else (.[length / 2 - 1] + .[length / 2]) / 2 end;
    def tool: . as $runs
        | [range(0; $runs.rates | length) | $runs.server_commands[.] / $runs.wall_seconds[.]] as $server_rates
        | . + {server_rates: $server_rates, rate_median: (.rates | median),
            server_rate_median: ($server_rates | median), server_busy_median: (.server_busy | median),
            load_busy_median: (.load_busy | median)};
    def summarize: . as $shape
        | [range(0; $shape.redis_benchmark.rates | length)
            | $shape.engram_bench.rates[.] / $shape.redis_benchmark.rates[.]] as $ratios
        | {
            requests: $shape.requests,
            redis_benchmark: ($shape.redis_benchmark | tool),
            engram_bench: ($shape.engram_bench | tool),
            ratios: $ratios,
            ratio_median: ($ratios | median), ratio_min: ($ratios | min), ratio_max: ($ratios | max),
            engram_bench_counts_exact: ($shape.engram_bench.server_commands | all(. == $shape.requests))
        };
    {
        machine: $machine, redis_version: $redis_version, started_at: $started_at, ended_at: $ended_at,
        rounds: $rounds, requests: {p1: $requests_p1, p16: $requests_p16}, keys: $keys,
        value_bytes: $value_bytes, connections: $connections,
        shapes: {
            "get-p1": ($ARGS.named["get-p1"] | summarize), "get-p16": ($ARGS.named["get-p16"] | summarize),
            "set-p1": ($ARGS.named["set-p1"] | summarize), "set-p16": ($ARGS.named["set-p16"] | summarize)
        }
    }' >"$summary"

echo "engram-bench against redis-benchmark: redis-server $(jq -r .redis_version "$summary") on core $server_core, load on core $load_core, $connections connections, $rounds interleaved rounds"
echo "each tool: its own figure, the rate redis-server counted, and how busy redis-server / the tool were (medians)"
printf '%-8s %28s %28s %24s\n' shape "redis-benchmark" "engram-bench" "ratio median (min-max)"
for shape in "${shapes[@]}"; do
    jq -r --arg shape "$shape" '.shapes[$shape] |
        def cell: "\(.rate_median | floor) (\(.server_rate_median | floor)) \(.server_busy_median * 100 | round)%/\(.load_busy_median * 100 | round)%";
        def two: . * 100 | round / 100;
        [$shape, (.redis_benchmark | cell), (.engram_bench | cell),
         "\(.ratio_median | two) (\(.ratio_min | two)-\(.ratio_max | two))"]
        | @tsv' "$summary" | awk -F'\t' '{ printf "%-8s %28s %28s %24s\n", $1, $2, $3, $4 }'
done
jq -e '[.shapes[].engram_bench_counts_exact] | all' "$summary" >/dev/null ||
    note "redis-server counted a different number of commands than engram-bench sent: see $summary"
if [[ -n $json_out ]]; then
    cp "$summary" "$json_out"
    note "wrote $json_out"
fi
