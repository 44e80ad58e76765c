#!/usr/bin/env bash
# Builds the images FROM scratch: Engram's (the binaries) and etcd's (Debian's etcd and
# etcdctl, for the compose cluster's control plane), each holding exactly the shared
# libraries and dynamic loader its binaries link against, at the paths ldd reports. No
# base image is pulled, so the build needs no registry and an image holds nothing its
# binaries do not use.
#
# Usage: docker/build.sh [IMAGE_TAG]           (default engram:latest; etcd's image is
#                                              named after it: engram-etcd:latest)
#   ENGRAM_IMAGE_BINARIES="engramd engram"    binaries to ship (default: all four)
#   ENGRAM_PROFILE=debug                       package target/debug instead of the
#                                              release build (the test suite does, to
#                                              skip a release build)
#   ENGRAM_SKIP_CARGO=1                        use target/<profile> as it is
#   ENGRAM_ETCD_IMAGE=TAG                      tag of the etcd image
# etcd and etcdctl come from Debian's etcd-server and etcd-client packages, installed
# when missing.
# The binaries in the image are stripped of debug info; it is kept beside them, in
# <target>/docker-debug/<binary>.debug, for a debugger or a profiler to load.
# <target> is cargo's target directory (CARGO_TARGET_DIR is honoured).
set -euo pipefail

repository_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$repository_root/scripts/lib.sh"
target_dir=$(cd "$repository_root" && cargo_target_dir)
[[ -n "$target_dir" ]] || { echo "docker/build.sh: cargo did not name its target directory" >&2; exit 1; }
image_tag=${1:-engram:latest}
etcd_image_tag=$(etcd_image_of "$image_tag")
binaries=${ENGRAM_IMAGE_BINARIES:-"engramd engram-control engram engram-bench"}
profile=${ENGRAM_PROFILE:-release}
case "$profile" in
    release) cargo_profile_arguments=(--release) ;;
    debug) cargo_profile_arguments=() ;;
    *) echo "docker/build.sh: ENGRAM_PROFILE must be release or debug, not '$profile'" >&2; exit 2 ;;
esac
context="$target_dir/docker-context"
etcd_context="$target_dir/docker-context-etcd"
debug_dir="$target_dir/docker-debug"

package_of() {
    case "$1" in
        engramd) echo engram-server ;;
        engram-control) echo engram-control ;;
        engram | engram-bench) echo engram-tools ;;
        *) echo "docker/build.sh: unknown binary $1" >&2; exit 2 ;;
    esac
}

# Copies the shared libraries and the loader BINARY links against into ROOT, at the
# paths ldd reports; a static binary needs none. ldd lines are "name => /path
# (address)" or "/path (address)" (the loader); vdso has no file and is skipped. -L
# copies the file a symlink names, under the symlink's path, which is the path the
# loader asks for.
copy_libraries() {
    local binary=$1 root=$2 libraries
    libraries=$(ldd "$binary" 2>&1) || {
        [[ "$libraries" == *"not a dynamic executable"* ]] && return 0
        echo "docker/build.sh: ldd $binary: $libraries" >&2
        exit 1
    }
    awk '/=> \// { print $3 } /^[[:space:]]*\// { print $1 }' <<<"$libraries" | while read -r library; do
        cp -L --parents "$library" "$root/"
    done
}

# Names for the numeric user, so tools inside and `docker top` show one.
write_users() {
    local root=$1 name=$2 home=$3
    printf 'root:x:0:0:root:/:/sbin/nologin\n%s:x:10001:10001:%s:%s:/sbin/nologin\n' "$name" "$name" "$home" > "$root/etc/passwd"
    printf 'root:x:0:\n%s:x:10001:\n' "$name" > "$root/etc/group"
}

ensure_command etcd etcd-server "the compose cluster's etcd image"
ensure_command etcdctl etcd-client "the etcd image's health check"

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
    copy_libraries "$source_path" "$context/rootfs"
done
write_users "$context/rootfs" engram /data
cp "$repository_root/docker/Dockerfile" "$context/Dockerfile"

# etcd's image: Debian's binaries as they are (already stripped), and their data
# directory's parent, owned by the user etcd runs as.
rm -rf "$etcd_context"
mkdir -p "$etcd_context/rootfs/usr/local/bin" "$etcd_context/rootfs/etc" "$etcd_context/var/lib/etcd"
for binary in etcd etcdctl; do
    source_path=$(command -v "$binary")
    cp "$source_path" "$etcd_context/rootfs/usr/local/bin/$binary"
    copy_libraries "$source_path" "$etcd_context/rootfs"
done
write_users "$etcd_context/rootfs" etcd /var/lib/etcd
cp "$repository_root/docker/etcd.Dockerfile" "$etcd_context/Dockerfile"

docker build --tag "$image_tag" "$context"
docker build --tag "$etcd_image_tag" "$etcd_context"
size=$(docker image inspect --format '{{.Size}}' "$image_tag")
etcd_size=$(docker image inspect --format '{{.Size}}' "$etcd_image_tag")
echo "docker/build.sh: built $image_tag ($profile binaries: $binaries; $((size / 1024 / 1024)) MiB; debug info in $debug_dir)"
etcd_version=$(etcd --version | awk 'NR == 1')
echo "docker/build.sh: built $etcd_image_tag ($etcd_version; $((etcd_size / 1024 / 1024)) MiB)"
