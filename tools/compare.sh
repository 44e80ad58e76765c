#!/usr/bin/env bash
# Engram side by side with Redis and the loopback floor, in one run on this machine.
#
# Every server runs on core 0 (taskset), every load on core 1, and engram-bench drives
# all three with the same load shape:
#   - a raw TCP ping-pong (`engram-bench echo-server`, target tcp-echo://): the floor;
#   - redis-server (its own instance on a free port, persistence off);
#   - engramd --cores 1.
# Shapes: GET of VALUE_BYTES-byte values over KEYS prefilled keys, 1 connection (p50/p99),
# 50 connections pipeline 1 and 50 connections pipeline 16 (throughput, p99); then the
# spin pair (engramd --spin-us with engram-bench --client-spin-us, 1 connection) with the
# CPU both processes burn, against the echo floor spinning the same way; then resident
# memory per key: RSS growth (VmRSS) of a fresh server after 1,000,000 SETs of 32-byte
# values to distinct keys.
#
# Usage: tools/compare.sh [--json FILE | FILE]   (release binaries from target/release;
#        built with cargo if missing). Tunables as environment variables:
#   DURATION=5 WARMUP=1 KEYS=10000 VALUE_BYTES=32 MEMORY_KEYS=1000000 SPIN_US=50
#   SERVER_CORE=0 LOAD_CORE=1 RUN_TIMEOUT=120 (seconds, per bench run)
set -euo pipefail

repository_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin="$repository_root/target/release"
json_out=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --json) json_out=${2:?--json needs a file}; shift 2 ;;
        -h | --help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "compare: unknown flag $1" >&2; exit 2 ;;
        *) json_out=$1; shift ;;
    esac
done
duration=${DURATION:-5}
warmup=${WARMUP:-1}
keys=${KEYS:-10000}
value_bytes=${VALUE_BYTES:-32}
memory_keys=${MEMORY_KEYS:-1000000}
spin_us=${SPIN_US:-50}
server_core=${SERVER_CORE:-0}
load_core=${LOAD_CORE:-1}
run_timeout=${RUN_TIMEOUT:-120}
work=$(mktemp -d /tmp/engram-compare.XXXXXX)

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

note() { echo "compare: $*" >&2; }
die() { note "$*"; exit 1; }

if [[ ! -x "$bin/engramd" || ! -x "$bin/engram-bench" || ! -x "$bin/engram" ]]; then
    note "building release binaries"
    (cd "$repository_root" && cargo build --release -p engram-server -p engram-tools --bins) >&2
fi
if ! command -v redis-server >/dev/null; then
    note "installing redis-server"
    apt-get install -y redis-server >/dev/null 2>&1 || die "redis-server missing and apt-get install failed"
fi
[[ $(nproc) -ge 2 ]] || note "only $(nproc) CPU: servers and load share a core"

# shellcheck source=tools/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

free_port() {
    local port
    for _ in $(seq 1 100); do
        port=$((20000 + RANDOM % 20000))
        ss -Htln "sport = :$port" 2>/dev/null | grep -q . || { echo "$port"; return; }
    done
    die "no free port found"
}

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
# utime + stime of a process, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
ticks_per_second=$(getconf CLK_TCK)

