#!/usr/bin/env bash
# What TLS costs a GET: two engramd processes on core 0 (taskset), one plain and one
# serving TLS with a certificate made here (openssl), the load on core 1; engram-bench
# GETs (32-byte values, every key written first) at 1 and 50 connections, pipeline 1,
# ROUNDS rounds with the order of the two servers alternating (a shared machine drifts
# over minutes, so each pair runs seconds apart). Prints one CSV line per run: round,
# target, connections, ops/s, p50 and p99 in microseconds.
#
# Usage: tools/tls-compare.sh   (release binaries from target/release, built if missing;
#        ENGRAM_BIN_DIR=DIR takes them from DIR instead). Tunables:
#   ROUNDS=3 DURATION=10 KEYS=10000 SERVER_CORE=0 LOAD_CORE=1
set -euo pipefail
export LC_ALL=C

repository_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${ENGRAM_BIN_DIR:-$repository_root/target/release}
# shellcheck source=tools/common.sh
source "$repository_root/tools/common.sh"
rounds=${ROUNDS:-3}
duration=${DURATION:-10}
keys=${KEYS:-10000}
server_core=${SERVER_CORE:-0}
load_core=${LOAD_CORE:-1}
work=$(mktemp -d /tmp/engram-tls-compare.XXXXXX)

stop_started_on_exit

if [[ ! -x "$bin/engramd" || ! -x "$bin/engram-bench" ]]; then
    [[ -z ${ENGRAM_BIN_DIR:-} ]] || { echo "engramd or engram-bench missing in $ENGRAM_BIN_DIR" >&2; exit 1; }
    (cd "$repository_root" && cargo build --release --bins)
fi
command -v openssl >/dev/null || { echo "openssl is missing (apt-get install openssl)" >&2; exit 1; }

# A CA and a node certificate for 127.0.0.1 (P-256, as a modern deployment would use).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj "/CN=tls-compare CA" \
    -keyout "$work/ca-key.pem" -out "$work/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=node" \
    -keyout "$work/node-key.pem" -out "$work/node.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\n' >"$work/san.cnf"
openssl x509 -req -in "$work/node.csr" -CA "$work/ca.pem" -CAkey "$work/ca-key.pem" -CAcreateserial -days 1 \
    -extfile "$work/san.cnf" -out "$work/node.pem" 2>/dev/null

start_node() { # name extra-flags...
    local name=$1
    shift
    taskset -c "$server_core" "$bin/engramd" --cores 1 --port 0 "$@" >"$work/$name.out" 2>"$work/$name.err" &
    pids+=("$!")
    wait_for_line "$work/$name.out" "engramd ready" 20
    sed -n 's/.*front=\([^ ]*\).*/\1/p' "$work/$name.out"
}
plain_front=$(start_node plain)
tls_front=$(start_node tls --tls-cert "$work/node.pem" --tls-key "$work/node-key.pem")

run() { # round target connections
    local target=engram://$plain_front tls=()
    if [[ $2 == tls ]]; then
        target=engrams://$tls_front
        tls=(--tls-ca "$work/ca.pem")
    fi
    local output
    output=$(taskset -c "$load_core" "$bin/engram-bench" --target "$target" "${tls[@]}" --workload get --prefill \
        --keys "$keys" --connections "$3" --duration "$duration" --warmup 1)
    local ops p50 p99
    ops=$(sed -n 's/.*: \([0-9.]*\) ops\/s.*/\1/p' <<<"$output")
    p50=$(sed -n 's/.*p50 \([0-9.]*\) .*/\1/p' <<<"$output")
    p99=$(sed -n 's/.* p99 \([0-9.]*\) .*/\1/p' <<<"$output")
    echo "$1,$2,$3,$ops,$p50,$p99"
}

echo "# $(date -u +%FT%TZ) $(nproc) cores, $(uname -r); GET, 32-byte values, $keys keys, ${duration}s per run"
echo "round,target,connections,ops_per_s,p50_us,p99_us"
for round in $(seq 1 "$rounds"); do
    order=(plain tls)
    ((round % 2 == 0)) && order=(tls plain)
    for connections in 1 50; do
        for target in "${order[@]}"; do
            run "$round" "$target" "$connections"
        done
    done
done
