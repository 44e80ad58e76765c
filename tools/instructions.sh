#!/usr/bin/env bash
# Instructions engramd executes in user space per GET, counted by callgrind: a figure
# that repeats within a few instructions in a thousand on a machine whose timings drift
# by tens of percent, so two builds compare closely (the kernel's work, and memory
# stalls, are not in it). The load's own binary shapes the server's reads, so compare
# builds each with its own engram-bench, as a user would run them.
#
# engramd --cores 1 runs under `valgrind --tool=callgrind` on core 0; engram-bench on
# core 1 prefills KEYS keys, warms up with 50,000 GETs, then callgrind's counters are
# zeroed, REQUESTS GETs of VALUE_BYTES-byte values are sent over 50 connections with
# the given pipeline depth, and the counters dumped. Prints instructions per request.
# Under valgrind the server is some twenty times slower, so its reads hold more
# requests than at full speed: compare builds with this script, not with perf figures.
#
# Usage: tools/instructions.sh [PIPELINE]   (default 16; release binaries from
#        target/release, or ENGRAM_BIN_DIR=DIR). Tunables as environment variables:
#   REQUESTS=200000 KEYS=10000 VALUE_BYTES=32 SERVER_CORE=0 LOAD_CORE=1
set -euo pipefail
export LC_ALL=C

repository_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${ENGRAM_BIN_DIR:-$repository_root/target/release}
# shellcheck source=tools/common.sh
source "$repository_root/tools/common.sh"
case ${1:-} in -h | --help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;; esac
pipeline=${1:-16}
requests=${REQUESTS:-200000}
keys=${KEYS:-10000}
value_bytes=${VALUE_BYTES:-32}
server_core=${SERVER_CORE:-0}
load_core=${LOAD_CORE:-1}

die() { echo "instructions: $*" >&2; exit 1; }
[[ $pipeline =~ ^[1-9][0-9]*$ ]] || die "PIPELINE must be a positive integer, not '$pipeline'"
[[ $requests =~ ^[1-9][0-9]*$ ]] || die "REQUESTS must be a positive integer, not '$requests'"
if ! command -v valgrind >/dev/null; then
    echo "instructions: installing valgrind" >&2
    apt-get install -y valgrind >/dev/null 2>&1 || die "valgrind missing and apt-get install failed"
fi
if [[ ! -x "$bin/engramd" || ! -x "$bin/engram-bench" ]]; then
    [[ -z ${ENGRAM_BIN_DIR:-} ]] || die "engramd or engram-bench missing in ENGRAM_BIN_DIR=$ENGRAM_BIN_DIR"
    (cd "$repository_root" && cargo build --release -p engram-server -p engram-tools --bins) >&2
fi

work=$(mktemp -d /tmp/engram-instructions.XXXXXX)
stop_started_on_exit
taskset -c "$server_core" valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.%p" \
    "$bin/engramd" --cores 1 --port 0 >"$work/engramd.out" 2>"$work/engramd.err" &
server=$!
pids+=("$server")
# Start-up under valgrind takes seconds.
wait_for_line "$work/engramd.out" "engramd ready" 120
address=$(sed -n 's/.*front=\([^ ]*\).*/\1/p' "$work/engramd.out")

bench() { # requests connections pipeline [flags...]
    local count=$1 connections=$2 depth=$3
    shift 3
    taskset -c "$load_core" "$bin/engram-bench" --target "engram://$address" --workload get --keys "$keys" \
        --value-bytes "$value_bytes" --requests "$count" --warmup 0 --connections "$connections" \
        --pipeline "$depth" "$@" >>"$work/bench.txt" 2>&1 || { cat "$work/bench.txt" >&2; die "engram-bench failed"; }
}
bench 1 1 1 --prefill
bench 50000 50 "$pipeline"
callgrind_control --zero "$server" >/dev/null 2>&1
bench "$requests" 50 "$pipeline"
callgrind_control --dump "$server" >/dev/null 2>&1
profile=$(ls "$work"/callgrind."$server".* | head -1)
[[ -n $profile ]] || die "callgrind wrote no profile (see $work/engramd.err)"
total=$(callgrind_annotate "$profile" 2>/dev/null | sed -n 's/^ *\([0-9,]*\) .*PROGRAM TOTALS.*/\1/p' | tr -d ,)
[[ $total =~ ^[0-9]+$ ]] || die "no instruction total in $profile"
echo "engramd: $((total / requests)) instructions per GET in user space, pipeline $pipeline," \
    "$requests requests over 50 connections, $keys keys of $value_bytes-byte values ($profile)"
