#!/usr/bin/env python3
"""Writes a CIFAR-style ResNet of depth 20, 32, 44 or 56 (He et al. 2016, option-A shortcuts, as in
the TTQ paper's CIFAR experiments: 6n+2 layers, n blocks per stage), adapted to 1x28x28 inputs and
10 classes, as TorchScript. Random init, seeded.
Usage: make_resnet20.py OUT.pt [SEED [DEPTH]]   (defaults 0 and 20)
"""
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.stride = stride
        self.pad = cout - cin

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x
        if self.stride != 1 or self.pad != 0:
            # Option A: subsample and zero-pad the channels; no parameters.
            shortcut = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return F.relu(out + shortcut)


class ResNet20(nn.Module):
    def __init__(self, in_channels=1, classes=10, depth=20):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        layers = []
        cin = 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range((depth - 2) // 6):
                layers.append(BasicBlock(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(64, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def main():
    if len(sys.argv) not in (2, 3, 4):
        sys.exit(__doc__)
    depth = int(sys.argv[3]) if len(sys.argv) == 4 else 20
    if depth not in (20, 32, 44, 56):
        sys.exit("depth must be 20, 32, 44 or 56")
    torch.manual_seed(int(sys.argv[2]) if len(sys.argv) >= 3 else 0)
    torch.jit.save(torch.jit.script(ResNet20(depth=depth).eval()), sys.argv[1])


if __name__ == "__main__":
    main()
