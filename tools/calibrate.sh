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
# medians, so one bad run does not lose the others.
#
# Usage: tools/calibrate.sh [--json FILE | FILE]   (release engram-bench from
#        target/release; built with cargo if missing). Tunables as environment variables:
#   ROUNDS=4 REQUESTS_UNPIPELINED=300000 REQUESTS_PIPELINED=2000000 KEYS=10000
#   VALUE_BYTES=32 SERVER_CORE=0 LOAD_CORE=1 RUN_TIMEOUT=120 (seconds, per run)
set -euo pipefail
export LC_ALL=C

repository_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin="$repository_root/target/release"
# shellcheck source=tools/common.sh
source "$repository_root/tools/common.sh"
parse_report_arguments calibrate 2,33 "$@"
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
started_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)

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
    note "building engram-bench"
    (cd "$repository_root" && cargo build --release -p engram-tools --bin engram-bench) >&2
fi
if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null; then
    note "installing redis-server and redis-tools"
    apt-get install -y redis-server redis-tools >/dev/null 2>&1 || die "redis-server or redis-benchmark missing and apt-get install failed"
fi


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

# Runs one tool on one shape; prints its figure as JSON ({"rate": N, "reported_requests":
# N or null}), or fails. Sets run_seconds: the wall time of the tool alone, from start to
# exit, so that parsing its output is not counted.
run_tool() { # tool shape
    local tool=$1 shape=$2
    local requests pipeline command started
    requests=$(requests_of "$shape") pipeline=$(pipeline_of "$shape") command=$(command_of "$shape")
    started=$(now)
    case "$tool" in
        redis-benchmark)
            timeout "$run_timeout" taskset -c "$load_core" redis-benchmark -p "$port" -c "$connections" \
                -P "$pipeline" -t "$command" -r "$keys" -d "$value_bytes" -n "$requests" --csv \
                >"$work/run.csv" 2>"$work/run.err" || { cat "$work/run.err" >&2; return 1; }
            run_seconds=$(elapsed "$started")
            # The row of the command's test holds its requests per second.
            awk -F'"' -v test="${command^^}" '$2 == test { printf "{\"rate\": %s, \"reported_requests\": null}\n", $4 }' \
                "$work/run.csv"
            ;;
        engram-bench)
            rm -f "$work/run.json"
            timeout "$run_timeout" taskset -c "$load_core" "$bin/engram-bench" --target "redis://127.0.0.1:$port" \
                --workload "$command" --keys "$keys" --value-bytes "$value_bytes" --connections "$connections" \
                --pipeline "$pipeline" --requests "$requests" --warmup 0 --json "$work/run.json" \
                >/dev/null 2>"$work/run.err" || { cat "$work/run.err" >&2; return 1; }
            run_seconds=$(elapsed "$started")
            jq -e '.errors == 0 and .misses == 0' "$work/run.json" >/dev/null ||
                { note "engram-bench $shape: $(jq -c '{errors, misses}' "$work/run.json")"; return 1; }
            jq -c '{rate: .ops_per_sec, reported_requests: .requests}' "$work/run.json"
            ;;
    esac
}

# utime + stime, in clock ticks: of a process, and of this script's reaped children.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
children_ticks() { awk '{ print $16 + $17 }' /proc/$$/stat; }
ticks_per_second=$(getconf CLK_TCK)
commands_processed() { redis-cli -p "$port" info stats | awk -F: '/^total_commands_processed:/ { print $2 + 0 }'; }
now() { date +%s.%N; }
elapsed() { awk -v start="$1" -v end="$(now)" 'BEGIN { printf "%.6f", end - start }'; }
busy() { awk -v ticks="$1" -v hz="$ticks_per_second" -v wall="$2" 'BEGIN { printf "%.3f", ticks / hz / wall }'; }

# Every run is one JSON line in runs.jsonl, written as soon as it ends.
shapes=(get-unpipelined get-pipelined set-unpipelined set-pipelined)
for round in $(seq 1 "$rounds"); do
    for shape in "${shapes[@]}"; do
        tools=(redis-benchmark engram-bench)
        ((round % 2 == 0)) && tools=(engram-bench redis-benchmark)
        for tool in "${tools[@]}"; do
            note "round $round/$rounds: $tool $shape"
            commands_before=$(commands_processed)
            server_before=$(cpu_ticks "$redis_pid")
            load_before=$(children_ticks)
            started=$(now)
            run_seconds=""
            if run_tool "$tool" "$shape" >"$work/figure.json" && jq -e '.rate > 0' "$work/figure.json" >/dev/null 2>&1; then
                figure=$(cat "$work/figure.json")
            else
                note "round $round: $tool $shape gave no figure; kept as null"
                figure='{"rate": null, "reported_requests": null}'
            fi
            # Busy fractions take the whole window, parsing included (it costs the
            # server nothing, and the tool's CPU is only counted once it is reaped).
            wall=$(elapsed "$started")
            [[ -n $run_seconds ]] || run_seconds=$wall
            # Less the INFO command that reads the count after the run.
            commands=$(($(commands_processed) - commands_before - 1))
            jq -nc --argjson figure "$figure" --arg tool "$tool" --arg shape "$shape" --argjson round "$round" \
                --argjson wall "$wall" --argjson run_seconds "$run_seconds" --argjson commands "$commands" \
                --argjson server_busy "$(busy $(($(cpu_ticks "$redis_pid") - server_before)) "$wall")" \
                --argjson load_busy "$(busy $(($(children_ticks) - load_before)) "$wall")" \
                '$figure + {tool: $tool, shape: $shape, round: $round, run_seconds: $run_seconds,
                    server_commands: $commands, server_rate: ($commands / $run_seconds),
                    server_busy: $server_busy, load_busy: $load_busy}' >>"$work/runs.jsonl"
        done
    done
