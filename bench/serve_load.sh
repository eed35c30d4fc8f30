#!/usr/bin/env bash
# pepnet serve under load, batching on and off, closed loop at 1, 8 and 64 clients: throughput
# and latency percentiles from `pepnet loadgen`, over loopback.
#
#   bench/serve_load.sh [MODEL_DIR] [REQUESTS] [ROWS] > table.md
#
# Each run is bounded (REQUESTS requests, at most 120 s). On lavapipe the figures are for
# ratios only (batching against none); absolute numbers need a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-examples/kuairand}
requests=${2:-400}
rows=${3:-20}
port=${PORT:-18123}
pepnet=target/release/pepnet
[ -x "$pepnet" ] || cargo build --release >&2

echo "| batching | clients | requests/s | rows/s | p50 ms | p99 ms | p99.9 ms | failed |"
echo "|---|---|---|---|---|---|---|---|"
for batching in on off; do
    flags=(); [ "$batching" = off ] && flags=(--no-batching)
    "$pepnet" serve --model "$model" --http "127.0.0.1:$port" --max-delay-ms 2 --timeout-ms 60000 "${flags[@]}" 2>/dev/null &
    server=$!
    trap 'kill $server 2>/dev/null || true' EXIT
    for _ in $(seq 100); do
        curl -sf "http://127.0.0.1:$port/v2/health/ready" >/dev/null 2>&1 && break
        sleep 0.1
    done
    for clients in 1 8 64; do
        "$pepnet" loadgen --http "127.0.0.1:$port" --model "$model" --requests "$requests" \
            --rows "$rows" --concurrency "$clients" --max-seconds 120 --json /tmp/pepnet-load.json >/dev/null
        python3 - "$batching" "$clients" <<'PY'
import json, sys
r = json.load(open("/tmp/pepnet-load.json"))
print(f"| {sys.argv[1]} | {sys.argv[2]} | {r['requests_per_s']:.0f} | {r['rows_per_s']:.0f} | "
      f"{r['latency_ms_p50']:.1f} | {r['latency_ms_p99']:.1f} | {r['latency_ms_p999']:.1f} | "
      f"{r['failed']} |")
PY
    done
    kill -TERM $server; wait $server || true
    trap - EXIT
done