server_pid=""
server_address=""
start_server() { # kind [extra engramd flags...]
    local kind=$1
    shift
    local log="$work/$kind.$RANDOM"
    case "$kind" in
        echo)
            taskset -c "$server_core" "$bin/engram-bench" echo-server --listen 127.0.0.1:0 "$@" >"$log.out" 2>"$log.err" &
            server_pid=$!
            pids+=("$server_pid")
            wait_for_line "$log.out" "listening on" 10
            server_address=$(awk '{ print $NF }' "$log.out")
            ;;
        redis)
            local port
            port=$(free_port)
            taskset -c "$server_core" redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no \
                --daemonize no --protected-mode no --logfile "$log.err" >"$log.out" 2>&1 &
            server_pid=$!
            pids+=("$server_pid")
            for _ in $(seq 1 100); do
                redis-cli -p "$port" ping >/dev/null 2>&1 && break
                sleep 0.1
            done
            redis-cli -p "$port" ping >/dev/null 2>&1 || die "redis-server did not start (see $log.err)"
            server_address=127.0.0.1:$port
            ;;
        engram)
            taskset -c "$server_core" "$bin/engramd" --cores 1 --port 0 "$@" >"$log.out" 2>"$log.err" &
            server_pid=$!
            pids+=("$server_pid")
            wait_for_line "$log.out" "engramd ready" 20
            server_address=$(sed -n 's/.*front=\([^ ]*\).*/\1/p' "$log.out")
            ;;
    esac
}

stop_server() {
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
}

scheme() { case "$1" in echo) echo tcp-echo ;; redis) echo redis ;; engram) echo engram ;; esac; }

bench() { # out-json kind [flags...]
    local out=$1 kind=$2
    shift 2
    timeout "$run_timeout" taskset -c "$load_core" "$bin/engram-bench" --target "$(scheme "$kind")://$server_address" \
        --json "$out" "$@" >"$out.txt" 2>"$out.err" || {
        cat "$out.txt" "$out.err" >&2
        die "engram-bench failed: $kind $*"
    }
}

shape_flags() { # shape
    local common=(--workload get --keys "$keys" --value-bytes "$value_bytes" --duration "$duration" --warmup "$warmup")
    case "$1" in
        c1) echo "${common[@]}" --connections 1 --pipeline 1 ;;
        c50p1) echo "${common[@]}" --connections 50 --pipeline 1 ;;
        c50p16) echo "${common[@]}" --connections 50 --pipeline 16 ;;
    esac
}

# Latency and throughput: one server instance per target, every shape against it. The
# engram and redis rows are prefilled (GETs hit); the echo floor has no keys.
# Server CPU (utime+stime ticks) is recorded per shape too.
declare -A cpu wall
run_shapes() { # kind shapes... ; server already started
    local kind=$1
    shift
    local first=1
    for shape in "$@"; do
        local prefill=()
        [[ $kind != echo && $first == 1 ]] && prefill=(--prefill)
        first=0
        note "$kind $shape"
        local before_server
        before_server=$(cpu_ticks "$server_pid")
        local started
        started=$(date +%s.%N)
        # shellcheck disable=SC2046
        bench "$work/$kind-$shape.json" "$kind" $(shape_flags "$shape") "${prefill[@]}"
        cpu[$kind-$shape]=$(($(cpu_ticks "$server_pid") - before_server))
        wall[$kind-$shape]=$(echo "$(date +%s.%N) - $started" | bc -l)
    done
}

start_server echo
run_shapes echo c1 c50p1
stop_server
note "echo c1, both sides spinning $spin_us us (the floor of the spin pair)"
start_server echo --spin-us "$spin_us"
# shellcheck disable=SC2046
bench "$work/echo-spin-c1.json" echo $(shape_flags c1) --client-spin-us "$spin_us"
stop_server
start_server redis
run_shapes redis c1 c50p1 c50p16
stop_server
start_server engram
run_shapes engram c1 c50p1 c50p16
stop_server

# Spin on both sides, one connection: the latency it buys and the CPU it costs. The
# CPU of the whole run (warmup and prefill included) over its wall time.
note "engram spin (server --spin-us $spin_us, client --client-spin-us $spin_us)"
start_server engram --spin-us "$spin_us"
spin_server_before=$(cpu_ticks "$server_pid")
spin_started=$(date +%s.%N)
spin_load_before=$(awk '{ print $14 + $15 + $16 + $17 }' /proc/$$/stat)
# shellcheck disable=SC2046
bench "$work/engram-spin-c1.json" engram $(shape_flags c1) --prefill --client-spin-us "$spin_us"
spin_load_after=$(awk '{ print $14 + $15 + $16 + $17 }' /proc/$$/stat)
spin_wall=$(echo "$(date +%s.%N) - $spin_started" | bc -l)
spin_server_ticks=$(($(cpu_ticks "$server_pid") - spin_server_before))
stop_server

