"""torchvision's RandomResizedCrop.get_params fed given random draws (test_plugins_images.cpp).

stdin, a case a line: width height scale_lo scale_hi ratio_lo ratio_hi u1 u2 ...; stdout: left top
width height of torchvision's box. torch.empty(1).uniform_(a, b) and torch.randint(low, high) take
the next draw u as a + (b - a) * u (float32) and low + floor(u * (high - low)).
"""
import sys

import torch
import torchvision.transforms as T

draws = []


class Uniform:
    def uniform_(self, a, b):
        a, b = float(a), float(b)
        return torch.tensor([a + (b - a) * draws.pop(0)], dtype=torch.float32)


def randint(low, high, size):
    return torch.tensor([min(high - 1, low + int(draws.pop(0) * (high - low)))])


torch.empty = lambda *args, **kwargs: Uniform()
torch.randint = randint
for line in sys.stdin:
    v = line.split()
    width, height = int(v[0]), int(v[1])
    draws[:] = [float(x) for x in v[6:]]
    top, left, h, w = T.RandomResizedCrop.get_params(torch.zeros(1, height, width), (float(v[2]), float(v[3])),
                                                     (float(v[4]), float(v[5])))
    print(left, top, w, h)
