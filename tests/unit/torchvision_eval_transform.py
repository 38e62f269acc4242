"""torchvision's evaluation transform of an image folder, as tests/unit/test_plugins_images.cpp
compares it with ttq's: ImageFolder (PIL decoding, RGB) with Resize(int(size / 0.875)) and
CenterCrop(size), written as raw uint8 N x 3 x size x size to OUT.bin and the targets, one per
line, to OUT.labels.

Usage: torchvision_eval_transform.py FOLDER SIZE OUT
"""
import sys

import numpy as np
import torch
import torchvision.transforms as T
from torchvision.datasets import ImageFolder


def main():
    folder, size, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    transform = T.Compose([T.Resize(int(size / 0.875)), T.CenterCrop(size), T.PILToTensor()])
    data = ImageFolder(folder, transform=transform)
    images = torch.stack([data[i][0] for i in range(len(data))])
    images.numpy().astype(np.uint8).tofile(out + ".bin")
    with open(out + ".labels", "w") as f:
        f.write("\n".join(str(t) for t in data.targets) + "\n")


if __name__ == "__main__":
    main()
