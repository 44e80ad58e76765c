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
# values to distinct keys.
#
# All servers run side by side (idle ones sleep) and the measurements are interleaved:
# ROUNDS rounds (even, so that each order runs as often), each measuring every target
# in every shape for DURATION seconds, in an order that alternates between rounds. A shared machine's speed drifts over minutes,
# so a ratio is taken within each round, where its two sides ran seconds apart, and
# the table shows the median over the rounds with the range; the absolute figures are
# medians too.
#
# Usage: tools/compare.sh [--json FILE | FILE]   (release binaries from target/release;
#        built with cargo if missing). Tunables as environment variables:
#   ROUNDS=6 DURATION=3 WARMUP=1 KEYS=10000 VALUE_BYTES=32 MEMORY_KEYS=1000000 SPIN_US=50
#   SERVER_CORE=0 LOAD_CORE=1 RUN_TIMEOUT=120 (seconds, per bench run)
set -euo pipefail
# awk's printf feeds jq's --argjson: a decimal comma would not be JSON.
export LC_ALL=C

repository_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin="$repository_root/target/release"
# shellcheck source=tools/common.sh
source "$repository_root/tools/common.sh"
parse_report_arguments compare 2,26 "$@"
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
started_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

note() { echo "compare: $*" >&2; }
die() { note "$*"; exit 1; }
[[ $rounds =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer, not '$rounds'"
((rounds % 2 == 0)) || note "ROUNDS=$rounds is odd: one target order runs once more than the other"

if [[ ! -x "$bin/engramd" || ! -x "$bin/engram-bench" || ! -x "$bin/engram" ]]; then
    note "building release binaries"
    (cd "$repository_root" && cargo build --release -p engram-server -p engram-tools --bins) >&2
fi
if ! command -v redis-server >/dev/null; then
    note "installing redis-server"
    apt-get install -y redis-server >/dev/null 2>&1 || die "redis-server missing and apt-get install failed"
fi
[[ $(nproc) -ge 2 ]] || note "only $(nproc) CPU: servers and load share a core"


rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
# utime + stime of a process, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
ticks_per_second=$(getconf CLK_TCK)

# Servers by name: echo, echo-spin, redis, engram, engram-spin (the -spin ones poll
# SPIN_US before parking), and fresh ones for the memory measurement.
declare -A server_pids server_addresses
start_server() { # name kind [extra flags...]
    local name=$1 kind=$2
    shift 2
    local log="$work/server-$name"
    case "$kind" in
        echo)
            taskset -c "$server_core" "$bin/engram-bench" echo-server --listen 127.0.0.1:0 "$@" >"$log.out" 2>"$log.err" &
            server_pids[$name]=$!
            pids+=("$!")
            wait_for_line "$log.out" "listening on" 10
            server_addresses[$name]=$(awk '{ print $NF }' "$log.out")
            ;;
        redis)
            local port
            port=$(free_port)
            taskset -c "$server_core" redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
                --daemonize no --protected-mode no --logfile "$log.err" >"$log.out" 2>&1 &
            server_pids[$name]=$!
            pids+=("$!")
            for _ in $(seq 1 100); do
                redis-cli -p "$port" ping >/dev/null 2>&1 && break
                sleep 0.1
            done
            redis-cli -p "$port" ping >/dev/null 2>&1 || die "redis-server did not start (see $log.err)"
            server_addresses[$name]=127.0.0.1:$port
            ;;
        engram)
            taskset -c "$server_core" "$bin/engramd" --cores 1 --port 0 "$@" >"$log.out" 2>"$log.err" &
            server_pids[$name]=$!
            pids+=("$!")
            wait_for_line "$log.out" "engramd ready" 20
            server_addresses[$name]=$(sed -n 's/.*front=\([^ ]*\).*/\1/p' "$log.out")
            ;;
    esac
}

