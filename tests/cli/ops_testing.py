"""What the suites of libttq_ops.so's operators share: the library loaded into this PyTorch, the
kernel paths this CPU runs, ternary weights, and a test case that puts TTQ_KERNEL back after each test.

Environment (set by CTest): TTQ_BUILD_DIR, the build folder holding plugins/libttq_ops.so.
"""
import os
import unittest

import torch

LIBRARY = os.path.join(os.environ["TTQ_BUILD_DIR"], "plugins", "libttq_ops.so")
torch.ops.load_library(LIBRARY)


def cpu_paths():
    """The kernel paths this CPU runs (TTQ_KERNEL's values)."""
    with open("/proc/cpuinfo") as f:
        flags = set(next(line for line in f if line.startswith("flags")).split())
    paths = ["portable"]
    if {"avx2", "fma"} <= flags:
        paths.append("avx2")
    if {"avx512f", "avx512bw", "avx512_vnni"} <= flags:
        paths.append("avx512")
    return paths


def ternary(shape, wp=0.3, wn=0.2, seed=0):
    """A random weight of values {-wn, 0, +wp}."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(-1, 2, shape, generator=g)
    return torch.where(codes > 0, torch.tensor(wp), torch.where(codes < 0, torch.tensor(-wn), torch.tensor(0.0)))


class KernelPathCase(unittest.TestCase):
    """A test that sets TTQ_KERNEL to each path it checks, and leaves it as it found it."""

    def setUp(self):
        self.saved = os.environ.get("TTQ_KERNEL")

    def tearDown(self):
        if self.saved is None:
            os.environ.pop("TTQ_KERNEL", None)
        else:
            os.environ["TTQ_KERNEL"] = self.saved

