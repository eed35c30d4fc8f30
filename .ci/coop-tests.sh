#!/usr/bin/env bash
# Runs the tests that exercise the cooperative-matrix (tensor-core) kernels on Mesa 26's
# lavapipe, inside the Debian 13 root that .ci/mesa26-root.sh builds (or reuses). The test
# binaries are built here, then run inside the root at the same path (they have their source
# directory compiled in). PEPNET_REQUIRE_COOP=1 makes a missing cooperative-matrix kernel a
# failure rather than a quiet fall-back to the f16 SIMT one.
#
#   bash .ci/coop-tests.sh [TEST_BINARY_NAME ...] [-- TEST_FILTER ...]
# Default binaries: kernels, forward_f16. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"

names=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do names+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
[ ${#names[@]} -gt 0 ] || names=(kernels forward_f16)

root=$(bash .ci/mesa26-root.sh | tail -n 1)

# The test executables, built for release as `cargo test --release` builds them.
executables=$(cargo test --release --no-run --message-format=json 2>/dev/null \
    | python3 -c '
import json, sys
wanted = set(sys.argv[1:])
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") \
            and m["target"]["name"] in wanted and "test" in m["target"]["kind"]:
        print(m["executable"])
' "${names[@]}")
[ -n "$executables" ] || { echo "no test executables named ${names[*]}" >&2; exit 1; }

mounts=()
cleanup() {
    for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do umount "${mounts[$i]}" 2>/dev/null || true; done
}
trap cleanup EXIT
bind() { mkdir -p "$2"; mount --bind "$1" "$2"; mounts+=("$2"); }
for d in proc sys dev; do bind "/$d" "$root/$d"; done
bind "$repo" "$root$repo"

status=0
for exe in $executables; do
    echo "== $(basename "$exe") on Mesa 26 lavapipe (cooperative matrices)"
    chroot "$root" env -i PATH=/usr/bin:/bin HOME=/root PEPNET_REQUIRE_COOP=1 \
        sh -c 'cd "$1" && shift && exec "$@"' sh "$repo" "$exe" "$@" || status=1
done
exit $status
