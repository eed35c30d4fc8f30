#!/usr/bin/env bash
# The online loop's throughput: a local 3-node Redis Cluster on loopback ports (started here,
# stopped on exit), a drifting stream of ROWS impressions pushed into it by `pepnet stream-push`,
# then `pepnet train-stream` over it with the hashed example model, publishing to the store and a
# repository every PUBLISH steps. Prints the trainer's summary (samples/s and the host's shares)
# and writes its --json report and metrics file into OUT.
#
#   bash bench/train_stream.sh [OUT]   (env: ROWS=40000 BATCH=1024 PUBLISH=10 WORKING_SET=16384
#                                       PEPNET=binary)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench-train-stream}
ROWS=${ROWS:-40000}
BATCH=${BATCH:-1024}
PUBLISH=${PUBLISH:-10}
PEPNET=${PEPNET:-target/release/pepnet}
[ -x "$PEPNET" ] || cargo build --release --bin pepnet
mkdir -p "$OUT"
WORK=$(mktemp -d)
PIDS=()
stop() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap stop EXIT

PORTS=()
for i in 0 1 2; do
    port=$((30000 + RANDOM % 20000))
    mkdir -p "$WORK/n$i"
    redis-server --port "$port" --bind 127.0.0.1 --cluster-enabled yes --cluster-config-file \
        "$WORK/n$i/nodes.conf" --dir "$WORK/n$i" --save '' --appendonly no --daemonize no \
        >"$WORK/n$i/log" 2>&1 &
    PIDS+=($!)
    PORTS+=("$port")
done
for port in "${PORTS[@]}"; do
    for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
done
redis-cli --cluster create $(printf "127.0.0.1:%s " "${PORTS[@]}") --cluster-yes >/dev/null
for _ in $(seq 200); do
    redis-cli -p "${PORTS[0]}" cluster info | grep -q 'cluster_state:ok' && break
    sleep 0.05
done
URL="redis://127.0.0.1:${PORTS[0]}"

# The example's spec with raw (hashed) user, video and author ids.
python3 - "$WORK/hashed.json" <<'EOF'
import json, sys
spec = json.load(open("examples/kuairand/model.json"))
for f in spec["features"]:
    if f["name"] in ("user_id", "video_id", "author_id"):
        f["hashed"] = True
        f.pop("vocab", None)
json.dump(spec, open(sys.argv[1], "w"))
EOF
"$PEPNET" gen-data --model "$WORK/hashed.json" --rows "$ROWS" --drift $((ROWS / 2)) --seed 1 \
    --output "$WORK/stream.csv"
"$PEPNET" stream-push --model "$WORK/hashed.json" --input "$WORK/stream.csv" --redis "$URL" \
    --stream impressions 2>&1 | tee "$OUT/push.txt"
"$PEPNET" train-stream --model "$WORK/hashed.json" --redis "$URL" --stream impressions \
    --checkpoints "$WORK/checkpoints" --publish-every "$PUBLISH" --batch-size "$BATCH" \
    --window $((BATCH * 10)) --repository "$WORK/repository/pepnet" --store "$URL" \
    --store-namespace online --stop-when-idle-secs 2 --metrics-file "$OUT/metrics.prom" \
    --working-set "${WORKING_SET:-16384}" \
    --json "$OUT/report.json" 2>&1 | tee "$OUT/train.txt"
