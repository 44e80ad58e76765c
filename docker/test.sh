#!/usr/bin/env bash
# End-to-end check of the container setup: builds the images, starts the compose cluster
# (etcd, two engram-control processes on it, three data nodes), and checks, each step
# bounded in time:
#   1. every container is healthy (etcd's health check is `etcdctl endpoint health`, the
#      control processes' `engram cluster ping`, the nodes' `engram ping`);
#   2. exactly one control process leads: its engram_control_is_leader is 1, the other's
#      0 (it answers as a standby), and etcd's leader key names the leader;
#   3. `engram cluster status` lists 3 live nodes;
#   4. `engram cluster rebalance` spreads the 16384 slots over the three shards (the
#      first node to join owns every slot until then), and then every slot has its
#      backup on another node (one replica is the default);
#   5. engram-bench, routing by the slot map to the nodes' advertised 172.28.0.x
#      addresses, runs a mixed load for a few seconds with zero errors;
#   6. the host's CLI, given only node1's published front port (--front-only), writes
#      and reads keys of all three nodes: the front port forwards to each key's owner;
#   7. each metrics port serves Prometheus text: engram_build_info everywhere,
#      engram_operations_total on the nodes (and it moved during the bench on every
#      node), engram_control_is_leader on both control processes and
#      engram_migrations_total on the leader;
#   8. `docker kill` (SIGKILL) of the leading control process: the standby takes over
#      (it reports itself leader and etcd's leader key names it); `engram cluster status`
#      through it lists 3 live nodes whose heartbeats reach it (each node's key count,
#      which only heartbeats report, is back), every slot owned and none lost; and
#      engram-bench again runs with zero errors.
# The CLI and the bench run inside node1's container, on the cluster's network, so the
# check does not depend on the host reaching container addresses; the metrics are read
# from the host through the ports compose publishes on 127.0.0.1. Everything is torn
# down on exit, pass or fail; on failure the containers' logs are printed first.
#
# Usage: docker/test.sh
#   ENGRAM_SKIP_BUILD=1     reuse the images as they are
#   ENGRAM_IMAGE=TAG        image to build and test (default engram:latest; etcd's image
#                           is named after it, engram-etcd:latest, or ENGRAM_ETCD_IMAGE)
#   ENGRAM_PROFILE=debug    passed to build.sh: package target/debug (the test suite does)
#   ENGRAM_MEMLOCK_BYTES=N  passed to compose.yaml (default 8 MiB)
set -euo pipefail

docker_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$docker_dir/../scripts/lib.sh"
host_cli="$(cd "$docker_dir/.." && cargo_target_dir)/${ENGRAM_PROFILE:-release}/engram"
node1_front_port=${ENGRAM_NODE1_HOST_PORT:-7500}
front_keys=60
project=engram-test-$$
image=${ENGRAM_IMAGE:-engram:latest}
etcd_image=$(etcd_image_of "$image")
health_timeout_seconds=120
# An election: a lapsed lease (5 s) and a campaign, with room for a loaded machine.
election_timeout_seconds=30
# The new leader hears from every node afresh; nodes find it within a few heartbeats.
members_timeout_seconds=30
# Fills copy each slot a rebalance moved to a new backup once the plan ended.
redundancy_timeout_seconds=60
rebalance_timeout_seconds=120
step_timeout_seconds=60
bench_seconds=3
controls=(control-1 control-2)
# What the nodes are given, and the CLI too: it follows the leader from a standby.
control_list=control-1:7300,control-2:7300
# engram-control's default --etcd-prefix, which compose.yaml keeps.
leader_key=/engram/default/leader
services=(etcd control-1 control-2 node1 node2 node3)
# Metrics ports compose publishes on the host's loopback, per service.
declare -A metrics_port=(
    [control-1]=${ENGRAM_CONTROL1_METRICS_HOST_PORT:-9310}
    [control-2]=${ENGRAM_CONTROL2_METRICS_HOST_PORT:-9311}
    [node1]=${ENGRAM_NODE1_METRICS_HOST_PORT:-9500}
    [node2]=${ENGRAM_NODE2_METRICS_HOST_PORT:-9510}
    [node3]=${ENGRAM_NODE3_METRICS_HOST_PORT:-9520}
)
data_nodes=(node1 node2 node3)
slots_total=16384

say() { printf '\n==> docker/test.sh: %s\n' "$*"; }
fail() {
    echo "docker/test.sh: FAILED: $*" >&2
    exit 1
}

for tool in docker curl timeout; do
    command -v "$tool" >/dev/null || fail "$tool is not installed"
done
# Compose v1 reads the seccomp profile relative to the working directory, not to the
# compose file.
cd "$docker_dir"
if docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
elif command -v docker-compose >/dev/null; then
    compose=(docker-compose)
