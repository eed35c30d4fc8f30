#!/usr/bin/env bash
# The whole comparison on a machine with an NVIDIA GPU, from a checkout that carries a built
# target/release/pepnet and the Vulkan loader packages in .gl/ (see bench/README.md):
#
#   bash bench/gpu_run.sh OUT_DIR [BATCH_SIZES]
#
# Records the GPU and driver, runs bench/run_comparison.sh on tiny, paper and paper_mmoe in a
# scratch directory (models and inputs are large): pepnet at f32 and f16 (tensor cores) beside
# PyTorch eager and torch.compile at fp32 and bf16, then training: `pepnet train-bench` on the
# paper preset and the example's spec at f32 and f16, and one epoch of 100 000 generated rows by
# `pepnet train` (f32 and f16) and by bench/torch_train.py on the same GPU. Leaves in OUT_DIR only machine.txt and
# results.tar.gz (each preset's reports, parity check and table; train/), printing the tables.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="$1"; sizes="${2:-1,64,1024,16384,65536}"
mkdir -p "$out"
work="$(mktemp -d)"
if ! ldconfig -p | grep 'libvulkan\.so\.1' >/dev/null && ls "$here"/../.gl/*.deb >/dev/null 2>&1; then
    for f in "$here"/../.gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
for icd in /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json /usr/share/vulkan/icd.d/nvidia_icd.json; do
    if [ -f "$icd" ]; then export VK_DRIVER_FILES="$icd"; break; fi
done
export PEPNET_ADAPTER="${PEPNET_ADAPTER:-NVIDIA}"
{
    date -u +%FT%TZ
    git -C "$here/.." rev-parse HEAD 2>/dev/null || echo "commit unknown"
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv || echo "nvidia-smi: not available"
    "$here/../target/release/pepnet" info
} | tee "$out/machine.txt"
for preset in tiny paper paper_mmoe; do
    bash "$here/run_comparison.sh" "$preset" "$work/$preset" "$sizes"
    mkdir -p "$work/results/$preset"
    cp "$work/$preset"/{*.json,*.txt,*.md} "$work/results/$preset/"
done
# Training: pepnet's kernels and PyTorch on the same GPU, same data, initialisation and optimizers.
pepnet="$here/../target/release/pepnet"
spec="$here/../examples/kuairand/model.json"
mkdir -p "$work/results/train"
for p in f32 f16; do
    "$pepnet" train-bench --preset paper --batch-size 1024 --steps 20 --precision $p \
        --json "$work/results/train/train-bench-paper-$p.json" | tee "$work/results/train/train-bench-paper-$p.txt"
    "$pepnet" train-bench --model "$spec" --batch-size 1024 --steps 50 --precision $p \
        --json "$work/results/train/train-bench-kuairand-$p.json" | tee "$work/results/train/train-bench-kuairand-$p.txt"
done
"$pepnet" gen-data --model "$spec" --rows 100000 --output "$work/train.csv" --world 0 --seed 1
for p in f32 f16; do
    "$pepnet" train --model "$spec" --train "$work/train.csv" --out "$work/trained-pepnet-$p" --epochs 1 \
        --precision $p 2>&1 | tee "$work/results/train/pepnet-train-$p.txt"
done
python3 "$here/torch_train.py" --spec "$spec" --train "$work/train.csv" --out "$work/trained-torch" \
    --epochs 1 2>&1 | tee "$work/results/train/torch-train.txt" || echo "torch_train.py failed"
tar -C "$work/results" -czf "$out/results.tar.gz" .
for preset in tiny paper paper_mmoe; do
    echo "== $preset"; cat "$work/results/$preset/table.md"
done
rm -rf "$work"