done

# ---- summary: per tool and shape, medians over the rounds that gave a figure ----
summary=$work/summary.json
jq -s \
    --arg machine "$(uname -srm), $(nproc) CPUs, $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)" \
    --arg redis_version "$(redis-server --version | awk '{ print $3 }')" \
    --arg started_at "$started_at" --arg ended_at "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    --argjson rounds "$rounds" --argjson requests_unpipelined "$requests_unpipelined" \
    --argjson requests_pipelined "$requests_pipelined" --argjson keys "$keys" \
    --argjson value_bytes "$value_bytes" --argjson connections "$connections" '
    def median: map(select(. != null)) | sort
        | if length == 0 then null elif length % 2 == 1 then .[length / 2 | floor]
          else (.[length / 2 - 1] + .[length / 2]) / 2 end;
    def deviation: if .rate == null then null else .rate / .server_rate - 1 end;
    def largest: map(select(. != null)) | if length == 0 then null else max end;
    . as $runs
    | def tool($tool; $shape): [$runs[] | select(.tool == $tool and .shape == $shape)] | sort_by(.round)
        | {
            runs: .,
            rate_median: (map(.rate) | median),
            server_rate_median: (map(select(.rate != null) | .server_rate) | median),
            server_busy_median: (map(select(.rate != null) | .server_busy) | median),
            load_busy_median: (map(select(.rate != null) | .load_busy) | median),
            largest_deviation_from_server: (map(deviation | fabs?) | largest)
        };
    def shape($shape): tool("redis-benchmark"; $shape) as $redis_benchmark
        | tool("engram-bench"; $shape) as $engram_bench
        | [range(1; $rounds + 1) as $round
            | ($engram_bench.runs[] | select(.round == $round) | .rate) as $engram
            | ($redis_benchmark.runs[] | select(.round == $round) | .rate) as $redis
            | if $engram == null or $redis == null then null else $engram / $redis end] as $ratios
        | ($ratios | median) as $median
        | {
            redis_benchmark: $redis_benchmark,
            engram_bench: $engram_bench,
            ratios: $ratios,
            ratio_median: $median,
            ratio_min: ($ratios | map(select(. != null)) | min),
            ratio_max: ($ratios | map(select(. != null)) | max),
            within_ten_percent: (if $median == null then null else $median >= 0.9 and $median <= 1.1 end),
            engram_bench_counts_match_server: ($engram_bench.runs | map(select(.rate != null))
                | all(.reported_requests == .server_commands))
        };
    {
        machine: $machine, redis_version: $redis_version, started_at: $started_at, ended_at: $ended_at,
        rounds: $rounds, requests: {unpipelined: $requests_unpipelined, pipelined: $requests_pipelined},
        keys: $keys, value_bytes: $value_bytes, connections: $connections,
        shapes: {
            "get-unpipelined": shape("get-unpipelined"), "get-pipelined": shape("get-pipelined"),
            "set-unpipelined": shape("set-unpipelined"), "set-pipelined": shape("set-pipelined")
        }
    }' "$work/runs.jsonl" >"$summary"

echo "engram-bench against redis-benchmark: redis-server $(jq -r .redis_version "$summary") on core $server_core, load on core $load_core, $connections connections, $rounds interleaved rounds"
echo "each tool: its own figure, (the rate redis-server counted), redis-server busy / tool busy; medians"
echo "largest deviation: of a tool's own figure from redis-server's count, over its runs"
printf '%-16s %30s %30s %24s %8s %20s\n' shape redis-benchmark engram-bench "ratio median (min-max)" "±10%" "largest deviation"
for shape in "${shapes[@]}"; do
    jq -r --arg shape "$shape" '.shapes[$shape] |
        def number: if . == null then "-" else . end;
        def three: if . == null then "-" else . * 1000 | round / 1000 end;
        def percent: if . == null then "-" else "\(. * 1000 | round / 10)%" end;
        def cell: "\(.rate_median | if . == null then "-" else floor end) (\(.server_rate_median | if . == null then "-" else floor end)) \(.server_busy_median | percent)/\(.load_busy_median | percent)";
        [$shape, (.redis_benchmark | cell), (.engram_bench | cell),
         "\(.ratio_median | three) (\(.ratio_min | three)-\(.ratio_max | three))",
         (.within_ten_percent | if . == null then "-" elif . then "yes" else "no" end),
         "\(.redis_benchmark.largest_deviation_from_server | percent) / \(.engram_bench.largest_deviation_from_server | percent)"]
        | @tsv' "$summary" | awk -F'\t' '{ printf "%-16s %30s %30s %24s %8s %20s\n", $1, $2, $3, $4, $5, $6 }'
done
jq -e '[.shapes[].engram_bench_counts_match_server] | all' "$summary" >/dev/null ||
    note "redis-server counted a different number of commands than engram-bench reported: see $summary"
if [[ -n $json_out ]]; then
    cp "$summary" "$json_out"
    note "wrote $json_out"
fi