else
    fail "neither 'docker compose' (Compose v2) nor 'docker-compose' (v1) is installed"
fi
compose+=(--project-name "$project" --file "$docker_dir/compose.yaml")
export ENGRAM_IMAGE=$image ENGRAM_ETCD_IMAGE=$etcd_image

if [[ -z "${ENGRAM_SKIP_BUILD:-}" ]]; then
    say "building $image and $etcd_image"
    "$docker_dir/build.sh" "$image" || fail "docker/build.sh $image"
fi
for required in "$image" "$etcd_image"; do
    docker image inspect "$required" >/dev/null 2>&1 || fail "image $required does not exist (run docker/build.sh)"
done

tear_down() {
    local status=$?
    trap - EXIT
    if [[ $status -ne 0 ]]; then
        echo "--- container logs (last 40 lines each) ---" >&2
        timeout "$step_timeout_seconds" "${compose[@]}" logs --no-color --tail 40 >&2 || true
    fi
    echo "docker/test.sh: tearing down $project"
    timeout "$step_timeout_seconds" "${compose[@]}" down --volumes --timeout 5 >/dev/null 2>&1 ||
        echo "docker/test.sh: warning: '${compose[*]} down' failed; remove the $project containers by hand" >&2
    exit "$status"
}
trap tear_down EXIT
# A signal (Ctrl-C, the suite's timeout) ends the run through the same tear-down.
trap 'exit 130' INT
trap 'exit 143' TERM

# Runs the image's CLI (or bench) inside node1's container, bounded: a data node, so
# it outlives the control process the test kills.
in_cluster() {
    local seconds=$1
    shift
    timeout "$seconds" "${compose[@]}" exec -T node1 "$@"
}
# cluster_status CONTROL [--json]
cluster_status() {
    local control=$1
    shift
    in_cluster "$step_timeout_seconds" /usr/local/bin/engram --timeout-ms 5000 cluster status --control "$control" "$@"
}
metrics_of() {
    curl --silent --show-error --fail --max-time 5 "http://127.0.0.1:${metrics_port[$1]}/metrics"
}
operations_of() {
    metrics_of "$1" | awk '/^engram_operations_total[{ ]/ { total += $NF } END { printf "%.0f\n", total }'
}
# 1 or 0 as the control process reports, or nothing when it does not answer.
is_leader() {
    metrics_of "$1" 2>/dev/null | awk '/^engram_control_is_leader / { print $2 }' || true
}
# etcd's leader key: "ADDRESS ID" of the process that holds it, or nothing.
leader_in_etcd() {
    timeout "$step_timeout_seconds" "${compose[@]}" exec -T etcd /usr/local/bin/etcdctl \
        --endpoints http://127.0.0.1:2379 get --print-value-only "$leader_key" 2>/dev/null || true
}
container_of() {
    "${compose[@]}" ps --quiet "$1"
}

