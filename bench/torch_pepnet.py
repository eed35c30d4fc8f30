#!/usr/bin/env python3
"""PyTorch baseline for pepnet: the model of docs/model.md as an nn.Module.

It loads the same model directory (model.json + weights.safetensors) and the same input CSV as
`pepnet score`, and does two jobs:

  check  score the input in float64 and compare with a `pepnet score` output CSV (max |diff|)
  bench  time eager and torch.compile, fp32 and bf16 autocast, on CUDA when present (CPU
         otherwise), over batch sizes cut from the input file, and write one JSON report per
         mode in pepnet's bench schema (docs/bench.schema.json)

    python3 bench/torch_pepnet.py check --model DIR --input IN.csv --scores SCORES.csv
    python3 bench/torch_pepnet.py bench --model DIR --input IN.csv --batch-sizes 1,64,1024 --out DIR
"""

import argparse
import csv
import json
import math
import os
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file


def load_model(model_dir):
    with open(os.path.join(model_dir, "model.json")) as f:
        spec = json.load(f)
    weights = load_file(os.path.join(model_dir, "weights.safetensors"))
    model = PEPNet(spec)
    model.load(weights)
    return spec, model


class Linear(nn.Module):
    """nn.Linear loaded from `<name>.weight` / `<name>.bias`."""

    def __init__(self, weights, name):
        super().__init__()
        self.weight = nn.Parameter(weights[name + ".weight"].float())
        self.bias = nn.Parameter(weights[name + ".bias"].float())

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


class GateNU(nn.Module):
    """γ · σ(fc2(ReLU(fc1(x))))."""

    def __init__(self, weights, prefix, gamma):
        super().__init__()
        self.fc1 = Linear(weights, prefix + ".fc1")
        self.fc2 = Linear(weights, prefix + ".fc2")
        self.gamma = gamma

    def forward(self, x):
        return self.gamma * torch.sigmoid(self.fc2(torch.relu(self.fc1(x))))


class PEPNet(nn.Module):
    def __init__(self, spec):
        super().__init__()
        self.spec = spec
        self.d = spec["embedding_dim"]
        self.gamma = spec.get("gate_gamma", 2.0)
        self.features = spec["features"]
        self.tasks = spec["tasks"]
        experts = spec.get("experts")
        w0 = experts["hidden"][-1] if experts else self.d * len(self.role("general"))
        self.in_widths = [w0] + list(spec["towers"])

    def role(self, role):
        return [f for f in self.features if role in f["roles"]]

    def load(self, weights):
        spec = self.spec
        self.emb = nn.ParameterDict(
            {f["name"]: nn.Parameter(weights["emb." + f["name"]].float()) for f in self.features}
        )
        self.epnet = GateNU(weights, "epnet", self.gamma) if spec.get("epnet") else None
        self.ppnet = (
            nn.ModuleList(GateNU(weights, f"ppnet.{l}", self.gamma) for l in range(len(self.in_widths)))
            if spec.get("ppnet")
            else None
        )
        experts = spec.get("experts")
        if experts:
            self.experts = nn.ModuleList(
                nn.ModuleList(Linear(weights, f"expert.{k}.{j}") for j in range(len(experts["hidden"])))
                for k in range(experts["count"])
            )
            self.mmoe_gates = nn.ModuleList(Linear(weights, f"mmoe_gate.{t}") for t in self.tasks)
        else:
            self.experts = None
        self.towers = nn.ModuleList(
            nn.ModuleList(Linear(weights, f"tower.{t}.{l}") for l in range(len(self.in_widths)))
            for t in self.tasks
        )

    def vector(self, f, x):
        table = self.emb[f["name"]]
        if f["kind"] == "sparse":
            return table[x]
        if f["kind"] == "dense":
            return x[:, None] * table[None, :]
        ids, count = x  # ids [B, max_len] padded with -1, count [B]
        mask = (ids >= 0).to(table.dtype)
        total = (table[ids.clamp(min=0)] * mask[..., None]).sum(1)
        if f["pooling"] == "mean":
            total = total / count.clamp(min=1).to(table.dtype)[:, None]
        return total

    def forward(self, inputs):
        """inputs: one entry per feature, in spec order. Returns [B, T] probabilities."""
        vec = {f["name"]: self.vector(f, x) for f, x in zip(self.features, inputs)}
        cat = lambda role: torch.cat([vec[f["name"]] for f in self.role(role)], dim=1)
        e = cat("general")
        # EPNet: the gate sees E through a stop-gradient.
        o_ep = self.epnet(torch.cat([cat("domain"), e.detach()], 1)) * e if self.epnet else e
        t_count = len(self.tasks)
        deltas = None
        if self.ppnet is not None:
            x = torch.cat([cat("prior"), o_ep.detach()], 1)
            deltas = [gate(x) for gate in self.ppnet]
        if self.experts is not None:
            xs = []
            for expert in self.experts:
                h = o_ep
                for layer in expert:
                    h = torch.relu(layer(h))
                xs.append(h)
            xs = torch.stack(xs, 1)  # [B, K, w]
            h0 = [(torch.softmax(g(o_ep), 1)[..., None] * xs).sum(1) for g in self.mmoe_gates]
        else:
            h0 = [o_ep] * t_count
        logits = []
        last = len(self.in_widths) - 1
        for t, tower in enumerate(self.towers):
            h = h0[t]
            for l, layer in enumerate(tower):
                if deltas is not None:
                    w = self.in_widths[l]
                    h = h * deltas[l][:, t * w : (t + 1) * w]
                h = layer(h)
                if l < last:
                    h = torch.relu(h)
            logits.append(h)
        return torch.sigmoid(torch.cat(logits, 1))


