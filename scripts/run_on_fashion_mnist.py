#!/usr/bin/env python3
"""Runs TorchScript models in PyTorch on Fashion-MNIST test images and prints what they predict.

Shows that ttq's outputs are ordinary TorchScript that PyTorch runs on real data, and how far the
ternary model's predictions stay from the original's.
Usage: run_on_fashion_mnist.py QUANTIZED.pt ORIGINAL.pt [DATA_DIR]
"""
import gzip
import os
import sys

import torch

DATA = "/usr/share/datasets/fashion-mnist"


def read_idx_images(path, count):
    with gzip.open(path, "rb") as f:
        data = f.read()
    if int.from_bytes(data[0:4], "big") != 0x803:
        sys.exit(f"{path}: not an IDX image file")
    n, rows, cols = (int.from_bytes(data[4 * i:4 * i + 4], "big") for i in (1, 2, 3))
    n = min(n, count)
    pixels = torch.frombuffer(bytearray(data[16:16 + n * rows * cols]), dtype=torch.uint8)
    return pixels.view(n, 1, rows, cols).float().div(255).sub(0.2860).div(0.3530)


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    data_dir = sys.argv[3] if len(sys.argv) == 4 else DATA
    x = read_idx_images(os.path.join(data_dir, "t10k-images-idx3-ubyte.gz"), 256)
    quantized, original = (torch.jit.load(p).eval() for p in sys.argv[1:3])
    with torch.no_grad():
        yq, yo = quantized(x), original(x)
    if not torch.isfinite(yq).all():
        sys.exit("the quantized model produced non-finite outputs")
    agree = (yq.argmax(1) == yo.argmax(1)).float().mean().item()
    print(f"{x.shape[0]} Fashion-MNIST test images: outputs finite, top-1 agreement with the "
          f"original model {agree:.1%} (untrained weights: fine-tuning restores accuracy)")


if __name__ == "__main__":
    main()
