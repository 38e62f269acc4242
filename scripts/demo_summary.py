#!/usr/bin/env python3
"""The main job's last step: PyTorch itself evaluates the full-precision model, the ternary model
restored from its .ttqz archive and, with libttq_ops.so loaded, the packed ternary model on all
10,000 Fashion-MNIST test images, then prints the story in numbers and writes it as JSON (fractions
for accuracies, bytes for sizes).

Fails (exit 1) when the claims do not hold: the FP model at least 88% top-1, the ternary model
within 1 percentage point of it, the archive at least 10x smaller than the FP32 file, the packed
model predicting as the restored one on at least 99.5% of the images, and the packed model with
calibrated int8 activations predicting as the packed float one on at least 99% of them and within
0.3 percentage points of its top-1.
Usage: demo_summary.py --fp FP.pt --ternary RESTORED.pt --ttqz MODEL.ttqz [--one-shot Q.pt]
                       [--packed PACKED.pt [--packed-int8 INT8.pt] --ops libttq_ops.so] [--json OUT.json]
                       [--data DIR]
"""
import argparse
import gzip
import json
import os
import sys

import torch

DATA = "/usr/share/datasets/fashion-mnist"
MEAN, STD = 0.2860, 0.3530  # ttq's defaults for fashion-mnist


def read_idx(path, magic):
    with gzip.open(path, "rb") as f:
        data = f.read()
    if int.from_bytes(data[0:4], "big") != magic:
        sys.exit(f"{path}: not an IDX file with magic {magic:#x}")
    dims = magic & 0xFF
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return torch.frombuffer(bytearray(data[4 + 4 * dims:]), dtype=torch.uint8).view(*shape)


def top1(model, x, y):
    with torch.no_grad():
        predictions = torch.cat([model(batch).argmax(1) for batch in x.split(1000)])
    return (predictions == y).float().mean().item(), predictions


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fp", required=True)
    p.add_argument("--ternary", required=True)
    p.add_argument("--ttqz", required=True)
    p.add_argument("--one-shot")
    p.add_argument("--packed")
    p.add_argument("--packed-int8")
    p.add_argument("--ops")
    p.add_argument("--json")
    p.add_argument("--data", default=DATA)
    a = p.parse_args()

    x = read_idx(os.path.join(a.data, "t10k-images-idx3-ubyte.gz"), 0x803).unsqueeze(1).float().div(255)
    x = x.sub(MEAN).div(STD)
    y = read_idx(os.path.join(a.data, "t10k-labels-idx1-ubyte.gz"), 0x801).long()
    fp_top1, fp_pred = top1(torch.jit.load(a.fp).eval(), x, y)
    ternary = torch.jit.load(a.ternary).eval()
    ttq_top1, ttq_pred = top1(ternary, x, y)
    ternary_values = {name: w.unique().numel() for name, w in ternary.named_parameters() if w.dim() >= 2}
    summary = {
        "test_images": len(y),
        "fp_top1": fp_top1,
        "ttq_top1": ttq_top1,
        "fp_bytes": os.path.getsize(a.fp),
        "ttqz_bytes": os.path.getsize(a.ttqz),
        "agreement": (fp_pred == ttq_pred).float().mean().item(),
        "ternary_layers": sum(1 for n in ternary_values.values() if n <= 3),
    }
    summary["size_ratio"] = summary["fp_bytes"] / summary["ttqz_bytes"]
    summary["top1_difference_pp"] = 100 * (ttq_top1 - fp_top1)
    if a.one_shot:
        summary["one_shot_top1"] = top1(torch.jit.load(a.one_shot).eval(), x, y)[0]
    if a.packed:
        torch.ops.load_library(a.ops)
        summary["packed_top1"], packed_pred = top1(torch.jit.load(a.packed).eval(), x, y)
        summary["packed_bytes"] = os.path.getsize(a.packed)
        summary["packed_agreement"] = (packed_pred == ttq_pred).float().mean().item()
    if a.packed and a.packed_int8:
        summary["packed_int8_top1"], int8_pred = top1(torch.jit.load(a.packed_int8).eval(), x, y)
        summary["packed_int8_bytes"] = os.path.getsize(a.packed_int8)
        summary["packed_int8_agreement"] = (int8_pred == packed_pred).float().mean().item()
        summary["packed_int8_difference_pp"] = 100 * (summary["packed_int8_top1"] - summary["packed_top1"])

    mib = lambda n: f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"
    print(f"Fashion-MNIST, {len(y)} test images, evaluated by PyTorch {torch.__version__}:")
    print(f"  full precision  top-1 {100 * fp_top1:6.2f}%  {mib(summary['fp_bytes']):>10}  FP32 TorchScript ({a.fp})")
    if a.one_shot:
        print(f"  one-shot        top-1 {100 * summary['one_shot_top1']:6.2f}%              ttq quantize, no training")
    print(f"  TTQ             top-1 {100 * ttq_top1:6.2f}%  {mib(summary['ttqz_bytes']):>10}  .ttqz archive "
          f"({summary['ternary_layers']} ternary layers), restored and run in PyTorch")
    if a.packed:
        print(f"  TTQ packed      top-1 {100 * summary['packed_top1']:6.2f}%  {mib(summary['packed_bytes']):>10}  "
              f"packed TorchScript (2-bit weights in memory) via libttq_ops.so, "
              f"{100 * summary['packed_agreement']:.1f}% same as restored")
    if "packed_int8_top1" in summary:
        print(f"  TTQ packed int8 top-1 {100 * summary['packed_int8_top1']:6.2f}%  "
              f"{mib(summary['packed_int8_bytes']):>10}  packed, int8 activations with calibrated steps, "
              f"{100 * summary['packed_int8_agreement']:.1f}% same as packed")
    print(f"  TTQ vs FP: {summary['size_ratio']:.1f}x smaller, top-1 {summary['top1_difference_pp']:+.2f} pp, "
          f"same prediction on {100 * summary['agreement']:.1f}% of the images")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(summary, f, indent=2)
            f.write("\n")

    failures = []
    if fp_top1 < 0.88:
        failures.append(f"the FP model reaches {100 * fp_top1:.2f}% top-1, below 88%")
    if ttq_top1 < fp_top1 - 0.01:
        failures.append(f"the ternary model is {-summary['top1_difference_pp']:.2f} pp below the FP model (over 1 pp)")
    if summary["size_ratio"] < 10:
        failures.append(f"the archive is only {summary['size_ratio']:.1f}x smaller than the FP32 file (under 10x)")
    if a.packed and summary["packed_agreement"] < 0.995:
        failures.append(f"the packed model predicts as the restored one on {100 * summary['packed_agreement']:.1f}% "
                        "of the images (under 99.5%)")
    if "packed_int8_top1" in summary:
        if summary["packed_int8_agreement"] < 0.99:
            failures.append(f"the calibrated int8 model predicts as the packed one on "
                            f"{100 * summary['packed_int8_agreement']:.1f}% of the images (under 99%)")
        if summary["packed_int8_difference_pp"] < -0.3:
            failures.append(f"the calibrated int8 model is {-summary['packed_int8_difference_pp']:.2f} pp below the "
                            "packed one (over 0.3 pp)")
    for f in failures:
        print(f"demo_summary: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
