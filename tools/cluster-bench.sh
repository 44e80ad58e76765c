#!/usr/bin/env bash
# Measures a live rebalance under load on this machine: migration speed (MB/s, slots/s)
# and GET latency before and during the rebalance, with engram-bench against a cluster
# of engram-control and loopback nodes. Everything it starts it stops (trap).
#
# Usage: tools/cluster-bench.sh [OUT_DIR]     (release binaries from target/release)
#   KEYS=200000 VALUE_BYTES=1024 RATE=20000 CONNECTIONS=8 DURATION=20
set -euo pipefail

repository_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin="$repository_root/target/release"
out=${1:-$(mktemp -d /tmp/engram-cluster-bench.XXXXXX)}
keys=${KEYS:-200000}
value_bytes=${VALUE_BYTES:-1024}
rate=${RATE:-20000}
connections=${CONNECTIONS:-8}
duration=${DURATION:-20}
control=127.0.0.1:7390
mkdir -p "$out"

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

for binary in engramd engram-control engram engram-bench; do
    [[ -x "$bin/$binary" ]] || { echo "cluster-bench: build first: cargo build --release --bins" >&2; exit 1; }
done

# shellcheck source=tools/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

start_node() { # ip label
    "$bin/engramd" --control "$control" --bind "$1" --port 7400 --cores 1 >"$out/$2.out" 2>"$out/$2.err" &
    pids+=($!)
    wait_for_line "$out/$2.out" "engramd ready" 20
}

rm -rf "$out/control-data"
"$bin/engram-control" --listen "$control" --data "$out/control-data" --no-load-rebalance \
    >"$out/control.out" 2>"$out/control.err" &
pids+=($!)
wait_for_line "$out/control.out" "engram-control ready" 10
start_node 127.0.0.2 node1
start_node 127.0.0.3 node2
"$bin/engram" cluster rebalance --control "$control" >/dev/null

echo "loading $keys keys of $value_bytes bytes"
"$bin/engram-bench" --target engram://127.0.0.2:7400 --workload set --keys "$keys" --key-pattern sequential \
    --value-bytes "$value_bytes" --requests "$keys" --connections 16 --pipeline 4 --json "$out/load.json" >/dev/null

start_node 127.0.0.4 node3
sleep 1

bench() { # label seconds
    "$bin/engram-bench" --target engram://127.0.0.2:7400 --workload get --keys "$keys" --value-bytes "$value_bytes" \
        --connections "$connections" --rate "$rate" --duration "$2" --json "$out/$1.json" >"$out/$1.txt" 2>&1
}

"$bin/engram" cluster status --control "$control" --json >"$out/status-before.json"
echo "GET at $rate/s, $connections connections: ${duration} s before the rebalance"
bench before "$duration"

echo "GET at $rate/s during the rebalance onto the new node"
bench during "$duration" &
bench_pid=$!
sleep 2
rebalance_started=$(date +%s.%N)
"$bin/engram" cluster rebalance --control "$control" >"$out/rebalance.txt"
rebalance_finished=$(date +%s.%N)
wait "$bench_pid"

"$bin/engram" cluster status --control "$control" --json >"$out/status.json"
python3 - "$out" "$rebalance_started" "$rebalance_finished" <<'PYTHON'
import json, sys
out, started, finished = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
status = json.load(open(f"{out}/status.json"))
status_before = json.load(open(f"{out}/status-before.json"))
def total_keys(status):
    return sum(shard["keys"] for node in status["nodes"] for shard in node["shards"])
before = json.load(open(f"{out}/before.json"))
during = json.load(open(f"{out}/during.json"))
wall = finished - started
moved_bytes = status["bytes_moved_total"]
moving_ms = status["migration_milliseconds_total"]
# Slots moved by the last rebalance: the status counts all since the start, including the
# first spread over two nodes, so take the new node's slots.
new_node = max(status["nodes"], key=lambda node: node["node_id"])
slots = sum(shard["slots"] for shard in new_node["shards"])
keys = sum(shard["keys"] for shard in new_node["shards"])
print(f"rebalance: {slots} slots, {keys} keys to the new node in {wall:.2f} s wall "
      f"({slots / wall:.0f} slots/s)")
print(f"migration copy: {moved_bytes / 1e6:.1f} MB in {moving_ms} ms of migration steps "
      f"({moved_bytes / 1e3 / max(moving_ms, 1):.1f} MB/s over all steps since start)")
# The loader's lanes walk the key space from their own offsets, so a few keys may never
# be written; GET misses of those show up before and during alike. What must hold is
# that the rebalance kept every key that was there.
print(f"keys in the cluster: {total_keys(status_before)} before the rebalance, {total_keys(status)} after")
for label, result in (("before", before), ("during", during)):
    latency = result["latency_us"]
    print(f"GET {label:6}: {result['ops_per_sec']:.0f} ops/s, p50 {latency['p50']:.0f} us, "
          f"p99 {latency['p99']:.0f} us, p99.9 {latency['p999']:.0f} us, max {latency['max']:.0f} us, "
          f"errors {result['errors']}, misses {result['misses']}")
PYTHON
echo "raw results in $out"