def flops_per_sample(spec, weights_shapes):
    """Multiply-adds count two, as `pepnet plan` counts them."""
    flops = sum(2 * s[0] * s[1] for n, s in weights_shapes.items()
                if n.endswith(".weight") and not n.startswith("emb."))
    experts = spec.get("experts")
    if experts:
        flops += 2 * len(spec["tasks"]) * experts["hidden"][-1] * experts["count"]
    return flops


def read_inputs(spec, path):
    """The input CSV as per-feature columns of Python values, per docs/model.md."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    columns = []
    for feat in spec["features"]:
        name = feat["name"]
        if feat["kind"] == "sparse":
            columns.append([int(r[name]) for r in rows])
        elif feat["kind"] == "dense":
            columns.append([float(r[name]) for r in rows])
        else:
            columns.append([[int(x) for x in r[name].split("|")] if r[name].strip() else [] for r in rows])
    return columns, len(rows)


def to_tensors(spec, columns, lo, hi, dtype, device):
    out = []
    for feat, col in zip(spec["features"], columns):
        part = col[lo:hi]
        if feat["kind"] == "sparse":
            out.append(torch.tensor(part, dtype=torch.long, device=device))
        elif feat["kind"] == "dense":
            out.append(torch.tensor(part, dtype=dtype, device=device))
        else:
            width = feat["max_len"]
            ids = torch.full((len(part), width), -1, dtype=torch.long)
            for i, lst in enumerate(part):
                if lst:
                    ids[i, : len(lst)] = torch.tensor(lst)
            count = torch.tensor([len(lst) for lst in part], dtype=torch.long)
            out.append((ids.to(device), count.to(device)))
    return out


def check(args):
    spec, model = load_model(args.model)
    model = model.double().eval()
    columns, n = read_inputs(spec, args.input)
    with torch.no_grad():
        probs = model(to_tensors(spec, columns, 0, n, torch.float64, "cpu"))
    with open(args.scores, newline="") as f:
        reader = csv.DictReader(f)
        theirs = [[float(r[t]) for t in spec["tasks"]] for r in reader]
    if len(theirs) != n:
        sys.exit(f"{args.scores}: {len(theirs)} rows, the input has {n}")
    diff = (probs - torch.tensor(theirs, dtype=torch.float64)).abs().max().item()
    ok = diff <= args.tolerance
    print(f"{args.model}: {n} rows x {len(spec['tasks'])} tasks, max |torch f64 - pepnet| = {diff:.3e} "
          f"({'OK' if ok else 'FAIL'}, tolerance {args.tolerance:g})")
    sys.exit(0 if ok else 1)


def percentile(values, p):
    values = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(values)))
    return values[rank - 1]


def bench(args):
    spec, model = load_model(args.model)
    device = "cuda" if torch.cuda.is_available() and not args.cpu else "cpu"
    model = model.float().eval().to(device)
    shapes = {n: tuple(p.shape) for n, p in load_file(os.path.join(args.model, "weights.safetensors")).items()}
    columns, n_rows = read_inputs(spec, args.input)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        dev = {"name": props.name, "backend": "CUDA", "device_type": "DiscreteGpu",
               "driver": f"torch {torch.__version__}, CUDA {torch.version.cuda}"}
    else:
        dev = {"name": "CPU", "backend": "torch-cpu", "device_type": "Cpu",
               "driver": f"torch {torch.__version__}, {torch.get_num_threads()} threads"}
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    modes = [m for m in args.modes.split(",") if m]
    os.makedirs(args.out, exist_ok=True)
    for mode in modes:
        compiled = mode.startswith("compile")
        bf16 = mode.endswith("bf16")
        fn = torch.compile(model, dynamic=False) if compiled else model
        results = []
        for b in sizes:
            if b > n_rows:
                sys.exit(f"{args.input}: {n_rows} rows; batch size {b} needs at least that many")
            spread = (n_rows - b) // args.distinct
            host = [to_tensors(spec, columns, i * spread, i * spread + b, torch.float32, "cpu")
                    for i in range(args.distinct)]

            def run(inputs):
                with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
                    on_dev = [tuple(t.to(device, non_blocking=True) for t in x) if isinstance(x, tuple)
                              else x.to(device, non_blocking=True) for x in inputs]
                    return fn(on_dev).float().cpu()

            for i in range(args.warmup):
                run(host[i % len(host)])
            lat = []
            start = time.perf_counter()
            while not lat or (len(lat) < args.iters and time.perf_counter() - start < args.budget_s):
                t = time.perf_counter()
                run(host[len(lat) % len(host)])
                sync()
                lat.append((time.perf_counter() - t) * 1e3)
            gpu = None
            if device == "cuda":
                dev_inputs = [[tuple(t.to(device) for t in x) if isinstance(x, tuple) else x.to(device) for x in h]
                              for h in host]
                times = []
                for i in range(max(3, min(len(lat), 10))):
                    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
                        s.record()
                        fn(dev_inputs[i % len(dev_inputs)])
                        e.record()
                    torch.cuda.synchronize()
                    times.append(s.elapsed_time(e))
                ms = statistics.median(times)
                gpu = {"rows": b, "ms": ms, "samples_per_s": b / (ms / 1e3), "kernels": []}
            results.append({
                "batch_size": b, "iterations": len(lat),
                "samples_per_s": b * len(lat) / (sum(lat) / 1e3),
                "latency_ms_p50": percentile(lat, 50), "latency_ms_p99": percentile(lat, 99),
                "gpu": gpu,
            })
            print(f"  torch-{mode} batch {b:>6}: {results[-1]['samples_per_s']:>10.0f} samples/s, "
                  f"p50 {results[-1]['latency_ms_p50']:.3f} ms", file=sys.stderr)
        report = {
            "schema_version": 1,
            "engine": f"torch-{mode}",
            "model": {"name": args.name or args.model, "tasks": len(spec["tasks"]), "features": len(spec["features"]),
                      "embedding_dim": spec["embedding_dim"], "flops_per_sample": flops_per_sample(spec, shapes),
                      "dispatches": 0},
            "device": dev,
            "results": results,
        }
        path = os.path.join(args.out, f"torch-{mode}.json")
        with open(path, "w") as f:
            json.dump(report, f, indent=2)
        print(f"wrote {path}", file=sys.stderr)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="compare with pepnet's scores")
    c.add_argument("--model", required=True)
    c.add_argument("--input", required=True)
    c.add_argument("--scores", required=True, help="output CSV of `pepnet score` on the same input")
    c.add_argument("--tolerance", type=float, default=1e-5)
    b = sub.add_parser("bench", help="time the baseline")
    b.add_argument("--model", required=True)
    b.add_argument("--input", required=True, help="CSV to cut batches from (the file given to `pepnet bench --input`)")
    b.add_argument("--name", help="model name in the report")
    b.add_argument("--batch-sizes", default="1,64,1024,16384,65536")
    b.add_argument("--modes", default="eager-fp32,compile-fp32,eager-bf16,compile-bf16")
    b.add_argument("--iters", type=int, default=20)
    b.add_argument("--warmup", type=int, default=3)
    b.add_argument("--budget-s", type=float, default=10.0)
    b.add_argument("--distinct", type=int, default=4)
    b.add_argument("--cpu", action="store_true", help="stay on the CPU even with CUDA present")
    b.add_argument("--out", required=True, help="directory for the JSON reports")
    args = p.parse_args()
    check(args) if args.command == "check" else bench(args)


if __name__ == "__main__":
    main()