# Waits up to SECONDS until exactly one of CONTROL... reports itself leader, every other
# one standby, and etcd's leader key names the leader's advertised address; prints the
# leader. Returns 1 (with what it saw on stderr) if that does not happen in time.
single_leader() {
    local seconds=$1
    shift
    local deadline=$((SECONDS + seconds)) control role leaders standbys seen key
    while true; do
        leaders=() standbys=() seen=()
        for control in "$@"; do
            role=$(is_leader "$control")
            seen+=("$control=${role:-no answer}")
            case "$role" in
                1) leaders+=("$control") ;;
                0) standbys+=("$control") ;;
            esac
        done
        key=$(leader_in_etcd)
        if ((${#leaders[@]} == 1 && ${#standbys[@]} == $# - 1)) && [[ "$key" == "${leaders[0]}:7300 "* ]]; then
            echo "${leaders[0]}"
            return 0
        fi
        if ((SECONDS >= deadline)); then
            echo "engram_control_is_leader: ${seen[*]}; etcd's $leader_key: '${key}'" >&2
            return 1
        fi
        sleep 0.5
    done
}

# Waits up to SECONDS until the status through CONTROL shows 3 live nodes, each of whose
# shards reports keys (only a heartbeat to CONTROL reports them), every slot owned, none
# lost and no migration in flight; prints the status's JSON.
settled_status() {
    local control=$1 seconds=$2 deadline=$((SECONDS + $2)) status_json live keys lost sum
    while true; do
        status_json=$(cluster_status "$control" --json) || status_json=
        live=$(grep -c '"alive": true' <<<"$status_json" || true)
        keys=$(grep -o '"keys": [0-9]*' <<<"$status_json" | awk '$2 > 0' | wc -l)
        lost=$(grep -o '"slots_lost": [0-9]*' <<<"$status_json" | awk '{ total += $2 } END { print total + 0 }')
        sum=$(grep -o '"slots": [0-9]*' <<<"$status_json" | awk '{ total += $2 } END { print total + 0 }')
        if [[ "$live" == 3 && "$keys" == 3 && "$lost" == 0 && "$sum" == "$slots_total" ]] &&
            grep -q '"migrations": \[\]' <<<"$status_json"; then
            echo "$status_json"
            return 0
        fi
        if ((SECONDS >= deadline)); then
            echo "after ${seconds}s through $control: $live live nodes, $keys shards reporting keys, $lost slots lost, $sum slots owned: $status_json" >&2
            return 1
        fi
        sleep 1
    done
}

# engram-bench for $bench_seconds through the slot map; fails on any error.
bench() {
    local output summary
    output=$(in_cluster $((bench_seconds + step_timeout_seconds)) /usr/local/bin/engram-bench \
        --target "engram://172.28.0.11:7400" --workload mixed --duration "$bench_seconds" \
        --connections 8 --keys 10000 --prefill 2>&1) ||
        fail "engram-bench against the cluster: $output"
    echo "$output"
    summary=$(grep -E '^[0-9]+ requests in .* errors' <<<"$output") || fail "engram-bench printed no summary line"
    [[ "$summary" =~ ^([0-9]+)\ requests.*\ ([0-9]+)\ errors ]] || fail "cannot read engram-bench's summary: $summary"
    ((BASH_REMATCH[1] > 0)) || fail "engram-bench completed no request: $summary"
    ((BASH_REMATCH[2] == 0)) || fail "engram-bench saw ${BASH_REMATCH[2]} errors: $summary"
}

say "starting the cluster ($project, images $image and $etcd_image)"
timeout "$step_timeout_seconds" "${compose[@]}" up --detach ||
    fail "'${compose[*]} up' (its error is above; \"error setting rlimit type 8\": ENGRAM_MEMLOCK_BYTES is above what the daemon may grant; \"Pool overlaps\" or \"port is already allocated\": another cluster holds 172.28.0.0/24 or the ports, see docker ps)"

say "waiting up to ${health_timeout_seconds}s for ${services[*]} to be healthy"
deadline=$((SECONDS + health_timeout_seconds))
for service in "${services[@]}"; do
    container=$(container_of "$service")
    [[ -n "$container" ]] || fail "$service has no container"
    while true; do
        state=$(docker inspect --format '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}' "$container")
        [[ "$state" == "running healthy" ]] && break
        [[ "$state" == exited* || "$state" == dead* ]] && fail "$service stopped ($state)"
        ((SECONDS < deadline)) || fail "$service not healthy within ${health_timeout_seconds}s ($state)"
        sleep 1
    done
    echo "$service healthy"
done

say "exactly one control process leads (up to ${election_timeout_seconds}s)"
leader=$(single_leader "$election_timeout_seconds" "${controls[@]}") ||
    fail "not exactly one leader among ${controls[*]} named by etcd"
for control in "${controls[@]}"; do
    [[ "$control" == "$leader" ]] || standby=$control
done
echo "$leader leads (etcd's $leader_key: $(leader_in_etcd)); $standby stands by"
in_cluster "$step_timeout_seconds" /usr/local/bin/engram --timeout-ms 5000 cluster ping --control "$standby:7300" ||
    fail "the standby $standby does not answer a ping"

say "waiting up to ${members_timeout_seconds}s for 3 live nodes in engram cluster status --control $control_list"
deadline=$((SECONDS + members_timeout_seconds))
while true; do
    status_json=$(cluster_status "$control_list" --json) || fail "engram cluster status --control $control_list"
    live=$(grep -c '"alive": true' <<<"$status_json" || true)
    [[ "$live" == 3 ]] && break
    ((SECONDS < deadline)) || fail "cluster status shows $live live nodes, not 3, after ${members_timeout_seconds}s: $status_json"
    sleep 1
done
cluster_status "$control_list"

say "engram cluster rebalance (up to ${rebalance_timeout_seconds}s)"
in_cluster "$rebalance_timeout_seconds" /usr/local/bin/engram --timeout-ms $((rebalance_timeout_seconds * 1000)) \
    cluster rebalance --control "$control_list" ||
    fail "engram cluster rebalance"
status_json=$(cluster_status "$control_list" --json) || fail "engram cluster status after the rebalance"
cluster_status "$control_list"
# With no migration in flight, the only "slots" fields are the shards'.
grep -q '"migrations": \[\]' <<<"$status_json" || fail "migrations still in flight after the rebalance: $status_json"
mapfile -t shard_slots < <(grep -o '"slots": [0-9]*' <<<"$status_json" | awk '{ print $2 }')
[[ ${#shard_slots[@]} == 3 ]] || fail "expected 3 shards in the status, found ${#shard_slots[@]}: $status_json"
sum=0
for slots in "${shard_slots[@]}"; do
    ((slots > 0)) || fail "a shard owns no slot after the rebalance (slots per shard: ${shard_slots[*]})"
    sum=$((sum + slots))
done
((sum == slots_total)) || fail "the shards own $sum slots, not $slots_total (slots per shard: ${shard_slots[*]})"
echo "slots per shard: ${shard_slots[*]}"

say "waiting up to ${redundancy_timeout_seconds}s for every slot's backup (the default of one replica)"
deadline=$((SECONDS + redundancy_timeout_seconds))
while true; do
    status_json=$(cluster_status "$control_list" --json) || fail "engram cluster status while waiting for backups"
    grep -q '"replicas": 1,' <<<"$status_json" || fail "the control plane does not keep one replica by default: $status_json"
    grep -q '"under_replicated_slots": 0,' <<<"$status_json" && break
    ((SECONDS < deadline)) || fail "slots still lack a backup after ${redundancy_timeout_seconds}s: $status_json"
    sleep 1
done

declare -A operations_before
for node in "${data_nodes[@]}"; do
    operations_before[$node]=$(operations_of "$node") || fail "metrics of $node (127.0.0.1:${metrics_port[$node]})"
done

say "engram-bench: ${bench_seconds}s of mixed sets and gets, routed by the slot map"
bench

say "the host's CLI through node1's published front port only (127.0.0.1:$node1_front_port)"
[[ -x "$host_cli" ]] || fail "$host_cli is missing (build the binaries first)"
front_cli() {
    timeout "$step_timeout_seconds" "$host_cli" --front-only --addr "127.0.0.1:$node1_front_port" --timeout-ms 5000 "$@"
}
# 60 keys land on all three nodes (the chance that one node gets none is about 1e-10).
for index in $(seq 1 "$front_keys"); do
    front_cli set "front-key-$index" "value-$index" >/dev/null || fail "set front-key-$index through node1's front port"
done
for index in $(seq 1 "$front_keys"); do
    value=$(front_cli get "front-key-$index") || fail "get front-key-$index through node1's front port"
    [[ "$value" == "value-$index" ]] || fail "front-key-$index reads '$value' through node1's front port"
    # Every fifth key also routed by the map from inside the network (an exec costs ~0.5 s).
    ((index % 5 == 0)) || continue
    routed=$(in_cluster "$step_timeout_seconds" /usr/local/bin/engram --addr 172.28.0.12:7400 get "front-key-$index") ||
        fail "get front-key-$index routed by the slot map"
    [[ "$routed" == "value-$index" ]] || fail "front-key-$index reads '$routed' routed by the slot map"
done
echo "$front_keys keys written and read through 127.0.0.1:$node1_front_port; every fifth read back routed by the map"

say "metrics"
for service in "${controls[@]}" "${data_nodes[@]}"; do
    text=$(metrics_of "$service") || fail "GET http://127.0.0.1:${metrics_port[$service]}/metrics ($service)"
    required=(engram_build_info)
    if [[ "$service" == "$leader" ]]; then
        # Only the leader ran migrations; a counter family with no sample is not shown.
        required+=(engram_control_is_leader engram_migrations_total)
    elif [[ "$service" == control-* ]]; then
        required+=(engram_control_is_leader)
    else
        required+=(engram_operations_total)
    fi
    for metric in "${required[@]}"; do
        grep -qE "^${metric}[{ ]" <<<"$text" || fail "$service's metrics (port ${metrics_port[$service]}) have no $metric"
    done
    echo "$service (127.0.0.1:${metrics_port[$service]}): ${required[*]} present"
done
for node in "${data_nodes[@]}"; do
    after=$(operations_of "$node") || fail "metrics of $node after the bench"
    ((after > operations_before[$node])) ||
        fail "engram_operations_total of $node did not move during the bench (${operations_before[$node]} -> $after)"
    echo "$node engram_operations_total: ${operations_before[$node]} -> $after"
done

say "docker kill (SIGKILL) of the leader, $leader; $standby takes over (up to ${election_timeout_seconds}s)"
killed_at=$SECONDS
docker kill --signal KILL "$(container_of "$leader")" >/dev/null || fail "docker kill $leader"
new_leader=$(single_leader "$election_timeout_seconds" "$standby") ||
    fail "$standby did not take over within ${election_timeout_seconds}s of the kill of $leader"
echo "$new_leader leads about $((SECONDS - killed_at))s after the kill (etcd's $leader_key: $(leader_in_etcd))"

say "engram cluster status through $new_leader: 3 live nodes heartbeating to it (up to ${members_timeout_seconds}s)"
settled_status "$new_leader:7300" "$members_timeout_seconds" >/dev/null ||
    fail "the nodes did not settle on $new_leader"
cluster_status "$new_leader:7300"

say "engram-bench after the failover"
bench

say "passed"