# Memory: a fresh server, RSS before and after SETting MEMORY_KEYS distinct keys
# (sequential walkers that partition the key space exactly).
declare -A memory
load_keys() { # kind
    local kind=$1
    start_server "$kind"
    sleep 0.5
    local before after stored
    before=$(rss_kib "$server_pid")
    note "$kind: loading $memory_keys keys"
    bench "$work/$kind-load.json" "$kind" --workload set --keys "$memory_keys" --key-pattern sequential \
        --value-bytes 32 --requests "$memory_keys" --connections 50 --pipeline 16
    sleep 0.5
    after=$(rss_kib "$server_pid")
    case "$kind" in
        redis) stored=$(redis-cli -p "${server_address##*:}" dbsize) ;;
        engram) stored=$("$bin/engram" --addr "$server_address" info --json | jq '[.shards[].keys] | add') ;;
    esac
    memory[$kind]="$before $after $stored"
    stop_server
}
load_keys redis
load_keys engram

# ---- report ----
field() { jq -r "$2" "$work/$1.json"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0 || a == "" || b == "") print "null"; else printf "%.2f", a / b }'; }
kops() { awk -v x="$1" 'BEGIN { printf "%.1fk/s", x / 1000 }'; }
us() { awk -v x="$1" 'BEGIN { printf "%.1f", x }'; }

p50() { field "$1" .latency_us.p50; }
p99() { field "$1" .latency_us.p99; }
ops() { field "$1" .ops_per_sec; }

read -r redis_before redis_after redis_keys <<<"${memory[redis]}"
read -r engram_before engram_after engram_keys <<<"${memory[engram]}"
per_key() { awk -v b="$1" -v a="$2" -v k="$3" 'BEGIN { printf "%.1f", (a - b) * 1024 / k }'; }
redis_per_key=$(per_key "$redis_before" "$redis_after" "$redis_keys")
engram_per_key=$(per_key "$engram_before" "$engram_after" "$engram_keys")
cpu_share() { awk -v t="$1" -v hz="$ticks_per_second" -v w="$2" 'BEGIN { printf "%.2f", t / hz / w }'; }
spin_server_cores=$(cpu_share "$spin_server_ticks" "$spin_wall")
spin_load_cores=$(cpu_share $((spin_load_after - spin_load_before)) "$spin_wall")

