#!/usr/bin/env bash
# Engram's Redis-protocol door next to redis-server, with redis-benchmark, in one run:
# both servers on core 0 (taskset), the load on core 1; redis-benchmark's tests
# ping,set,get,incr,lpush,lpop,hset at 50 connections, pipeline 1 and 16, ROUNDS rounds
# in alternating order (a shared machine drifts over minutes, so each pair runs seconds
# apart). Then, for reference, engram-bench on the native front port with the same
# connection count (GET and SET, pipeline 1 and 16). Prints redis-benchmark's CSV lines
# as they come (requests per second and latencies per test), each tagged with its round,
# target and pipeline; it computes nothing itself.
#
# Usage: tools/resp-compare.sh   (release binaries from target/release, built if
#        missing; ENGRAM_BIN_DIR=DIR takes them from DIR instead). Tunables:
#   ROUNDS=2 REQUESTS=200000 CONNECTIONS=50 DURATION=5 SERVER_CORE=0 LOAD_CORE=1
set -euo pipefail
export LC_ALL=C

repository_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${ENGRAM_BIN_DIR:-$repository_root/target/release}
# shellcheck source=tools/common.sh
source "$repository_root/tools/common.sh"
rounds=${ROUNDS:-2}
requests=${REQUESTS:-200000}
connections=${CONNECTIONS:-50}
duration=${DURATION:-5}
server_core=${SERVER_CORE:-0}
load_core=${LOAD_CORE:-1}
tests=ping,set,get,incr,lpush,lpop,hset
work=$(mktemp -d /tmp/engram-resp-compare.XXXXXX)

stop_started_on_exit

if [[ ! -x "$bin/engramd" || ! -x "$bin/engram-bench" ]]; then
    [[ -z ${ENGRAM_BIN_DIR:-} ]] || { echo "engramd or engram-bench missing in $ENGRAM_BIN_DIR" >&2; exit 1; }
    (cd "$repository_root" && cargo build --release --bins)
fi
for tool in redis-server redis-benchmark; do
    command -v "$tool" >/dev/null || { echo "$tool is missing (apt-get install redis-server redis-tools)" >&2; exit 1; }
done

redis_port=$(free_port)
taskset -c "$server_core" redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
    --daemonize no --protected-mode no --logfile "$work/redis.log" >/dev/null 2>&1 &
pids+=("$!")
for _ in $(seq 1 100); do
    redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
    sleep 0.1
done

taskset -c "$server_core" "$bin/engramd" --cores 1 --port 0 --resp-port 0 >"$work/engramd.out" 2>"$work/engramd.err" &
pids+=("$!")
wait_for_line "$work/engramd.out" "engramd ready" 20
engram_front=$(sed -n 's/.*front=\([^ ]*\).*/\1/p' "$work/engramd.out")
engram_resp_port=$(sed -n 's/.*resp=[^ ]*:\([0-9]*\).*/\1/p' "$work/engramd.out")

echo "# $(date -u +%FT%TZ) $(nproc) cores, $(uname -r); redis $(redis-server --version | awk '{ print $3 }')"
echo "round,target,pipeline,$(redis-benchmark -p "$redis_port" -t ping -n 1 -q --csv | head -1 | tr -d '"')"
run_redis_benchmark() { # round target port pipeline
    taskset -c "$load_core" redis-benchmark -p "$3" -t "$tests" -n "$requests" -c "$connections" -P "$4" -q --csv \
        | tail -n +2 | sed "s/^/$1,$2,$4,/"
}
for round in $(seq 1 "$rounds"); do
    order=(redis engram)
    ((round % 2 == 0)) && order=(engram redis)
    for pipeline in 1 16; do
        for target in "${order[@]}"; do
            port=$redis_port
            [[ $target == engram ]] && port=$engram_resp_port
            run_redis_benchmark "$round" "$target-resp" "$port" "$pipeline"
        done
    done
done

echo "# engram-bench on the native front port, $connections connections, ${duration}s each"
for workload in get set; do
    for pipeline in 1 16; do
        echo "# native $workload pipeline $pipeline:"
        taskset -c "$load_core" "$bin/engram-bench" --target "engram://$engram_front" --workload "$workload" \
            --connections "$connections" --pipeline "$pipeline" --duration "$duration" --warmup 1 --keys 10000 \
            | grep -E "ops/s|p50"
    done
done
