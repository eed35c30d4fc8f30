#!/usr/bin/env bash
# Does mixed-precision (f16) training lose quality? PEPNet on the example's spec trained at f32
# and at f16 on the same generated data, initialisation and shuffle (seeds 0-2, 2 epochs), each
# scored at its own precision and evaluated on a held-out set: GAUC per task over all domains,
# mean over seeds, and the f16 − f32 difference.
#
#   bash bench/f16_quality.sh OUT_DIR [ROWS] [SEEDS]
#
# Run it where f16 should run on tensor cores: on an NVIDIA GPU, or on Mesa 26's lavapipe
# (`bash .ci/in-mesa26.sh bash bench/f16_quality.sh OUT_DIR`).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
pepnet="${PEPNET:-$here/../target/release/pepnet}"
out="$1"; rows="${2:-100000}"; seeds="${3:-0 1 2}"
spec="$here/../examples/kuairand/model.json"
mkdir -p "$out"
[ -f "$out/machine.txt" ] || "$pepnet" info | head -5 > "$out/machine.txt"
[ -f "$out/train.csv" ] || "$pepnet" gen-data --model "$spec" --rows "$rows" --output "$out/train.csv" --world 0 --seed 1
[ -f "$out/valid.csv" ] || "$pepnet" gen-data --model "$spec" --rows $((rows * 3 / 10)) --output "$out/valid.csv" --world 0 --seed 2
for seed in $seeds; do
    for p in f32 f16; do
        m="$out/model-$p-$seed"
        [ -f "$out/eval-$p-$seed.json" ] && continue
        "$pepnet" train --model "$spec" --train "$out/train.csv" --out "$m" --epochs 2 --seed "$seed" \
            --precision "$p" 2> "$out/train-$p-$seed.log"
        "$pepnet" score --model "$m" --input "$out/valid.csv" --output "$out/scores-$p-$seed.csv" \
            --precision "$p" --quiet 2> /dev/null
        "$pepnet" eval --model "$m" --input "$out/valid.csv" --scores "$out/scores-$p-$seed.csv" \
            --json "$out/eval-$p-$seed.json" > /dev/null
        rm -rf "$m" "$out/scores-$p-$seed.csv"
        echo "trained and evaluated $p, seed $seed"
    done
done
if ! command -v python3 >/dev/null; then
    echo "no python3 here for the summary: run this script again where there is one (finished runs are kept)"
    exit 0
fi
python3 - "$out" $seeds <<'PY' | tee "$out/table.md"
import json, sys, statistics
out, seeds = sys.argv[1], sys.argv[2:]
def gauc(p, s):
    rows = json.load(open(f"{out}/eval-{p}-{s}.json"))
    rows = rows["rows"] if isinstance(rows, dict) else rows
    return {r["task"]: r["gauc"] for r in rows if r["domain"] == "all"}
g = {p: [gauc(p, s) for s in seeds] for p in ("f32", "f16")}
tasks = list(g["f32"][0])
print(f"GAUC over all domains, mean over seeds {', '.join(seeds)}")
print("| task | f32 | f16 | f16 - f32 | max per-seed abs diff |")
print("|---|---|---|---|---|")
for t in tasks:
    a = statistics.mean(x[t] for x in g["f32"]); b = statistics.mean(x[t] for x in g["f16"])
    worst = max(abs(x[t] - y[t]) for x, y in zip(g["f32"], g["f16"]))
    print(f"| {t} | {a:.4f} | {b:.4f} | {b - a:+.4f} | {worst:.4f} |")
PY
