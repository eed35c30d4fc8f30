#!/usr/bin/env python3
"""The paper's ablation on pepnet's synthetic data: PEPNet, EPNet only, PPNet only, the plain
multi-task DNN and MMoE, trained the same way (same data, seed, initialisation and optimizers),
served by `pepnet score`, measured by `pepnet eval` (GAUC per domain x task).

    python3 bench/ablation.py --spec examples/kuairand/model.json --out /tmp/ablation \
        [--seeds 0,1,2] [--trainers pepnet,torch]

Trainers: `pepnet` (`pepnet train`, on the GPU) and `torch` (bench/torch_train.py, the PyTorch
reference). Prints a markdown table of GAUC (mean over seeds) per variant, domain and task for
each trainer, and with both, the difference pepnet - torch per variant over all domains; writes
OUT/ablation.json with every number.
"""

import argparse
import copy
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PEPNET = os.environ.get("PEPNET", os.path.join(HERE, "..", "target", "release", "pepnet"))


def variants(base):
    gate = base.get("epnet") or base.get("ppnet") or {"hidden": 64}
    out = {}
    for name, ep, pp, experts in [
        ("PEPNet", True, True, None),
        ("EPNet", True, False, None),
        ("PPNet", False, True, None),
        ("DNN", False, False, None),
        ("MMoE", False, False, {"count": 4, "hidden": [base["towers"][0] if base["towers"] else 64]}),
    ]:
        spec = copy.deepcopy(base)
        spec["epnet"] = gate if ep else None
        spec["ppnet"] = gate if pp else None
        spec["experts"] = experts
        out[name] = spec
    return out


def run(args, **kw):
    subprocess.run(args, check=True, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL, **kw)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--train-rows", type=int, default=100000)
    ap.add_argument("--valid-rows", type=int, default=30000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--world", type=int, default=0)
    ap.add_argument("--trainers", default="pepnet", help="pepnet, torch, or both: pepnet,torch")
    ap.add_argument("--variants", default="PEPNet,EPNet,PPNet,DNN,MMoE", help="which of the five to train")
    ap.add_argument("--torch-init", choices=["pepnet", "torch"], default="torch",
                    help="torch_train.py's --init: torch (its own draw, the reference conventions) "
                         "or pepnet (start from pepnet's weights)")
    args = ap.parse_args()
    trainers = args.trainers.split(",")
    with open(args.spec) as f:
        base = json.load(f)
    os.makedirs(args.out, exist_ok=True)
    train, valid = os.path.join(args.out, "train.csv"), os.path.join(args.out, "valid.csv")
    run([PEPNET, "gen-data", "--model", args.spec, "--rows", str(args.train_rows), "--output", train,
         "--world", str(args.world), "--seed", "1"])
    run([PEPNET, "gen-data", "--model", args.spec, "--rows", str(args.valid_rows), "--output", valid,
         "--world", str(args.world), "--seed", "2"])
    results = {}
    for trainer in trainers:
        for name, spec in variants(base).items():
            if name not in args.variants.split(","):
                continue
            for seed in [int(s) for s in args.seeds.split(",")]:
                work = os.path.join(args.out, f"{trainer}-{name}-{seed}")
                os.makedirs(work, exist_ok=True)
                spec_path = os.path.join(work, "spec.json")
                with open(spec_path, "w") as f:
                    json.dump(spec, f)
                model = os.path.join(work, "model")
                if trainer == "pepnet":
                    run([PEPNET, "train", "--model", spec_path, "--train", train, "--out", model,
                         "--epochs", str(args.epochs), "--seed", str(seed)])
                else:
                    run([sys.executable, os.path.join(HERE, "torch_train.py"), "--spec", spec_path,
                         "--train", train, "--out", model, "--epochs", str(args.epochs), "--seed", str(seed),
                         "--init", args.torch_init])
                scores = os.path.join(work, "scores.csv")
                run([PEPNET, "score", "--model", model, "--input", valid, "--output", scores, "--quiet"])
                report = os.path.join(work, "eval.json")
                run([PEPNET, "eval", "--model", model, "--input", valid, "--scores", scores, "--json", report])
                with open(report) as f:
                    for row in json.load(f):
                        results.setdefault((trainer, name, row["domain"], row["task"]), []).append(row["gauc"])
                print(f"{trainer} {name} seed {seed} done", file=sys.stderr)
    names = [n for n in variants(base) if n in args.variants.split(",")]
    keys = sorted({(d, t) for (_, _, d, t) in results},
                  key=lambda k: (k[0] == "all", k[0], base["tasks"].index(k[1])))
    mean = lambda xs: sum(xs) / len(xs)
    for trainer in trainers:
        print(f"\nGAUC, trained by {trainer} (mean over seeds {args.seeds})\n")
        print("| domain | task | " + " | ".join(names) + " |")
        print("|---|---|" + "---|" * len(names))
        for d, t in keys:
            cells = [f"{mean(results[(trainer, n, d, t)]):.4f}" for n in names]
            print(f"| {d} | {t} | " + " | ".join(cells) + " |")
    if len(trainers) == 2:
        a, b = trainers
        print(f"\nGAUC {a} - {b}, all domains (mean over seeds)\n")
        print("| task | " + " | ".join(names) + " |")
        print("|---|" + "---|" * len(names))
        for d, t in keys:
            if d != "all":
                continue
            cells = [f"{mean(results[(a, n, d, t)]) - mean(results[(b, n, d, t)]):+.4f}" for n in names]
            print(f"| {t} | " + " | ".join(cells) + " |")
        print(f"\nMean GAUC over the {sum(1 for d, _ in keys if d != 'all')} domain x task cells "
              f"(mean over seeds)\n")
        print("| trainer | " + " | ".join(names) + " |")
        print("|---|" + "---|" * len(names))
        cell_mean = {}
        for tr in trainers:
            for n in names:
                cell_mean[(tr, n)] = mean([mean(results[(tr, n, d, t)]) for d, t in keys if d != "all"])
            print(f"| {tr} | " + " | ".join(f"{cell_mean[(tr, n)]:.4f}" for n in names) + " |")
        print(f"| {a} - {b} | " + " | ".join(f"{cell_mean[(a, n)] - cell_mean[(b, n)]:+.4f}" for n in names) + " |")
    with open(os.path.join(args.out, "ablation.json"), "w") as f:
        json.dump([{"trainer": tr, "variant": n, "domain": d, "task": t, "gauc": v}
                   for (tr, n, d, t), v in results.items()], f, indent=1)


if __name__ == "__main__":
    main()