{
    echo
    echo "$(date -u +%Y-%m-%dT%H:%MZ) $(uname -srm), $(nproc) CPUs ($(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)), load average $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "servers on core $server_core, load on core $load_core; GET of $value_bytes-byte values over $keys keys, ${duration}s after ${warmup}s warm-up"
    echo
    printf '%-34s %14s %14s %14s %12s %12s\n' shape "tcp-echo" "redis" "engram" "engram/floor" "engram/redis"
    row_latency() { # label shape
        local e r n
        e=$(p50 "echo-$2") r=$(p50 "redis-$2") n=$(p50 "engram-$2")
        printf '%-34s %14s %14s %14s %12s %12s\n' "$1 p50 (us)" "$(us "$e")" "$(us "$r")" "$(us "$n")" "$(ratio "$n" "$e")" "$(ratio "$n" "$r")"
        e=$(p99 "echo-$2") r=$(p99 "redis-$2") n=$(p99 "engram-$2")
        printf '%-34s %14s %14s %14s %12s %12s\n' "$1 p99 (us)" "$(us "$e")" "$(us "$r")" "$(us "$n")" "$(ratio "$n" "$e")" "$(ratio "$n" "$r")"
    }
    row_latency "1 connection" c1
    printf '%-34s %14s %14s %14s %12s %12s\n' "1 connection throughput" "$(kops "$(ops echo-c1)")" "$(kops "$(ops redis-c1)")" "$(kops "$(ops engram-c1)")" "$(ratio "$(ops engram-c1)" "$(ops echo-c1)")" "$(ratio "$(ops engram-c1)" "$(ops redis-c1)")"
    printf '%-34s %14s %14s %14s %12s %12s\n' "50 conn, pipeline 1 throughput" "$(kops "$(ops echo-c50p1)")" "$(kops "$(ops redis-c50p1)")" "$(kops "$(ops engram-c50p1)")" "$(ratio "$(ops engram-c50p1)" "$(ops echo-c50p1)")" "$(ratio "$(ops engram-c50p1)" "$(ops redis-c50p1)")"
    printf '%-34s %14s %14s %14s %12s %12s\n' "50 conn, pipeline 1 p99 (us)" "$(us "$(p99 echo-c50p1)")" "$(us "$(p99 redis-c50p1)")" "$(us "$(p99 engram-c50p1)")" "$(ratio "$(p99 engram-c50p1)" "$(p99 echo-c50p1)")" "$(ratio "$(p99 engram-c50p1)" "$(p99 redis-c50p1)")"
    printf '%-34s %14s %14s %14s %12s %12s\n' "50 conn, pipeline 16 throughput" "-" "$(kops "$(ops redis-c50p16)")" "$(kops "$(ops engram-c50p16)")" "-" "$(ratio "$(ops engram-c50p16)" "$(ops redis-c50p16)")"
    printf '%-34s %14s %14s %14s %12s %12s\n' "50 conn, pipeline 16 p99 (us)" "-" "$(us "$(p99 redis-c50p16)")" "$(us "$(p99 engram-c50p16)")" "-" "$(ratio "$(p99 engram-c50p16)" "$(p99 redis-c50p16)")"
    printf '%-34s %14s %14s %14s %12s %12s\n' "RSS per key ($memory_keys keys, bytes)" "-" "$redis_per_key" "$engram_per_key" "-" "$(ratio "$engram_per_key" "$redis_per_key")"
    echo
    echo "server CPU per request, 50 conn pipeline 16: redis $(awk -v t="${cpu[redis-c50p16]}" -v hz="$ticks_per_second" -v n="$(field redis-c50p16 .requests)" -v w="$(field redis-c50p16 .warmup_secs)" -v o="$(ops redis-c50p16)" 'BEGIN { printf "%.2f", t / hz * 1e6 / (n + w * o) }') us, engram $(awk -v t="${cpu[engram-c50p16]}" -v hz="$ticks_per_second" -v n="$(field engram-c50p16 .requests)" -v w="$(field engram-c50p16 .warmup_secs)" -v o="$(ops engram-c50p16)" 'BEGIN { printf "%.2f", t / hz * 1e6 / (n + w * o) }') us (approx.: warm-up requests estimated at the measured rate)"
    echo "spin (server --spin-us $spin_us, client --client-spin-us $spin_us), 1 connection: p50 $(us "$(p50 engram-spin-c1)") us, p99 $(us "$(p99 engram-spin-c1)") us, $(kops "$(ops engram-spin-c1)"); CPU: engramd $spin_server_cores cores, engram-bench $spin_load_cores cores (whole run incl. prefill)"
    echo "without spin, 1 connection: engramd $(cpu_share "${cpu[engram-c1]}" "${wall[engram-c1]}") cores (same accounting)"
    echo "floor spinning the same way (echo-server --spin-us $spin_us, --client-spin-us $spin_us): p50 $(us "$(p50 echo-spin-c1)") us, p99 $(us "$(p99 echo-spin-c1)") us"
    echo "memory: redis $redis_keys keys, RSS $redis_before -> $redis_after KiB; engram $engram_keys keys, RSS $engram_before -> $engram_after KiB"
} | tee "$work/report.txt"