stop_server() { # name
    kill "${server_pids[$1]}" 2>/dev/null || true
    wait "${server_pids[$1]}" 2>/dev/null || true
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

# Server CPU (utime+stime ticks) and wall time per target and shape, summed over the
# rounds; for the spin pair also the load's CPU (the children this script waited for:
# engram-bench, and the few helpers it runs in between, which take no measurable CPU).
declare -A cpu wall load_cpu
children_ticks() { awk '{ print $16 + $17 }' /proc/$$/stat; }
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
            before_server=$(cpu_ticks "$pid")
            before_load=$(children_ticks)
            started=$(date +%s.%N)
            # shellcheck disable=SC2046
            bench "$work/$name-$shape-$round.json" "$name" $(shape_flags "$shape")
            cpu[$name-$shape]=$((${cpu[$name-$shape]:-0} + $(cpu_ticks "$pid") - before_server))
            load_cpu[$name-$shape]=$((${load_cpu[$name-$shape]:-0} + $(children_ticks) - before_load))
            wall[$name-$shape]=$(echo "${wall[$name-$shape]:-0} + $(date +%s.%N) - $started" | bc -l)
        done
    done
done
for name in echo echo-spin redis engram engram-spin; do stop_server "$name"; done

# Memory: a fresh server, RSS before and after SETting MEMORY_KEYS distinct keys
# (sequential walkers that partition the key space exactly).
declare -A memory
load_keys() { # kind
    local kind=$1
    start_server "$kind-memory" "$kind"
    sleep 0.5
    local pid=${server_pids[$kind-memory]} before after stored
    before=$(rss_kib "$pid")
    note "$kind: loading $memory_keys keys"
    bench "$work/$kind-load.json" "$kind-memory" --workload set --keys "$memory_keys" --key-pattern sequential \
        --value-bytes 32 --requests "$memory_keys" --connections 50 --pipeline 16
    sleep 0.5
    after=$(rss_kib "$pid")
    case "$kind" in
        redis) stored=$(redis-cli -p "${server_addresses[$kind-memory]##*:}" dbsize) ;;
        engram) stored=$("$bin/engram" --addr "${server_addresses[$kind-memory]}" info --json | jq '[.shards[].keys] | add') ;;
    esac
    memory[$kind]="$before $after $stored"
    stop_server "$kind-memory"
}
load_keys redis
load_keys engram

# ---- summary: every round's runs into one JSON document, medians and ratios by jq ----
read -r redis_before redis_after redis_keys <<<"${memory[redis]}"
read -r engram_before engram_after engram_keys <<<"${memory[engram]}"
per_key() { awk -v b="$1" -v a="$2" -v k="$3" 'BEGIN { printf "%.1f", (a - b) * 1024 / k }'; }
cores() { awk -v t="$1" -v hz="$ticks_per_second" -v w="$2" 'BEGIN { printf "%.2f", t / hz / w }'; }

runs_args=()
run_names=()
for shape in "${shapes[@]}"; do
    for name in ${shape_targets[$shape]}; do
        run_names+=("$name-$shape")
        files=()
        for round in $(seq 1 "$rounds"); do files+=("$work/$name-$shape-$round.json"); done
        jq -s . "${files[@]}" >"$work/$name-$shape.rounds.json"
        runs_args+=(--slurpfile "$name-$shape" "$work/$name-$shape.rounds.json")
    done
