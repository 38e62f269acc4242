#!/usr/bin/env python3
"""Writes a generated image-classification folder in the ImageNet layout, for tests and benchmarks.

OUT/train/class<k>/<n>.JPEG and OUT/val/class<k>/<n>.JPEG (or .png): each class a colour and a
stripe orientation of its own under noise, so that a network can learn them, at a size of
--size WxH or mixed sizes and aspect ratios (--mixed MIN,MAX). --gray and --cmyk make every 5th /
7th JPEG grayscale / CMYK, --png every 3rd image a PNG, --flat puts the classes directly under
OUT (no train/ and val/).

Usage: make_image_folder.py OUT [--classes K] [--train N] [--val M] [--size 500x375]
                            [--mixed 40,160] [--png] [--gray] [--cmyk] [--flat] [--seed S]
"""
import argparse
import os

import numpy as np
from PIL import Image


def image(rng, k, classes, w, h):
    """Class k's pattern: a hue, stripes at an angle of its own, noise."""
    hue = np.array([np.cos(2 * np.pi * k / classes), np.cos(2 * np.pi * (k / classes + 1 / 3)),
                    np.cos(2 * np.pi * (k / classes + 2 / 3))]) * 80 + 128
    angle = np.pi * k / classes
    y, x = np.mgrid[0:h, 0:w]
    period = max(4.0, min(w, h) / 6)
    stripes = np.sin((x * np.cos(angle) + y * np.sin(angle)) * 2 * np.pi / period + rng.uniform(0, 6.3))
    pixels = hue[None, None, :] + 50 * stripes[..., None] + rng.normal(0, 20, (h, w, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def write_split(folder, count, args, rng, start):
    for k in range(args.classes):
        os.makedirs(os.path.join(folder, "class%d" % k), exist_ok=True)
    for i in range(count * args.classes):
        k, n = i % args.classes, start + i
        kind = i // args.classes  # the format and colour of the class's i-th image
        if args.mixed:
            lo, hi = args.mixed
            w, h = int(rng.integers(lo, hi + 1)), int(rng.integers(lo, hi + 1))
        else:
            w, h = args.size
        img = image(rng, k, args.classes, w, h)
        stem = os.path.join(folder, "class%d" % k, "%06d" % n)
        if args.png and kind % 3 == 0:
            img.save(stem + ".png")
            continue
        if args.gray and kind % 5 == 1:
            img = img.convert("L")
        elif args.cmyk and kind % 7 == 2:
            img = img.convert("CMYK")
        img.save(stem + ".JPEG", quality=90)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--train", type=int, default=20, help="images per class")
    p.add_argument("--val", type=int, default=5, help="images per class")
    p.add_argument("--size", default="500x375", type=lambda s: tuple(int(v) for v in s.split("x")))
    p.add_argument("--mixed", type=lambda s: tuple(int(v) for v in s.split(",")))
    p.add_argument("--png", action="store_true")
    p.add_argument("--gray", action="store_true")
    p.add_argument("--cmyk", action="store_true")
    p.add_argument("--flat", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rng = np.random.default_rng(args.seed)
    if args.flat:
        write_split(args.out, args.train, args, rng, 0)
        return
    write_split(os.path.join(args.out, "train"), args.train, args, rng, 0)
    write_split(os.path.join(args.out, "val"), args.val, args, rng, args.train * args.classes)


if __name__ == "__main__":
    main()
