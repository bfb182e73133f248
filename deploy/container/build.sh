#!/usr/bin/env bash
# Builds ward's container image without a daemon: a statically linked ward (glibc,
# `-C target-feature=+crt-static`, the `container` cargo profile: release with thin LTO), staged
# alone in a build context, then `buildah bud` with deploy/container/Containerfile, then
# `ward --version` run inside the image to prove it starts with nothing but itself.
#
#   deploy/container/build.sh [IMAGE]          # default IMAGE: localhost/ward:dev
#
# Environment: WARD_TARGET_DIR (cargo's target dir for this build; default target/static, apart
# from the everyday one so a build running inside `cargo test` takes no lock it holds),
# BUILDAH_STORAGE_DRIVER (default vfs) and BUILDAH_ISOLATION (default chroot): what works in an
# unprivileged CI container with no daemon.
set -euo pipefail
cd "$(dirname "$0")/../.."

image="${1:-localhost/ward:dev}"
target="$(rustc -vV | sed -n 's/^host: //p')"
target_dir="${WARD_TARGET_DIR:-target/static}"
storage="${BUILDAH_STORAGE_DRIVER:-vfs}"
isolation="${BUILDAH_ISOLATION:-chroot}"

case "$target" in
  *-linux-gnu) ;;
  *) echo "build.sh: expected a *-linux-gnu host toolchain, got $target" >&2; exit 1 ;;
esac
command -v buildah >/dev/null || { echo "build.sh: buildah is missing (apt-get install buildah)" >&2; exit 1; }

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

echo "== buildah bud -> $image"
buildah --storage-driver "$storage" bud --isolation "$isolation" \
  -f deploy/container/Containerfile -t "$image" "$context"

echo "== ward --version inside $image"
ctr="$(buildah --storage-driver "$storage" from "$image")"
user="$(buildah --storage-driver "$storage" inspect --format '{{.OCIv1.Config.User}}' "$image")"
[ "$user" = "1337:1337" ] || { echo "build.sh: the image runs as '$user', not 1337:1337" >&2; exit 1; }
buildah --storage-driver "$storage" run --isolation "$isolation" "$ctr" -- /ward --version
