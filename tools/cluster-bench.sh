#!/usr/bin/env bash
# Measures a live rebalance under load on this machine: migration speed (MB/s, slots/s)
# and GET latency before and during the rebalance, with engram-bench against a cluster
# of engram-control and loopback nodes. Everything it starts it stops (trap). The
# figures come from `engram-bench report rebalance`, which reads what this script leaves
# in OUT_DIR.
#
# Usage: tools/cluster-bench.sh [OUT_DIR]     (release binaries from target/release;
#        ENGRAM_BIN_DIR=DIR takes them from DIR instead)
#   KEYS=200000 VALUE_BYTES=1024 RATE=20000 CONNECTIONS=8 DURATION=20
set -euo pipefail
# A decimal comma in a clock reading would not parse as a number.
export LC_ALL=C

repository_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${ENGRAM_BIN_DIR:-$repository_root/target/release}
out=${1:-$(mktemp -d /tmp/engram-cluster-bench.XXXXXX)}
keys=${KEYS:-200000}
value_bytes=${VALUE_BYTES:-1024}
rate=${RATE:-20000}
connections=${CONNECTIONS:-8}
duration=${DURATION:-20}
control=127.0.0.1:7390
mkdir -p "$out"

for binary in engramd engram-control engram engram-bench; do
    [[ -x "$bin/$binary" ]] || { echo "cluster-bench: no $bin/$binary: build first (cargo build --release --bins)" >&2; exit 1; }
done

# shellcheck source=tools/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
stop_started_on_exit

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
rm -f "$out/rebalance.facts"
fact "$out/rebalance.facts" started "$(date +%s.%N)"
"$bin/engram" cluster rebalance --control "$control" >"$out/rebalance.txt"
fact "$out/rebalance.facts" finished "$(date +%s.%N)"
wait "$bench_pid"

# Key counts reach the control plane with each node's heartbeat (every 500 ms): a status
# read at once can still show the moved keys on neither node or on both.
sleep 1
"$bin/engram" cluster status --control "$control" --json >"$out/status.json"
"$bin/engram-bench" report rebalance "$out"
echo "raw results in $out"
