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
#                                              skip a release build)
#   ENGRAM_SKIP_CARGO=1                        use target/<profile> as it is
# The binaries in the image are stripped of debug info; it is kept beside them, in
# <target>/docker-debug/<binary>.debug, for a debugger or a profiler to load.
# <target> is cargo's target directory (CARGO_TARGET_DIR is honoured).
set -euo pipefail

repository_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$repository_root/scripts/lib.sh"
target_dir=$(cd "$repository_root" && cargo_target_dir)
[[ -n "$target_dir" ]] || { echo "docker/build.sh: cargo did not name its target directory" >&2; exit 1; }
image_tag=${1:-engram:latest}
binaries=${ENGRAM_IMAGE_BINARIES:-"engramd engram-control engram engram-bench"}
profile=${ENGRAM_PROFILE:-release}
case "$profile" in
    release) cargo_profile_arguments=(--release) ;;
    debug) cargo_profile_arguments=() ;;
    *) echo "docker/build.sh: ENGRAM_PROFILE must be release or debug, not '$profile'" >&2; exit 2 ;;
esac
context="$target_dir/docker-context"
debug_dir="$target_dir/docker-debug"

package_of() {
    case "$1" in
        engramd) echo engram-server ;;
        engram-control) echo engram-control ;;
        engram | engram-bench) echo engram-tools ;;
        *) echo "docker/build.sh: unknown binary $1" >&2; exit 2 ;;
    esac
}

if [[ -z "${ENGRAM_SKIP_CARGO:-}" ]]; then
    # engram-control's etcd client needs protoc to build.
    [[ " $binaries " == *" engram-control "* ]] && ensure_protoc
    cargo_arguments=()
    for binary in $binaries; do
        cargo_arguments+=(-p "$(package_of "$binary")" --bin "$binary")
    done
    (cd "$repository_root" && cargo build "${cargo_profile_arguments[@]}" --locked "${cargo_arguments[@]}")
fi

rm -rf "$context"
mkdir -p "$context/rootfs/usr/local/bin" "$context/rootfs/etc" "$context/data" "$debug_dir"
for binary in $binaries; do
    source_path="$target_dir/$profile/$binary"
    [[ -x "$source_path" ]] || { echo "docker/build.sh: $source_path is missing (build it, or unset ENGRAM_SKIP_CARGO)" >&2; exit 1; }
    shipped="$context/rootfs/usr/local/bin/$binary"
    cp "$source_path" "$shipped"
    # Debug info is most of a binary's size (release builds keep line tables for
    # profiling) and the code is the same without it: the image ships the code, and
    # the debug info stays beside it, linked by name, for whoever needs it.
    if command -v objcopy >/dev/null; then
        objcopy --only-keep-debug "$shipped" "$debug_dir/$binary.debug"
        objcopy --strip-debug --add-gnu-debuglink="$debug_dir/$binary.debug" "$shipped"
    else
        echo "docker/build.sh: objcopy (binutils) not found; $binary ships with its debug info" >&2
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
size=$(docker image inspect --format '{{.Size}}' "$image_tag")
echo "docker/build.sh: built $image_tag ($profile binaries: $binaries; $((size / 1024 / 1024)) MiB; debug info in $debug_dir)"
