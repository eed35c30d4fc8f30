#!/usr/bin/env bash
# Builds (once) a minimal Debian 13 root directory with Mesa 26's lavapipe, whose Vulkan driver
# offers cooperative matrices (8x8x8, f16 -> f32), so the tensor-core kernels can be tested on a
# machine without a GPU. Idempotent: a complete root (marked by .pepnet-ready) is reused as it is.
# Prints the root's path on its last line. Needs root (debootstrap, chroot).
set -euo pipefail
root="${PEPNET_MESA26_ROOT:-/var/cache/pepnet-trixie-lavapipe}"
if [ -f "$root/.pepnet-ready" ]; then echo "$root"; exit 0; fi

command -v debootstrap >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap
mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
mirror="${mirror:-http://deb.debian.org/debian}"

# A half-made root from an interrupted run is started again from nothing.
rm -rf "$root"
mkdir -p "$(dirname "$root")"
tmp="$root.partial"
rm -rf "$tmp"
debootstrap --variant=minbase trixie "$tmp" "$mirror" >&2
printf 'deb %s trixie main\ndeb %s trixie-backports main\n' "$mirror" "$mirror" >"$tmp/etc/apt/sources.list"
cleanup() { for d in dev sys proc; do umount "$tmp/$d" 2>/dev/null || true; done; }
trap cleanup EXIT
for d in proc sys dev; do mount --bind "/$d" "$tmp/$d"; done
chroot "$tmp" apt-get update -q >&2
chroot "$tmp" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q -t trixie-backports \
    mesa-vulkan-drivers libvulkan1 >&2
chroot "$tmp" apt-get clean
cleanup
trap - EXIT
touch "$tmp/.pepnet-ready"
mv "$tmp" "$root"
echo "$root"
