#!/usr/bin/env python3
"""The benchmark peer of `ttq finetune`: the same TTQ training step in PyTorch Python eager, same
model architecture, data, batch size and thread count; prints milliseconds per step.
Usage: bench_python_ttq.py resnet20|small_cnn STEPS THREADS BATCH [fp32|bf16|fp32-convolutions|bf16-convolutions]
bf16: the Python user at their best on this CPU: torch.autocast("cpu", torch.bfloat16) around the
forward pass and the loss, and the model and its inputs in channels-last memory format.
fp32-convolutions, bf16-convolutions: only the model's convolutions, forward and backward, in that
precision and channels-last, at the shapes a step gives them (PyTorch's oneDNN kernels, which ttq's
steps call too): the part of a step that no other op can take back.
"""
import contextlib
import gzip
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from make_fixtures import SmallCNN  # noqa: E402
from make_resnet20 import ResNet20  # noqa: E402


class Ternarize(torch.autograd.Function):
    """shared/docs/algorithm.md: dWp = sum g (x > d), dWn = -sum g (x < -d), dx = Wp g | g | Wn g."""

    @staticmethod
    def forward(ctx, x, wp, wn, delta):
        pos, neg = x > delta, x < -delta
        ctx.save_for_backward(pos, neg, wp, wn)
        return torch.where(pos, wp, torch.where(neg, -wn, torch.zeros((), dtype=x.dtype)))

    @staticmethod
    def backward(ctx, g):
        pos, neg, wp, wn = ctx.saved_tensors
        scale = torch.where(pos, wp, torch.where(neg, wn, torch.ones((), dtype=g.dtype)))
        return g * scale, (g * pos).sum(), -(g * neg).sum(), None


def convolutions_ms(model, batch, steps, dtype):
    """Milliseconds a step's convolutions take alone in `dtype`, channels-last: each at the input shape
    a forward pass gives it, forward and both gradients (the input's but for the first layer's, whose
    input is the data), the fastest of `steps` runs per layer (a floor, as free of this machine's
    noise as a run can be), summed."""
    shapes = {}
    convolutions = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]

    def remember(m, args, out):
        shapes[m] = args[0].shape

    hooks = [m.register_forward_hook(remember) for m in convolutions]
    with torch.no_grad():
        model(torch.zeros(batch, 1, 28, 28))
    for h in hooks:
        h.remove()
    # Channels-last strides also for one channel, which .contiguous(memory_format=) leaves contiguous
    # (then oneDNN takes a path 25x slower for the first layer here); ttq's steps give them so.
    def channels_last(t):
        _, c, h, w = t.shape
        return torch.empty_strided(t.shape, (h * w * c, 1, w * c, c), dtype=t.dtype).copy_(t)

    total = 0.0
    for i, m in enumerate(convolutions):
        x = channels_last(torch.randn(shapes[m]).to(dtype)).requires_grad_(i > 0)
        w = channels_last(m.weight.detach().to(dtype)).requires_grad_(True)
        wanted = [x, w] if i > 0 else [w]
        out = F.conv2d(x, w, None, m.stride, m.padding, m.dilation, m.groups)
        g = torch.randn_like(out)
        times = []
        for _ in range(steps + 2):
            t0 = time.perf_counter()
            out = F.conv2d(x, w, None, m.stride, m.padding, m.dilation, m.groups)
            torch.autograd.grad(out, wanted, g)
            times.append(time.perf_counter() - t0)
        total += min(times[2:])
    return 1000 * total


def main():
    arms = [[], ["fp32"], ["bf16"], ["fp32-convolutions"], ["bf16-convolutions"]]
    if len(sys.argv) not in (5, 6) or sys.argv[5:] not in arms:
        sys.exit(__doc__)
    kind, steps, threads, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    arm = sys.argv[5] if len(sys.argv) == 6 else "fp32"
    bf16 = arm == "bf16"
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = ResNet20() if kind == "resnet20" else SmallCNN()
    if arm.endswith("-convolutions"):
        precision = arm.split("-")[0]
        ms = convolutions_ms(model, batch, steps, torch.bfloat16 if precision == "bf16" else torch.float32)
        print(f"python eager {kind} (its convolutions alone, {precision}, channels-last): batch {batch}, "
              f"{threads} thread(s): {ms:.2f} ms")
        print(f"python_ms_per_step={ms:.3f}")
        return
    model.train()
    memory_format = torch.channels_last if bf16 else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    raw = gzip.open("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").read()[16:]
    labels = torch.frombuffer(bytearray(gzip.open("/usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz").read()[8:]), dtype=torch.uint8).long()
    images = torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(-1, 1, 28, 28)

    weights = [(m, "weight") for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    quantized = weights[1:-1]  # first and last stay full precision, as ttq's default
    layers = []
    for m, name in quantized:
        latent = getattr(m, name).detach().clone(memory_format=torch.preserve_format).requires_grad_(True)
        delattr(m, name)
        d = 0.05 * latent.abs().max().item()
        wp = latent[latent > d].mean().detach().clone().requires_grad_(True)
        wn = (-latent[latent < -d]).mean().detach().clone().requires_grad_(True)
        layers.append((m, name, latent, wp, wn))
    others = [p for p in model.parameters()]
    params = [l[2] for l in layers] + others + [l[3] for l in layers] + [l[4] for l in layers]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=2e-4)
    order = torch.randperm(images.shape[0])
    times = []
    for step in range(steps + 5):
        t0 = time.perf_counter()
        idx = order[step * batch:(step + 1) * batch]
        x = images[idx].float().div_(255).sub_(0.2860).div_(0.3530).contiguous(memory_format=memory_format)
        y = labels[idx]
        for m, name, latent, wp, wn in layers:
            delta = 0.05 * latent.detach().abs().max().item()
            setattr(m, name, Ternarize.apply(latent, wp, wn, delta))
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()
        times.append(time.perf_counter() - t0)
    ms = 1000 * sum(times[5:]) / steps
    how = "bf16 autocast, channels-last" if bf16 else "fp32"
    print(f"python eager {kind} ({how}): batch {batch}, {threads} thread(s): TTQ step {ms:.2f} ms")
    print(f"python_ms_per_step={ms:.3f}")


if __name__ == "__main__":
    main()
