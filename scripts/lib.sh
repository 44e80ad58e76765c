# Shared by the scripts: sourced, not run.

# The directory cargo builds into: CARGO_TARGET_DIR, a build.target-dir setting, or the
# workspace's target/. Asked of cargo itself, so every way of setting it is honoured.
cargo_target_dir() {
    local metadata
    metadata=$(cargo metadata --format-version 1 --no-deps --offline 2>/dev/null || cargo metadata --format-version 1 --no-deps)
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p' <<<"$metadata"
}

# Installs a Debian package when the command it provides is missing (the machines run
# as root; apt's lists are refreshed once first, since a fresh image has none).
# Usage: ensure_command COMMAND PACKAGE WHY
ensure_command() {
    local command=$1 package=$2 why=$3
    command -v "$command" >/dev/null && return 0
    printf '\n==> installing %s (%s)\n' "$package" "$why"
    if [ -z "${ENSURE_COMMAND_UPDATED:-}" ]; then
        apt-get update -qq
        ENSURE_COMMAND_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$package"
    command -v "$command" >/dev/null || { echo "$package installed, but $command is still missing" >&2; exit 1; }
}

# engram-control's etcd client (the etcd-client crate) compiles etcd's protocol files
# in its build script, which needs protoc.
ensure_protoc() {
    ensure_command protoc protobuf-compiler "building engram-control: the etcd-client crate's build script runs protoc"
}

# The etcd image docker/build.sh builds beside an Engram image: engram:test gives
# engram-etcd:test (ENGRAM_ETCD_IMAGE overrides it, in build.sh and test.sh alike).
etcd_image_of() {
    local image=$1
    if [[ -n "${ENGRAM_ETCD_IMAGE:-}" ]]; then
        echo "$ENGRAM_ETCD_IMAGE"
    elif [[ "${image##*/}" == *:* ]]; then
        echo "${image%:*}-etcd:${image##*:}"
    else
        echo "$image-etcd:latest"
    fi
}

# The Python environment of the Redis-door tests (tests/python): a virtualenv under the
# target directory with redis-py, made once. Prints the path of its python.
# Usage: ensure_python_env
ENGRAM_REDIS_PY_VERSION=5.2.1
ensure_python_env() {
    local venv
    venv="$(cargo_target_dir)/python-venv"
    if ! "$venv/bin/python" -c "import redis" 2>/dev/null; then
        printf '\n==> making %s with redis-py %s (the Redis-door tests)\n' "$venv" "$ENGRAM_REDIS_PY_VERSION" >&2
        python3 -m venv "$venv" >&2
        "$venv/bin/pip" install --quiet --disable-pip-version-check "redis==$ENGRAM_REDIS_PY_VERSION" >&2
    fi
    echo "$venv/bin/python"
}
