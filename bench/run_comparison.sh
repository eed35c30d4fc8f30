#!/usr/bin/env bash
# pepnet against the PyTorch baseline on one model, same inputs, same batch sizes, one table.
#
#   bench/run_comparison.sh PRESET|MODEL_DIR OUT_DIR [BATCH_SIZES]
#
# PRESET is tiny, paper or paper_mmoe (a model is initialised with seed 1). Needs a built
# `pepnet` (target/release/pepnet, or $PEPNET) and python3 with torch and safetensors.
# Writes OUT_DIR/{pepnet.json, pepnet-f16.json, torch-*.json, parity.txt, parity-f16.txt,
# table.md}: pepnet at f32 and at f16 (tensor cores where the device has them).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
pepnet="${PEPNET:-$here/../target/release/pepnet}"
target="$1"; out="$2"; sizes="${3:-1,64,1024,16384,65536}"
mkdir -p "$out"
if [ -d "$target" ]; then
    model="$target"; name="$(basename "$target")"
else
    model="$out/model-$target"; name="$target"
    "$pepnet" init --spec "$here/../examples/specs/$target.json" --out "$model" --seed 1
fi
largest=$(tr ',' '\n' <<<"$sizes" | sort -n | tail -1)
rows=$(( largest * 2 > 4096 ? largest * 2 : 4096 ))
"$pepnet" gen-input --model "$model" --rows "$rows" --output "$out/input.csv" --seed 1

# Parity first: the baseline in float64 against the engine's scores on the first 1024 rows.
head -n 1025 "$out/input.csv" > "$out/parity-input.csv"
"$pepnet" score --model "$model" --input "$out/parity-input.csv" --output "$out/parity-scores.csv"
python3 "$here/torch_pepnet.py" check --model "$model" --input "$out/parity-input.csv" \
    --scores "$out/parity-scores.csv" | tee "$out/parity.txt"
# f16 against the same float64 baseline, within the f16 tolerance of the test suite.
"$pepnet" score --model "$model" --input "$out/parity-input.csv" --output "$out/parity-scores-f16.csv" \
    --precision f16
python3 "$here/torch_pepnet.py" check --model "$model" --input "$out/parity-input.csv" \
    --scores "$out/parity-scores-f16.csv" --tolerance 2e-3 | tee "$out/parity-f16.txt"

"$pepnet" bench --model "$model" --input "$out/input.csv" --batch-sizes "$sizes" --json "$out/pepnet.json" \
    | tee "$out/pepnet.txt"
"$pepnet" bench --model "$model" --input "$out/input.csv" --batch-sizes "$sizes" --precision f16 \
    --json "$out/pepnet-f16.json" | tee "$out/pepnet-f16.txt"
python3 "$here/torch_pepnet.py" bench --model "$model" --name "$name" --input "$out/input.csv" \
    --batch-sizes "$sizes" --out "$out"
python3 "$here/compare.py" "$out" --markdown | tee "$out/table.md"
