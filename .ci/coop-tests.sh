#!/usr/bin/env bash
# Runs the tests that exercise the cooperative-matrix (tensor-core) kernels on Mesa 26's
# lavapipe, inside the Debian 13 root (.ci/in-mesa26.sh). The test binaries are built here, then
# run inside the root at the same path (they have their source directory compiled in). PEPNET_REQUIRE_COOP=1 makes a missing cooperative-matrix kernel a
# failure rather than a quiet fall-back to the f16 SIMT one.
#
#   bash .ci/coop-tests.sh [TEST_BINARY_NAME ...] [-- TEST_FILTER ...]
# Default binaries: kernels, backward_kernels, forward_f16, train_f16. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"

names=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do names+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
[ ${#names[@]} -gt 0 ] || names=(kernels backward_kernels forward_f16 train_f16)


# The test executables, built for release as `cargo test --release` builds them (a build error
# shows here and fails the run).
cargo test --release --no-run >&2
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

status=0
for exe in $executables; do
    echo "== $(basename "$exe") on Mesa 26 lavapipe (cooperative matrices)"
    PEPNET_REQUIRE_COOP=1 bash .ci/in-mesa26.sh "$exe" "$@" || status=1
done
exit $status
