#!/usr/bin/env python3
"""One comparison table from bench reports (docs/bench.schema.json): samples/s end to end and
GPU-only per batch size, for pepnet and each baseline mode, with the ratio pepnet / baseline
(pepnet at f32, and at f16 where its report "pepnet-f16" is among the inputs).

    python3 bench/compare.py RESULTS_DIR_OR_FILES... [--markdown]
"""

import argparse
import glob
import json
import os


def load(paths):
    reports = []
    for p in paths:
        files = sorted(glob.glob(os.path.join(p, "*.json"))) if os.path.isdir(p) else [p]
        for f in files:
            with open(f) as fh:
                r = json.load(fh)
            if r.get("schema_version") == 1:
                reports.append(r)
    return reports


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    reports = load(args.paths)
    ours = [r for r in reports if r["engine"] == "pepnet"]
    if not ours:
        raise SystemExit("no pepnet report among the inputs")
    ref = ours[0]
    by_batch = lambda r: {x["batch_size"]: x for x in r["results"]}
    ref_rows = by_batch(ref)
    print(f"model {ref['model']['name']}: {ref['model']['flops_per_sample'] / 1e6:.2f} MFLOP/sample; "
          f"pepnet on {ref['device']['name']} ({ref['device']['driver']})")
    for r in reports:
        if r is not ref:
            print(f"{r['engine']} on {r['device']['name']} ({r['device']['driver']})")
    half = next((r for r in reports if r["engine"] == "pepnet-f16"), None)
    half_rows = by_batch(half) if half else {}
    head = ["batch", "engine", "samples/s", "p50 ms", "GPU samples/s", "pepnet / this (e2e)", "pepnet / this (GPU)"]
    if half:
        head += ["pepnet f16 / this (e2e)", "pepnet f16 / this (GPU)"]
    gpu_rate = lambda x: x["gpu"]["samples_per_s"] if x and x.get("gpu") else None
    ratio = lambda a, b: f"{a / b:.2f}" if a and b else "-"
    rows = []
    for b in sorted(ref_rows):
        for r in reports:
            x = by_batch(r).get(b)
            if not x:
                continue
            ours_x = ref_rows[b]
            gpu = gpu_rate(x)
            row = [
                str(b), r["engine"], f"{x['samples_per_s']:.0f}", f"{x['latency_ms_p50']:.3f}",
                f"{gpu:.0f}" if gpu else "-",
                ratio(ours_x["samples_per_s"], x["samples_per_s"]),
                ratio(gpu_rate(ours_x), gpu),
            ]
            if half:
                h = half_rows.get(b)
                row += [ratio(h and h["samples_per_s"], x["samples_per_s"]), ratio(gpu_rate(h), gpu)]
            rows.append(row)
    if args.markdown:
        print("| " + " | ".join(head) + " |")
        print("|" + "---|" * len(head))
        for row in rows:
            print("| " + " | ".join(row) + " |")
    else:
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
        print("  ".join(h.rjust(w) for h, w in zip(head, widths)))
        for row in rows:
            print("  ".join(c.rjust(w) for c, w in zip(row, widths)))


if __name__ == "__main__":
    main()
