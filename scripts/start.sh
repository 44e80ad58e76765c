#!/usr/bin/env bash
# Builds Engram, starts engramd on its single-node default (127.0.0.1:7400, one shard
# per core, embedded control plane), shows it serving with the CLI, then keeps it in
# the foreground until Ctrl-C. Extra arguments go to engramd, e.g. --cores 1.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

# --bins builds engram-control too, whose etcd client needs protoc to build.
ensure_protoc
cargo build --release --locked --bins
bin=$(cargo_target_dir)/release
[ -x "$bin/engramd" ] || { echo "scripts/start.sh: $bin/engramd is missing after the build" >&2; exit 1; }

"$bin/engramd" "$@" > >(tee /tmp/engramd-ready.$$ >&2) &
server=$!
trap 'kill -TERM "$server" 2>/dev/null; wait "$server" 2>/dev/null; rm -f /tmp/engramd-ready.$$' EXIT INT TERM

for _ in $(seq 1 100); do
    grep -q '^engramd ready' /tmp/engramd-ready.$$ 2>/dev/null && break
    if ! kill -0 "$server" 2>/dev/null; then
        echo "engramd exited during start-up (see the message above)" >&2
        exit 1
    fi
    sleep 0.1
done
addr=$(sed -n 's/^engramd ready front=\([^ ]*\).*/\1/p' /tmp/engramd-ready.$$)
[ -n "$addr" ] || { echo "engramd did not report ready" >&2; exit 1; }

run() { printf '$'; printf ' %q' "$@"; echo; "$@"; }
echo
run "$bin/engram" --addr "$addr" ping
run "$bin/engram" --addr "$addr" set greeting "hello from engram"
run "$bin/engram" --addr "$addr" get greeting
run "$bin/engram" --addr "$addr" incr visits
run "$bin/engram" --addr "$addr" incr visits 41
run "$bin/engram" --addr "$addr" info
echo
echo "engramd is serving on $addr; press Ctrl-C to stop it."
wait "$server"
