#!/usr/bin/env bash
# Runs a command inside the Debian 13 root with Mesa 26's lavapipe (cooperative matrices), built
# or reused by .ci/mesa26-root.sh, with this repository mounted at the same path and as the
# working directory (binaries built here run there unchanged). Unmounts on exit. Needs root.
#
#   bash .ci/in-mesa26.sh target/release/pepnet info
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
root=$(bash .ci/mesa26-root.sh | tail -n 1)

mounts=()
cleanup() {
    for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount "${mounts[$i]}" 2>/dev/null || true; done
}
trap cleanup EXIT
bind() { mkdir -p "$2"; mount --bind "$1" "$2"; mounts+=("$2"); }
for d in proc sys dev; do bind "/$d" "$root/$d"; done
bind "$repo" "$root$repo"

chroot "$root" env -i PATH=/usr/bin:/bin HOME=/root ${PEPNET_REQUIRE_COOP:+PEPNET_REQUIRE_COOP=$PEPNET_REQUIRE_COOP} \
    sh -c 'cd "$1" && shift && exec "$@"' sh "$repo" "$@"
