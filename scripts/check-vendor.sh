#!/usr/bin/env bash
# Checks that vendor/glommio is exactly the glommio crate published on crates.io plus
# vendor/glommio-engram.patch, so that the patch describes what we build and ship.
#
# Usage: scripts/check-vendor.sh                 check (exit 1 naming the files that differ)
#        scripts/check-vendor.sh --write-patch   rewrite the patch from the vendored tree
#
# The pristine crate is taken, checked against the crates.io checksum pinned below, from
# ENGRAM_GLOMMIO_CRATE (a .crate file), cargo's registry cache, this script's cache in the
# target directory, or else downloaded from crates.io as cargo would and kept in that
# cache, so that later runs work offline. ENGRAM_VENDOR_TREE checks another tree than
# vendor/glommio (used to show that the check catches a change).
#
# Nothing is excluded from the comparison: the vendored tree holds every file of the
# crate as published, including the packaging's Cargo.toml.orig and .cargo_vcs_info.json,
# and nothing else (not even the .cargo-ok marker cargo leaves when it unpacks a crate).
# The owner's execute bit is compared too; other permission bits depend on the umask.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

readonly CRATE=glommio
readonly VERSION=0.9.0
# The "cksum" of glommio 0.9.0 in the crates.io index (index.crates.io/gl/om/glommio).
readonly CRATE_SHA256=e1f8bc1fce949d18098dc0a4e861314e40351a0144ebf61e59bdb5254a2273b2
readonly DOWNLOAD_URL="https://static.crates.io/crates/$CRATE/$CRATE-$VERSION.crate"
readonly DOWNLOAD_TIMEOUT_SECONDS=120
readonly PATCH=vendor/glommio-engram.patch
readonly TREE=${ENGRAM_VENDOR_TREE:-vendor/glommio}

fail() {
    echo "check-vendor: $*" >&2
    exit 1
}

sha256_of() {
    if command -v sha256sum >/dev/null; then
        sha256sum "$1" | cut -d' ' -f1
    else
        shasum -a 256 "$1" | cut -d' ' -f1
    fi
}

# Prints the path of a copy of the crate whose checksum is the pinned one.
pristine_crate() {
    local cache_dir=$1 candidate
    if [ -n "${ENGRAM_GLOMMIO_CRATE:-}" ]; then
        [ "$(sha256_of "$ENGRAM_GLOMMIO_CRATE")" = "$CRATE_SHA256" ] ||
            fail "ENGRAM_GLOMMIO_CRATE=$ENGRAM_GLOMMIO_CRATE is not $CRATE $VERSION (its sha256 is not $CRATE_SHA256)"
        echo "$ENGRAM_GLOMMIO_CRATE"
        return
    fi
    for candidate in "$cache_dir/$CRATE-$VERSION.crate" \
        "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/"$CRATE-$VERSION.crate"; do
        if [ -f "$candidate" ] && [ "$(sha256_of "$candidate")" = "$CRATE_SHA256" ]; then
            echo "$candidate"
            return
        fi
    done
    command -v curl >/dev/null || fail "curl is needed to download $DOWNLOAD_URL (or set ENGRAM_GLOMMIO_CRATE)"
    mkdir -p "$cache_dir"
    local download="$cache_dir/$CRATE-$VERSION.crate.part"
    curl --silent --show-error --fail --location --retry 3 --max-time "$DOWNLOAD_TIMEOUT_SECONDS" \
        --output "$download" "$DOWNLOAD_URL" || fail "could not download $DOWNLOAD_URL"
    local actual
    actual=$(sha256_of "$download")
    if [ "$actual" != "$CRATE_SHA256" ]; then
        rm -f "$download"
        fail "$DOWNLOAD_URL has sha256 $actual, not the pinned $CRATE_SHA256"
    fi
    mv "$download" "$cache_dir/$CRATE-$VERSION.crate"
    echo "$cache_dir/$CRATE-$VERSION.crate"
}

# Lists the files under $1 whose owner may execute them, one relative path a line.
executables() {
    (cd "$1" && find . -type f -perm -u+x | LC_ALL=C sort)
}

compare() {
    local expected=$1 differences
    if ! differences=$(LC_ALL=C diff -r --brief "$expected" "$TREE"); then
        echo "check-vendor: $TREE is not $CRATE $VERSION plus $PATCH:" >&2
        sed -e "s|$expected/|<crate+patch>/|g; s|$expected:|<crate+patch>:|g" <<<"$differences" >&2
        echo "(vendor/README.md says how to regenerate the patch)" >&2
        exit 1
    fi
    if ! differences=$(diff <(executables "$expected") <(executables "$TREE")); then
        echo "check-vendor: execute permissions in $TREE differ from $CRATE $VERSION plus $PATCH" >&2
        echo "(< the crate's executables, > the tree's):" >&2
        echo "$differences" >&2
        exit 1
    fi
}

write_patch() {
    local pristine=$1 scratch=$2 status=0
    cp -r "$pristine" "$scratch/a"
    cp -r "$TREE" "$scratch/b"
    # diff exits with 1 when the trees differ, which is the point here.
    (cd "$scratch" && LC_ALL=C diff -ruN a b >diff.out) || status=$?
    [ "$status" = 1 ] || fail "diff of the crate and $TREE failed (exit $status)"
    # Without timestamps, the patch changes only when the tree does.
    sed -E 's/^((---|\+\+\+) [^\t]*)\t.*/\1/' "$scratch/diff.out" >"$PATCH"
    echo "check-vendor: wrote $PATCH from $TREE"
}

main() {
    case "${1:-}" in
    "" | --write-patch) ;;
    *) fail "unknown argument $1 (usage: scripts/check-vendor.sh [--write-patch])" ;;
    esac
    [ -d "$TREE" ] || fail "$TREE is not a directory"
    command -v patch >/dev/null || fail "GNU patch is needed (apt-get install patch)"
    local cache_dir crate work target
    target=$(cargo_target_dir || true)
    cache_dir="${target:-target}/vendor-check"
    crate=$(pristine_crate "$cache_dir")
    work=$(mktemp -d)
    # Expanded now: the trap runs after `work` has gone out of scope.
    # shellcheck disable=SC2064
    trap "rm -rf '$work'" EXIT
    mkdir "$work/crate"
    tar -xzf "$crate" -C "$work/crate" --no-same-owner
    local expected="$work/crate/$CRATE-$VERSION"
    [ -d "$expected" ] || fail "$crate does not unpack to $CRATE-$VERSION/"
    if [ "${1:-}" = --write-patch ]; then
        write_patch "$expected" "$work"
    fi
    patch --quiet --batch --forward --fuzz=0 --no-backup-if-mismatch -p1 -d "$expected" <"$PATCH" >&2 ||
        fail "$PATCH does not apply cleanly to $CRATE $VERSION"
    compare "$expected"
    echo "check-vendor: $TREE is $CRATE $VERSION (sha256 $CRATE_SHA256) plus $PATCH"
}

main "$@"
