#!/usr/bin/env python3
"""Runs TorchScript models in PyTorch on Fashion-MNIST test images and prints what they predict.

Shows that ttq's outputs are ordinary TorchScript that PyTorch runs on real data: the accuracy of
the ternary model and of the original on the first 256 test images, and how often they agree.
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


def read_idx_labels(path, count):
    with gzip.open(path, "rb") as f:
        data = f.read()
    if int.from_bytes(data[0:4], "big") != 0x801:
        sys.exit(f"{path}: not an IDX label file")
    n = min(int.from_bytes(data[4:8], "big"), count)
    return torch.frombuffer(bytearray(data[8:8 + n]), dtype=torch.uint8).long()


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    data_dir = sys.argv[3] if len(sys.argv) == 4 else DATA
    x = read_idx_images(os.path.join(data_dir, "t10k-images-idx3-ubyte.gz"), 256)
    y = read_idx_labels(os.path.join(data_dir, "t10k-labels-idx1-ubyte.gz"), 256)
    quantized, original = (torch.jit.load(p).eval() for p in sys.argv[1:3])
    with torch.no_grad():
        yq, yo = quantized(x), original(x)
    if not torch.isfinite(yq).all():
        sys.exit("the quantized model produced non-finite outputs")
    accuracy = lambda logits: (logits.argmax(1) == y).float().mean().item()
    agree = (yq.argmax(1) == yo.argmax(1)).float().mean().item()
    print(f"{x.shape[0]} Fashion-MNIST test images: ternary model top-1 {accuracy(yq):.1%}, original "
          f"{accuracy(yo):.1%}, same prediction {agree:.1%}; outputs finite")

if __name__ == "__main__":
    main()
