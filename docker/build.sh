#!/usr/bin/env bash
# Builds the engram image FROM scratch: the binaries plus exactly the shared libraries
# and dynamic loader they link against, at the paths ldd reports. No base image is
# pulled, so the build needs no registry and the image holds nothing the binaries do
# not use.
#
# Usage: docker/build.sh [IMAGE_TAG]           (default engram:latest)
#   ENGRAM_IMAGE_BINARIES="engramd engram"    binaries to ship (default: all four)
#   ENGRAM_PROFILE=debug                       package target/debug instead of the
#                                              release build (the test suite does, to
#                                              skip a release build; debug info is
#                                              stripped from the copies)
#   ENGRAM_SKIP_CARGO=1                        use target/<profile> as it is
set -euo pipefail

repository_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
image_tag=${1:-engram:latest}
binaries=${ENGRAM_IMAGE_BINARIES:-"engramd engram-control engram engram-bench"}
profile=${ENGRAM_PROFILE:-release}
case "$profile" in
    release) cargo_profile_arguments=(--release) ;;
    debug) cargo_profile_arguments=() ;;
    *) echo "docker/build.sh: ENGRAM_PROFILE must be release or debug, not '$profile'" >&2; exit 2 ;;
esac
context="$repository_root/target/docker-context"

package_of() {
    case "$1" in
        engramd) echo engram-server ;;
        engram-control) echo engram-control ;;
        engram | engram-bench) echo engram-tools ;;
        *) echo "docker/build.sh: unknown binary $1" >&2; exit 2 ;;
    esac
}

if [[ -z "${ENGRAM_SKIP_CARGO:-}" ]]; then
    cargo_arguments=()
    for binary in $binaries; do
        cargo_arguments+=(-p "$(package_of "$binary")" --bin "$binary")
    done
    (cd "$repository_root" && cargo build "${cargo_profile_arguments[@]}" --locked "${cargo_arguments[@]}")
fi

rm -rf "$context"
mkdir -p "$context/rootfs/usr/local/bin" "$context/rootfs/etc" "$context/data"
for binary in $binaries; do
    source_path="$repository_root/target/$profile/$binary"
    [[ -x "$source_path" ]] || { echo "docker/build.sh: $source_path is missing (build it, or unset ENGRAM_SKIP_CARGO)" >&2; exit 1; }
    cp "$source_path" "$context/rootfs/usr/local/bin/"
    # Debug binaries carry ~4x their size in debug info, which only slows the build
    # and bloats the image; the code is the same without it.
    if [[ "$profile" == debug ]] && command -v strip >/dev/null; then
        strip --strip-debug "$context/rootfs/usr/local/bin/$binary"
    fi
    # ldd lines are "name => /path (address)" or "/path (address)" (the loader);
    # vdso has no file and is skipped. -L copies the file a symlink names, under
    # the symlink's path, which is the path the loader asks for.
    ldd "$source_path" | awk '/=> \// { print $3 } /^[[:space:]]*\// { print $1 }' | while read -r library; do
        cp -L --parents "$library" "$context/rootfs/"
    done
done
# Names for the numeric user, so tools inside and `docker top` show one.
printf 'root:x:0:0:root:/:/sbin/nologin\nengram:x:10001:10001:engram:/data:/sbin/nologin\n' > "$context/rootfs/etc/passwd"
printf 'root:x:0:\nengram:x:10001:\n' > "$context/rootfs/etc/group"
cp "$repository_root/docker/Dockerfile" "$context/Dockerfile"

docker build --tag "$image_tag" "$context"
echo "docker/build.sh: built $image_tag ($profile binaries: $binaries)"
