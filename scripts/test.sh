#!/usr/bin/env bash
# Runs Engram's whole test suite from a fresh clone, installing what it needs.
# Usage: scripts/test.sh            (CI runs exactly this through .ci/run)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

say() { printf '\n==> %s\n' "$*"; }

install_prerequisites() {
    if ! command -v cargo >/dev/null; then
        echo "cargo is required (https://rustup.rs)" >&2
        exit 1
    fi
    if ! cargo nextest --version >/dev/null 2>&1; then
        say "installing cargo-nextest"
        cargo install --locked cargo-nextest
    fi
    if ! rustup component list --installed 2>/dev/null | grep -q '^clippy'; then
        rustup component add clippy rustfmt
    fi
    # The vendor check unpacks the published glommio crate and applies our patch.
    local tool
    for tool in patch curl; do
        ensure_command "$tool" "$tool" "scripts/check-vendor.sh needs it"
    done
    ensure_protoc
    # The control plane's etcd tests run the real etcd (tests/src/etcd.rs).
    ensure_command etcd etcd-server "the etcd tests of the control plane run the real etcd"
    # A failover test cuts a node off from the control plane (tests/src/firewall.rs).
    ensure_command iptables iptables "a failover test cuts a node off from the control plane with iptables"
    # The Redis-door tests speak to engramd with redis-cli, redis-benchmark and redis-py.
    ensure_command redis-cli redis-tools "the Redis-door tests run redis-cli and redis-benchmark"
    ENGRAM_PYTHON=$(ensure_python_env)
    export ENGRAM_PYTHON
    local uring_ok=0
    if [ -r /proc/sys/kernel/io_uring_disabled ] && [ "$(cat /proc/sys/kernel/io_uring_disabled)" != "0" ]; then
        uring_ok=1
    fi
    if [ "$uring_ok" != 0 ]; then
        echo "io_uring is disabled on this kernel (kernel.io_uring_disabled); engramd cannot run" >&2
        exit 1
    fi
}

install_prerequisites

# Before anything is built from it: the vendored glommio must be the published crate plus
# the patch that describes our changes (vendor/README.md).
say "vendor/glommio is glommio 0.9.0 plus vendor/glommio-engram.patch"
scripts/check-vendor.sh

say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

say "build binaries (integration tests start the real engramd and engram)"
cargo build --workspace --bins --locked

say "tests"
cargo nextest run --workspace --locked --no-fail-fast
# Doc tests are not run by nextest.
cargo test --workspace --doc --locked

# The container cluster end to end (docker/README.md). It packages the debug binaries
# built above, so the suite pays for no release build; the published image is built
# from release binaries (docker/build.sh without ENGRAM_PROFILE).
if timeout 30 docker info >/dev/null 2>&1; then
    say "containers: docker/test.sh (image engram:test of the debug binaries)"
    ENGRAM_PROFILE=debug ENGRAM_SKIP_CARGO=1 ENGRAM_IMAGE=engram:test timeout 600 docker/test.sh
else
    say "containers: SKIPPED docker/test.sh: no Docker engine is reachable ('docker info' failed or docker is not installed)"
fi
