#!/usr/bin/env bash
# The Open Inference Protocol's real clients against `pepnet serve`: tritonclient (HTTP, gRPC),
# the KServe SDK and perf_analyzer (tests/clients/check_clients.py), in a virtual environment
# made once in .venv and reused (remade when requirements.txt changes).
#
#   bash tests/clients/run.sh [--perf-seconds 30]
#
# It needs target/release/pepnet (the README's test command builds it).
set -euo pipefail
cd "$(dirname "$0")/../.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# perf_analyzer links libb64.
if ! /sbin/ldconfig -p | grep 'libb64\.so\.0d' >/dev/null; then
    echo "clients: installing libb64-0d (perf_analyzer needs it)" >&2
    as_root apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q libb64-0d
fi

requirements=tests/clients/requirements.txt
stamp=.venv/.requirements
if ! [ -x .venv/bin/python ] || ! cmp -s "$requirements" "$stamp"; then
    echo "clients: installing the Python clients into .venv" >&2
    python3 -m venv .venv
    .venv/bin/pip install -q --disable-pip-version-check -r "$requirements"
    cp "$requirements" "$stamp"
fi

[ -x target/release/pepnet ] || cargo build --release --bin pepnet
exec .venv/bin/python tests/clients/check_clients.py --pepnet target/release/pepnet "$@"