done
summary=$work/summary.json
jq -n "${runs_args[@]}" \
    --arg machine "$(uname -srm), $(nproc) CPUs, $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)" \
    --arg loadavg "$(cut -d' ' -f1-3 /proc/loadavg)" --arg started_at "$started_at" \
    --argjson run_names "$(printf '%s\n' "${run_names[@]}" | jq -R . | jq -s .)" \
    --argjson rounds "$rounds" --argjson duration "$duration" --argjson warmup "$warmup" \
    --argjson redis_rss "[$redis_before, $redis_after, $redis_keys]" \
    --argjson engram_rss "[$engram_before, $engram_after, $engram_keys]" \
    --argjson redis_per_key "$(per_key "$redis_before" "$redis_after" "$redis_keys")" \
    --argjson engram_per_key "$(per_key "$engram_before" "$engram_after" "$engram_keys")" \
    --argjson spin_us "$spin_us" \
    --argjson spin_server_cores "$(cores "${cpu[engram-spin-spin-c1]}" "${wall[engram-spin-spin-c1]}")" \
    --argjson spin_load_cores "$(cores "${load_cpu[engram-spin-spin-c1]}" "${wall[engram-spin-spin-c1]}")" \
    --argjson plain_server_cores "$(cores "${cpu[engram-c1]}" "${wall[engram-c1]}")" \
    --argjson redis_c50p16_cpu_ticks "${cpu[redis-c50p16]}" --argjson engram_c50p16_cpu_ticks "${cpu[engram-c50p16]}" \
    --argjson ticks_per_second "$ticks_per_second" '
    def median: sort | if length == 0 then null elif length % 2 == 1 then .[length / 2 | floor]
        else (.[length / 2 - 1] + .[length / 2]) / 2 end;
    def round2: if . == null then null else . * 100 | round / 100 end;
    def run($name): $ARGS.named[$name][0];
    def summary($name): run($name) | { p50_us: (map(.latency_us.p50) | median), p99_us: (map(.latency_us.p99) | median),
        ops_per_sec: (map(.ops_per_sec) | median) };
    # Per-round ratios of one metric (null for a round where either side has none),
    # then the median and range of those there are.
    def ratio($a; $b; metric): [range(0; $rounds) as $i
            | (run($a)[$i] | metric) as $x | (run($b)[$i] | metric) as $y
            | if $x == null or $y == null or $y == 0 then null else $x / $y end]
        | map(round2) as $rounds_ratios | map(select(. != null)) as $present
        | { median: ($present | median | round2), min: ($present | min | round2),
            max: ($present | max | round2), rounds: $rounds_ratios };
    # Server CPU per request over all rounds (warm-up requests estimated at the measured rate).
    def cpu_us($name; $ticks): ($ticks / $ticks_per_second * 1e6)
        / (run($name) | map(.requests + .warmup_secs * .ops_per_sec) | add);
    {
      machine: $machine, load_average_at_end: $loadavg, started_at: $started_at, ended_at: (now | todate),
      rounds: $rounds, duration_secs: $duration, warmup_secs: $warmup,
      medians: (reduce $run_names[] as $name ({}; .[$name] = summary($name))),
      runs: (reduce $run_names[] as $name ({}; .[$name] = run($name))),
      memory: { redis: { rss_before_kib: $redis_rss[0], rss_after_kib: $redis_rss[1], keys: $redis_rss[2], bytes_per_key: $redis_per_key },
                engram: { rss_before_kib: $engram_rss[0], rss_after_kib: $engram_rss[1], keys: $engram_rss[2], bytes_per_key: $engram_per_key } },
      spin: { spin_us: $spin_us, server_cores: $spin_server_cores, load_cores: $spin_load_cores,
              server_cores_without_spin: $plain_server_cores },
      server_cpu_us_per_request_c50p16: { redis: (cpu_us("redis-c50p16"; $redis_c50p16_cpu_ticks) | round2),
                                          engram: (cpu_us("engram-c50p16"; $engram_c50p16_cpu_ticks) | round2) },
      ratios: {
        c1_p50_engram_over_floor: ratio("engram-c1"; "echo-c1"; .latency_us.p50),
        c1_p50_engram_over_redis: ratio("engram-c1"; "redis-c1"; .latency_us.p50),
        c1_p99_engram_over_redis: ratio("engram-c1"; "redis-c1"; .latency_us.p99),
        spin_c1_p50_engram_over_floor: ratio("engram-spin-spin-c1"; "echo-spin-spin-c1"; .latency_us.p50),
        c50p1_ops_engram_over_redis: ratio("engram-c50p1"; "redis-c50p1"; .ops_per_sec),
        c50p1_p99_engram_over_redis: ratio("engram-c50p1"; "redis-c50p1"; .latency_us.p99),
        c50p16_ops_engram_over_redis: ratio("engram-c50p16"; "redis-c50p16"; .ops_per_sec),
        c50p16_p99_engram_over_redis: ratio("engram-c50p16"; "redis-c50p16"; .latency_us.p99),
        memory_per_key_engram_over_redis: ($engram_per_key / $redis_per_key | round2
            | { median: ., min: ., max: ., rounds: [.] }) }
    }' >"$summary"

