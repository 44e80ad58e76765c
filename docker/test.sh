#!/usr/bin/env bash
# End-to-end check of the container setup: builds the image, starts the compose
# cluster, waits for every data node to be healthy, drives ~3 s of load at one node,
# asks for the cluster's status, and always tears everything down. Every step is
# bounded, so a hung container fails the run instead of stalling it.
#
# Usage: docker/test.sh            (ENGRAM_SKIP_BUILD=1 reuses an engram:latest image)
set -euo pipefail

docker_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
project=engram-test-$$
image=${ENGRAM_IMAGE:-engram:latest}
health_timeout_seconds=90
bench_seconds=3
step_timeout_seconds=60
data_nodes=(node1 node2 node3)

# Compose v1 reads the seccomp profile relative to the working directory, not to the
# compose file.
cd "$docker_dir"
if docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
else
    compose=(docker-compose)
fi
compose+=(--project-name "$project" --file "$docker_dir/compose.yaml")
export ENGRAM_IMAGE=$image

fail() {
    echo "docker/test.sh: FAILED: $*" >&2
    exit 1
}

tear_down() {
    local status=$?
    if [[ $status -ne 0 ]]; then
        echo "--- container logs (last 40 lines each) ---" >&2
        timeout "$step_timeout_seconds" "${compose[@]}" logs --no-color --tail 40 >&2 || true
    fi
    timeout "$step_timeout_seconds" "${compose[@]}" down --volumes --timeout 5 >/dev/null 2>&1 || true
    exit "$status"
}

if [[ -z "${ENGRAM_SKIP_BUILD:-}" ]]; then
    "$docker_dir/build.sh" "$image"
fi

trap tear_down EXIT
timeout "$step_timeout_seconds" "${compose[@]}" up --detach || fail "compose up"

echo "waiting up to ${health_timeout_seconds}s for ${data_nodes[*]} to be healthy"
deadline=$((SECONDS + health_timeout_seconds))
for node in "${data_nodes[@]}"; do
    container=$("${compose[@]}" ps --quiet "$node")
    [[ -n "$container" ]] || fail "$node has no container"
    while true; do
        state=$(docker inspect --format '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}' "$container")
        [[ "$state" == "running healthy" ]] && break
        [[ "$state" == exited* || "$state" == dead* ]] && fail "$node stopped ($state)"
        ((SECONDS < deadline)) || fail "$node not healthy within ${health_timeout_seconds}s ($state)"
        sleep 1
    done
    echo "$node healthy"
done

echo "engram-bench: ${bench_seconds}s of gets and sets against node1"
timeout $((bench_seconds + step_timeout_seconds)) "${compose[@]}" exec -T node1 \
    /usr/local/bin/engram-bench --target engram://127.0.0.1:7400 --duration "$bench_seconds" \
    --connections 8 --keys 10000 --prefill ||
    fail "engram-bench against node1"

echo "engram cluster status"
timeout "$step_timeout_seconds" "${compose[@]}" exec -T node1 \
    /usr/local/bin/engram cluster status --control 172.28.0.10:7300 ||
    fail "engram cluster status (the cluster commands must exist in this build)"

echo "docker/test.sh: passed"