if [[ -n "$json_out" ]]; then
    runs=()
    for run in echo-c1 echo-c50p1 echo-spin-c1 redis-c1 redis-c50p1 redis-c50p16 engram-c1 engram-c50p1 engram-c50p16 engram-spin-c1 redis-load engram-load; do
        runs+=(--slurpfile "$run" "$work/$run.json")
    done
    jq -n "${runs[@]}" \
        --arg machine "$(uname -srm), $(nproc) CPUs, $(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)" \
        --arg loadavg "$(cut -d' ' -f1-3 /proc/loadavg)" \
        --argjson redis_rss "[$redis_before, $redis_after, $redis_keys]" \
        --argjson engram_rss "[$engram_before, $engram_after, $engram_keys]" \
        --argjson spin_us "$spin_us" --argjson spin_server_cores "$spin_server_cores" --argjson spin_load_cores "$spin_load_cores" \
        --argjson redis_per_key "$redis_per_key" --argjson engram_per_key "$engram_per_key" '
        def r(a; b): if b == 0 then null else (a / b * 100 | round) / 100 end;
        {
          machine: $machine, load_average: $loadavg, measured_at: (now | todate),
          runs: { "echo-c1": $ARGS.named["echo-c1"][0], "echo-c50p1": $ARGS.named["echo-c50p1"][0],
                  "echo-spin-c1": $ARGS.named["echo-spin-c1"][0],
                  "redis-c1": $ARGS.named["redis-c1"][0], "redis-c50p1": $ARGS.named["redis-c50p1"][0],
                  "redis-c50p16": $ARGS.named["redis-c50p16"][0], "engram-c1": $ARGS.named["engram-c1"][0],
                  "engram-c50p1": $ARGS.named["engram-c50p1"][0], "engram-c50p16": $ARGS.named["engram-c50p16"][0],
                  "engram-spin-c1": $ARGS.named["engram-spin-c1"][0],
                  "redis-load": $ARGS.named["redis-load"][0], "engram-load": $ARGS.named["engram-load"][0] },
          memory: { redis: { rss_before_kib: $redis_rss[0], rss_after_kib: $redis_rss[1], keys: $redis_rss[2], bytes_per_key: $redis_per_key },
                    engram: { rss_before_kib: $engram_rss[0], rss_after_kib: $engram_rss[1], keys: $engram_rss[2], bytes_per_key: $engram_per_key } },
          spin: { spin_us: $spin_us, server_cores: $spin_server_cores, load_cores: $spin_load_cores },
        } as $d
        | $d + { ratios: {
            c1_p50_engram_over_floor: r($d.runs["engram-c1"].latency_us.p50; $d.runs["echo-c1"].latency_us.p50),
            spin_c1_p50_engram_over_floor: r($d.runs["engram-spin-c1"].latency_us.p50; $d.runs["echo-spin-c1"].latency_us.p50),
            c1_p50_engram_over_redis: r($d.runs["engram-c1"].latency_us.p50; $d.runs["redis-c1"].latency_us.p50),
            c1_p99_engram_over_redis: r($d.runs["engram-c1"].latency_us.p99; $d.runs["redis-c1"].latency_us.p99),
            c50p1_ops_engram_over_redis: r($d.runs["engram-c50p1"].ops_per_sec; $d.runs["redis-c50p1"].ops_per_sec),
            c50p1_p99_engram_over_redis: r($d.runs["engram-c50p1"].latency_us.p99; $d.runs["redis-c50p1"].latency_us.p99),
            c50p16_ops_engram_over_redis: r($d.runs["engram-c50p16"].ops_per_sec; $d.runs["redis-c50p16"].ops_per_sec),
            c50p16_p99_engram_over_redis: r($d.runs["engram-c50p16"].latency_us.p99; $d.runs["redis-c50p16"].latency_us.p99),
            memory_per_key_engram_over_redis: r($d.memory.engram.bytes_per_key; $d.memory.redis.bytes_per_key) } }' \
        >"$json_out"
    note "JSON written to $json_out"
fi
note "raw results in $work"
