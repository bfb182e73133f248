#!/usr/bin/env bash
# Builds ward's container image without a daemon: a statically linked ward (glibc,
# `-C target-feature=+crt-static`, the `container` cargo profile: release with thin LTO), staged
# alone in a build context, then `buildah bud` with deploy/container/Containerfile, then
# `ward --version` run inside the image to prove it starts with nothing but itself.
#
#   deploy/container/build.sh [IMAGE]          # default IMAGE: localhost/ward:dev
#   deploy/container/build.sh --init [IMAGE]   # the capture init image; default localhost/ward-init:dev
#
# --init builds the capture init container's image (Containerfile.init: ward plus iptables)
# with no registry: debootstrap makes a minimal Debian bookworm root file system with iptables
# from Debian's package archive (WARD_DEBIAN_MIRROR, default http://deb.debian.org/debian;
# signatures checked against debian-archive-keyring), the docs and package lists are pruned,
# buildah imports it as the base image, and `ward --version` and `iptables-restore --version`
# run inside the result. The root file system is cached in the target dir
# (debian-bookworm-iptables.tar); delete it to rebuild from the archive. Needs root (debootstrap).
#
# Environment: WARD_TARGET_DIR (cargo's target dir for this build; default target/static, apart
# from the everyday one so a build running inside `cargo test` takes no lock it holds),
# BUILDAH_STORAGE_DRIVER (default vfs) and BUILDAH_ISOLATION (default chroot): what works in an
# unprivileged CI container with no daemon.
set -euo pipefail
cd "$(dirname "$0")/../.."

init=""
if [ "${1:-}" = "--init" ]; then init=1; shift; fi
image="${1:-localhost/ward${init:+-init}:dev}"
target="$(rustc -vV | sed -n 's/^host: //p')"
target_dir="${WARD_TARGET_DIR:-target/static}"
storage="${BUILDAH_STORAGE_DRIVER:-vfs}"
isolation="${BUILDAH_ISOLATION:-chroot}"

case "$target" in
  *-linux-gnu) ;;
  *) echo "build.sh: expected a *-linux-gnu host toolchain, got $target" >&2; exit 1 ;;
esac
command -v buildah >/dev/null || { echo "build.sh: buildah is missing (apt-get install buildah)" >&2; exit 1; }
if [ -n "$init" ]; then
  command -v debootstrap >/dev/null || { echo "build.sh: debootstrap is missing (apt-get install debootstrap)" >&2; exit 1; }
  [ "$(id -u)" = 0 ] || { echo "build.sh: --init needs root (debootstrap)" >&2; exit 1; }
fi

echo "== static ward ($target, profile container)"
# --target keeps RUSTFLAGS off build scripts and proc macros, which must stay dynamic.
RUSTFLAGS="${RUSTFLAGS:-} -C target-feature=+crt-static" CARGO_TARGET_DIR="$target_dir" \
  cargo build --locked -p ward --bin ward --profile container --target "$target"
bin="$target_dir/$target/container/ward"

context="$(mktemp -d)"
ctr=""
cleanup() {
  [ -n "$ctr" ] && buildah --storage-driver "$storage" rm "$ctr" >/dev/null 2>&1 || true
  rm -rf "$context"
}
trap cleanup EXIT
install -m 0755 "$bin" "$context/ward"

bah() { buildah --storage-driver "$storage" "$@"; }

if [ -z "$init" ]; then
  echo "== buildah bud -> $image"
  bah bud --isolation "$isolation" -f deploy/container/Containerfile -t "$image" "$context"

  echo "== ward --version inside $image"
  ctr="$(bah from "$image")"
  user="$(bah inspect --format '{{.OCIv1.Config.User}}' "$image")"
  [ "$user" = "1337:1337" ] || { echo "build.sh: the image runs as '$user', not 1337:1337" >&2; exit 1; }
  bah run --isolation "$isolation" "$ctr" -- /ward --version
  exit 0
fi

base="localhost/ward-init-base:bookworm"
rootfs_tar="$target_dir/debian-bookworm-iptables.tar"
mirror="${WARD_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
if [ ! -s "$rootfs_tar" ]; then
  echo "== debootstrap bookworm (minbase + iptables) from $mirror"
  rootfs="$context/rootfs"
  debootstrap --variant=minbase --include=iptables bookworm "$rootfs" "$mirror" >"$context/debootstrap.log" 2>&1 \
    || { tail -20 "$context/debootstrap.log" >&2; echo "build.sh: debootstrap failed (log above)" >&2; exit 1; }
  # What an init container that runs one command needs none of.
  rm -rf "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
    "$rootfs"/usr/share/locale/* "$rootfs"/var/cache/apt/* "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/var/log/* "$rootfs"/tmp/*
  mkdir -p "$target_dir"
  tar --numeric-owner -C "$rootfs" -cf "$rootfs_tar.tmp" .
  mv "$rootfs_tar.tmp" "$rootfs_tar"
  rm -rf "$rootfs"
fi
echo "== $base from $rootfs_tar"
ctr="$(bah from scratch)"
bah add "$ctr" "$rootfs_tar" / >/dev/null
bah commit -q "$ctr" "$base" >/dev/null
bah rm "$ctr" >/dev/null
ctr=""

echo "== buildah bud -> $image"
bah bud --isolation "$isolation" --build-arg BASE="$base" \
  -f deploy/container/Containerfile.init -t "$image" "$context"

echo "== ward --version and iptables-restore --version inside $image"
ctr="$(bah from "$image")"
bah run --isolation "$isolation" "$ctr" -- /ward --version
bah run --isolation "$isolation" "$ctr" -- iptables-restore --version
