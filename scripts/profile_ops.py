#!/usr/bin/python3
"""Where a TorchScript model's time goes, op by op: torch.profiler over a few calls (after warm-up
calls), self CPU time per op and input shape, the largest first. Loads libttq_ops.so, so packed ttq
models and PyTorch's own (a static int8 model, say) are profiled the same way, side by side.

Usage: scripts/profile_ops.py MODEL.pt [--batch N] [--shape C,H,W] [--threads N] [--runs N] [--top N]
(run scripts/setup.sh first; images are random, channels-last, as scripts/bench_packed.sh runs them)
"""
import argparse
import os

import torch
from torch.profiler import ProfilerActivity, profile

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("model")
parser.add_argument("--batch", type=int, default=16)
parser.add_argument("--shape", default="3,224,224")
parser.add_argument("--threads", type=int, default=2)
parser.add_argument("--runs", type=int, default=5)
parser.add_argument("--top", type=int, default=25)
args = parser.parse_args()

torch.set_num_threads(args.threads)
torch.ops.load_library(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "build", "plugins",
                                     "libttq_ops.so"))
model = torch.jit.load(args.model).eval()
shape = [args.batch] + [int(d) for d in args.shape.split(",")]
x = torch.randn(shape)
if len(shape) == 4:
    x = x.contiguous(memory_format=torch.channels_last)
with torch.no_grad():
    for _ in range(3):
        model(x)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as p:
        for _ in range(args.runs):
            model(x)
rows = p.key_averages(group_by_input_shape=True)
total = sum(r.self_cpu_time_total for r in rows)
print(f"{args.model}: {total / args.runs / 1000:.1f} ms of self CPU time a call "
      f"(batch {args.batch}, {args.threads} threads, {args.runs} calls)")
for r in sorted(rows, key=lambda r: -r.self_cpu_time_total)[:args.top]:
    first = str(r.input_shapes[0]) if r.input_shapes else ""
    print(f"{r.self_cpu_time_total / args.runs / 1000:8.2f} ms  {r.count // args.runs:3d}x  {r.key:<36} {first}")
