#!/usr/bin/env python3
"""PyTorch training reference for pepnet: trains the model of docs/model.md as the paper does
(embeddings with AdaGrad, dense layers with Adam, Xavier initialisation from `pepnet init`, the
sum over tasks of binary cross-entropy, stop-gradients into the gates' inputs) and writes a model
directory that `pepnet score` serves.

    python3 bench/torch_train.py --spec SPEC.json --train TRAIN.csv --out MODEL_DIR [--epochs 2]

TRAIN.csv is pepnet input (one column per feature) plus one 0/1 label column per task, named by
the task (`pepnet gen-data` and `pepnet kuairand` write such files).
"""

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_pepnet import PEPNet, read_inputs, to_tensors  # noqa: E402


def pepnet_binary():
    here = os.path.dirname(os.path.abspath(__file__))
    return os.environ.get("PEPNET", os.path.join(here, "..", "target", "release", "pepnet"))


def read_labels(spec, path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return torch.tensor([[float(r[t]) for t in spec["tasks"]] for r in rows], dtype=torch.float32)


def export(model, spec):
    """The trained parameters under the tensor names of docs/model.md."""
    out = {f"emb.{name}": p.detach().cpu().contiguous() for name, p in model.emb.items()}

    def linear(prefix, layer):
        out[f"{prefix}.weight"] = layer.weight.detach().cpu().contiguous()
        out[f"{prefix}.bias"] = layer.bias.detach().cpu().contiguous()

    if model.epnet is not None:
        linear("epnet.fc1", model.epnet.fc1)
        linear("epnet.fc2", model.epnet.fc2)
    if model.ppnet is not None:
        for l, gate in enumerate(model.ppnet):
            linear(f"ppnet.{l}.fc1", gate.fc1)
            linear(f"ppnet.{l}.fc2", gate.fc2)
    if model.experts is not None:
        for k, expert in enumerate(model.experts):
            for j, layer in enumerate(expert):
                linear(f"expert.{k}.{j}", layer)
        for task, gate in zip(spec["tasks"], model.mmoe_gates):
            linear(f"mmoe_gate.{task}", gate)
    for task, tower in zip(spec["tasks"], model.towers):
        for l, layer in enumerate(tower):
            linear(f"tower.{task}.{l}", layer)
    return out


def reference_init(model):
    """Redraws every parameter as PyTorch PEPNet implementations do, from torch's seeded RNG."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("emb."):
                torch.nn.init.normal_(p, 0.0, 0.05)
            elif name.endswith(".weight"):
                torch.nn.init.xavier_uniform_(p)
            else:
                torch.nn.init.zeros_(p)


def take(inputs, index):
    return [tuple(t[index] for t in x) if isinstance(x, tuple) else x[index] for x in inputs]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", required=True)
    ap.add_argument("--train", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--lr-embedding", type=float, default=0.05, help="AdaGrad, as the paper")
    ap.add_argument("--lr-dense", type=float, default=1e-3, help="Adam")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default=None, help="cuda or cpu [default: cuda when present]")
    ap.add_argument("--init", choices=["pepnet", "torch"], default="pepnet",
                    help="pepnet: the weights of `pepnet init --seed SEED` (the same start as pepnet's "
                         "trainer); torch: drawn here by torch's own RNG the way the PyTorch reference "
                         "implementations do (rows N(0, 0.05^2), Xavier-uniform weights, zero biases)")
    args = ap.parse_args()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")

    torch.manual_seed(args.seed)
    with open(args.spec) as f:
        spec = json.load(f)
    with tempfile.TemporaryDirectory() as init_dir:
        subprocess.run([pepnet_binary(), "init", "--spec", args.spec, "--out", init_dir, "--seed", str(args.seed)],
                       check=True, stderr=subprocess.DEVNULL)
        weights = load_file(os.path.join(init_dir, "weights.safetensors"))
    model = PEPNet(spec)
    model.load(weights)
    if args.init == "torch":
        reference_init(model)
    model.to(device)
    model.train()

    columns, n = read_inputs(spec, args.train)
    inputs = to_tensors(spec, columns, 0, n, torch.float32, device)
    labels = read_labels(spec, args.train).to(device)
    embeddings = list(model.emb.parameters())
    emb_ids = {id(p) for p in embeddings}
    dense = [p for p in model.parameters() if id(p) not in emb_ids]
    opt_emb = torch.optim.Adagrad(embeddings, lr=args.lr_embedding)
    opt_dense = torch.optim.Adam(dense, lr=args.lr_dense)
    start = time.perf_counter()
    for epoch in range(args.epochs):
        order = torch.randperm(n, device=device)
        total = torch.zeros((), dtype=torch.float64, device=device)
        for lo in range(0, n, args.batch_size):
            index = order[lo:lo + args.batch_size]
            p = model(take(inputs, index)).clamp(1e-7, 1 - 1e-7)
            loss = F.binary_cross_entropy(p, labels[index], reduction="none").sum(1).mean()
            opt_emb.zero_grad()
            opt_dense.zero_grad()
            loss.backward()
            opt_emb.step()
            opt_dense.step()
            # Summed on the device: reading it back every step would wait for the GPU.
            total += loss.detach() * len(index)
        print(f"epoch {epoch + 1}: loss {total.item() / n:.4f}", file=sys.stderr)
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    print(f"trained {n} rows x {args.epochs} epochs in {seconds:.1f} s "
          f"({n * args.epochs / seconds:.0f} samples/s, torch {torch.__version__} on {device})", file=sys.stderr)

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "model.json"), "w") as f:
        json.dump(spec, f, indent=2)
    save_file(export(model, spec), os.path.join(args.out, "weights.safetensors"))


if __name__ == "__main__":
    main()
