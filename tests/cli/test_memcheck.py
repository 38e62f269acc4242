"""ttq under valgrind's memcheck: the graph rewriting of an int8 export reads no freed memory and
no uninitialised value. A node destroyed while an insert point still named it was read back (CI's
one failure on LibTorch 2.6, where its memory had been reused; no output showed it), and LibTorch
leaves such lifetimes to its callers. scripts/setup.sh installs valgrind.
"""
import json
import subprocess
import unittest

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from ttq_testing import TTQ, Workdir, ttq


class SmallResNet(nn.Module):
    """ResNet's stem (BatchNorm, ReLU, max-pool) and two of its blocks (a residual add each, one with a
    downsample) at 8 and 16 channels: every rewrite export makes of an int8 model, on a model small
    enough to export under valgrind."""
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1, self.relu = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        down = nn.Sequential(nn.Conv2d(8, 16, 1, 2, bias=False), nn.BatchNorm2d(16))
        self.layer = nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 16, 2, down))
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(self.layer(self.maxpool(self.relu(self.bn1(self.conv1(x))))).mean((2, 3)))


class UnderMemcheck(Workdir):
    def test_export_rewrites_the_graphs_without_reading_freed_memory(self):
        # Every pass of the int8 pipeline runs: the stem's BatchNorm, ReLU and max-pool folded,
        # calibration, residual adds fused, bytes chained, the classifier in 8 bits. (LibTorch's own
        # fills copy a scalar onto itself: "overlap" reports, not ours.)
        torch.manual_seed(0)
        model, ternary, int8, data = self.out("m.pt"), self.out("t.pt"), self.out("int8.pt"), self.out("d.pt")
        torch.jit.save(torch.jit.script(SmallResNet().eval()), model)
        self.assertEqual(ttq("quantize", model, "-o", ternary, "-q").returncode, 0)
        x = torch.randn(4, 3, 16, 16)
        torch.save({"x": x, "x_test": x[:2]}, data)
        r = subprocess.run(["valgrind", "-q", "--error-limit=no", TTQ, "export", ternary, "--format", "packed",
                            "--activations", "int8", "--calibrate", "tensors:" + data, "-o", int8, "--json"],
                           capture_output=True, text=True, timeout=600)
        self.assertEqual(r.returncode, 0, r.stderr)
        report = json.loads(r.stdout)
        self.assertGreater(len(report["chained"]), 0)
        self.assertEqual(len(report["residual_fused"]), 2)
        self.assertIn("conv1.weight", report["folded"])
        self.assertEqual(report["eight_bit"], ["fc.weight"])
        self.assertNotRegex(r.stderr, r"Invalid (read|write|free)|uninitialised|Mismatched free")


if __name__ == "__main__":
    unittest.main()