# ---- report ----
get() { jq -r "$1" "$summary"; }
us() { awk -v x="$1" 'BEGIN { printf "%.1f", x }'; }
kops() { awk -v x="$1" 'BEGIN { printf "%.1fk/s", x / 1000 }'; }
ratio_cell() { get ".ratios.$1 | \"\(.median) (\(.min)-\(.max))\""; }
row() { printf '%-34s %12s %12s %12s %18s %18s\n' "$@"; }
m() { get ".medians[\"$1\"].$2"; }
{
    echo
    echo "$started_at to $(date -u +%H:%M:%SZ) $(uname -srm), $(nproc) CPUs ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), load average $(cut -d' ' -f1-3 /proc/loadavg) at the end"
    echo "servers on core $server_core, load on core $load_core; GET of $value_bytes-byte values over $keys keys;"
    echo "$rounds interleaved rounds of ${duration}s per target and shape after ${warmup}s warm-up: medians, and ratios"
    echo "as the median (min-max) of the per-round ratios (not the ratio of the medians)"
    echo
    row shape "tcp-echo" "redis" "engram" "engram/floor" "engram/redis"
    row "1 connection p50 (us)" "$(us "$(m echo-c1 p50_us)")" "$(us "$(m redis-c1 p50_us)")" "$(us "$(m engram-c1 p50_us)")" \
        "$(ratio_cell c1_p50_engram_over_floor)" "$(ratio_cell c1_p50_engram_over_redis)"
    row "1 connection p99 (us)" "$(us "$(m echo-c1 p99_us)")" "$(us "$(m redis-c1 p99_us)")" "$(us "$(m engram-c1 p99_us)")" \
        "-" "$(ratio_cell c1_p99_engram_over_redis)"
    row "50 conn, pipeline 1 throughput" "$(kops "$(m echo-c50p1 ops_per_sec)")" "$(kops "$(m redis-c50p1 ops_per_sec)")" \
        "$(kops "$(m engram-c50p1 ops_per_sec)")" "-" "$(ratio_cell c50p1_ops_engram_over_redis)"
    row "50 conn, pipeline 1 p99 (us)" "$(us "$(m echo-c50p1 p99_us)")" "$(us "$(m redis-c50p1 p99_us)")" \
        "$(us "$(m engram-c50p1 p99_us)")" "-" "$(ratio_cell c50p1_p99_engram_over_redis)"
    row "50 conn, pipeline 16 throughput" "-" "$(kops "$(m redis-c50p16 ops_per_sec)")" \
        "$(kops "$(m engram-c50p16 ops_per_sec)")" "-" "$(ratio_cell c50p16_ops_engram_over_redis)"
    row "50 conn, pipeline 16 p99 (us)" "-" "$(us "$(m redis-c50p16 p99_us)")" "$(us "$(m engram-c50p16 p99_us)")" \
        "-" "$(ratio_cell c50p16_p99_engram_over_redis)"
    row "spin $spin_us us, 1 connection p50 (us)" "$(us "$(m echo-spin-spin-c1 p50_us)")" "-" \
        "$(us "$(m engram-spin-spin-c1 p50_us)")" "$(ratio_cell spin_c1_p50_engram_over_floor)" "-"
    row "spin $spin_us us, 1 connection p99 (us)" "$(us "$(m echo-spin-spin-c1 p99_us)")" "-" \
        "$(us "$(m engram-spin-spin-c1 p99_us)")" "-" "-"
    row "RSS per key ($memory_keys keys, bytes)" "-" "$(get .memory.redis.bytes_per_key)" \
        "$(get .memory.engram.bytes_per_key)" "-" "$(get .ratios.memory_per_key_engram_over_redis.median)"
    echo
    echo "server CPU per request, 50 conn pipeline 16: redis $(get .server_cpu_us_per_request_c50p16.redis) us, engram $(get .server_cpu_us_per_request_c50p16.engram) us (warm-up requests estimated at the measured rate)"
    echo "spin CPU while measuring (server --spin-us $spin_us, client --client-spin-us $spin_us): engramd $(get .spin.server_cores) cores, engram-bench $(get .spin.load_cores) cores; without spin, 1 connection: engramd $(get .spin.server_cores_without_spin) cores"
    echo "memory: redis $redis_keys keys, RSS $redis_before -> $redis_after KiB; engram $engram_keys keys, RSS $engram_before -> $engram_after KiB"
} | tee "$work/report.txt"

if [[ -n "$json_out" ]]; then
    cp "$summary" "$json_out"
    note "JSON written to $json_out"
fi
note "raw results in $work"
