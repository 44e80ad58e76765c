# Helpers shared by the scripts in tools/; sourced, defines functions only.

# wait_for_line FILE PATTERN SECONDS: returns once PATTERN appears in FILE; otherwise
# prints FILE and what was missing to stderr and fails (callers run under `set -e`).
wait_for_line() {
    for _ in $(seq 1 $(($3 * 10))); do
        grep -q "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    cat "$1" >&2
    echo "$(basename "$0"): no '$2' in $1 after $3 s" >&2
    return 1
}

# stop_started_on_exit: every process whose id the script appends to `pids` is killed,
# and waited for, when the script exits, however it exits (Ctrl-C included).
stop_started_on_exit() {
    pids=()
    trap stop_started EXIT
    trap 'exit 130' INT TERM
}

stop_started() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}

# free_port: prints a loopback TCP port no socket uses; fails after 100 tries. Ports are
# drawn below Linux's ephemeral range (32768 up by default): a port in it may be taken
# by a client connection's local end at any moment, as the benchmarks open hundreds.
free_port() {
    local port
    for _ in $(seq 1 100); do
        port=$((12000 + RANDOM % 20000))
        ss -Htan "sport = :$port" 2>/dev/null | grep -q . || { echo "$port"; return 0; }
    done
    echo "$(basename "$0"): no free port found" >&2
    return 1
}

# parse_report_arguments NAME HELP_LINES ARGUMENTS...: the command line the report
# scripts share, `[--json FILE | FILE]` and `-h` (which prints the script's header
# comment, lines HELP_LINES); sets json_out.
parse_report_arguments() {
    local name=$1 help_lines=$2
    shift 2
    json_out=""
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --json) json_out=${2:?--json needs a file}; shift 2 ;;
            -h | --help) sed -n "${help_lines}p" "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
            -*) echo "$name: unknown flag $1" >&2; exit 2 ;;
            *) json_out=$1; shift ;;
        esac
    done
}

# The raw facts a script leaves for `engram-bench report`: KEY=VALUE lines, each value
# the rest of its line verbatim (a /proc line, a tool's output line); every number is
# taken out of them, and every figure computed, by the report.

# fact FILE KEY VALUE: appends KEY=VALUE to FILE.
fact() {
    printf '%s=%s\n' "$2" "$3" >>"$1"
}

# machine_facts FILE: appends the machine the run was on and its load average now.
machine_facts() {
    fact "$1" uname "$(uname -srm)"
    fact "$1" cpus "$(nproc)"
    fact "$1" cpu_model_line "$(grep -m1 '^model name' /proc/cpuinfo || true)"
    fact "$1" loadavg "$(</proc/loadavg)"
}

# stat_line PID: the /proc/PID/stat line of a process (its CPU ticks, for the report).
stat_line() {
    cat "/proc/$1/stat"
}

# cpu_ticks PID: prints the user and system CPU ticks of a process, fields 14 and 15 of
# /proc/PID/stat, counted after the parenthesised command name, which may hold spaces.
cpu_ticks() {
    sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12, $13 }'
}

# utc_now: the time in UTC, 2026-11-28T00:18:00Z.
utc_now() {
    date -u +%Y-%m-%dT%H:%M:%SZ
}

# forget_pid PID: takes a process that has been waited for off `pids`, so the exit
# trap never signals an id the system may have given to another process since.
forget_pid() {
    local kept=() pid
    for pid in "${pids[@]}"; do [[ $pid == "$1" ]] || kept+=("$pid"); done
    pids=("${kept[@]}")
}

# stop_pid PID: stops a process this script started and appended to `pids`, waits for
# it, and forgets it.
stop_pid() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    forget_pid "$1"
}

# start_redis CORE LOG: starts a redis-server pinned to CORE on a free loopback port,
# persistence off, its log in LOG.err; appends it to `pids` and sets redis_pid and
# redis_port once it answers a PING. Fails, printing its log, if it does not within 10 s.
start_redis() {
    redis_port=$(free_port)
    taskset -c "$1" redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
        --daemonize no --protected-mode no --logfile "$2.err" >"$2.out" 2>&1 &
    redis_pid=$!
    pids+=("$redis_pid")
    for _ in $(seq 1 100); do
        redis-cli -p "$redis_port" ping >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    cat "$2.err" >&2
    echo "$(basename "$0"): redis-server did not start (see $2.err)" >&2
    return 1
}

# start_benchmarked_server KIND CORE LOG [flags...]: starts one of the servers the
# comparisons measure, pinned to CORE, with its output in LOG.out and LOG.err: `echo`
# (engram-bench's TCP echo server), `redis` (start_redis; it takes no flags) or
# `engram` (engramd --cores 1). The binaries come from the caller's `bin`. Appends
# the server to `pids` and sets started_pid, and started_address (HOST:PORT) once
# it serves.
start_benchmarked_server() {
    local kind=$1 core=$2 log=$3
    shift 3
    case "$kind" in
        echo)
            taskset -c "$core" "$bin/engram-bench" echo-server --listen 127.0.0.1:0 "$@" >"$log.out" 2>"$log.err" &
            started_pid=$!
            pids+=("$started_pid")
            wait_for_line "$log.out" "listening on" 10
            started_address=$(awk '{ print $NF }' "$log.out")
            ;;
        redis)
            start_redis "$core" "$log"
            started_pid=$redis_pid
            started_address=127.0.0.1:$redis_port
            ;;
        engram)
            taskset -c "$core" "$bin/engramd" --cores 1 --port 0 "$@" >"$log.out" 2>"$log.err" &
            started_pid=$!
            pids+=("$started_pid")
            wait_for_line "$log.out" "engramd ready" 20
            started_address=$(sed -n 's/.*front=\([^ ]*\).*/\1/p' "$log.out")
            ;;
        *)
            echo "$(basename "$0"): no server kind '$kind'" >&2
            return 1
            ;;
    esac
}
