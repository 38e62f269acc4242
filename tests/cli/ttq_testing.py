"""Helpers shared by the end-to-end suites: run the binary, load outputs, temporary folders.

Environment (set by CTest): TTQ_BIN (the binary), TTQ_FIXTURES (scripts/make_fixtures.py output).
"""
import gzip
import json
import os
import subprocess
import tempfile
import unittest

import torch

TTQ = os.environ["TTQ_BIN"]
FIX = os.environ["TTQ_FIXTURES"]
FMNIST = "/usr/share/datasets/fashion-mnist"  # ttq's default data (Debian's dataset-fashion-mnist)


def ttq(*args):
    return subprocess.run([TTQ, *args], capture_output=True, text=True, timeout=600)


def fixture(name):
    return os.path.join(FIX, name)


def fashion_test_tensors(n):
    """The first n Fashion-MNIST test images, normalized as ttq's fashion-mnist kind does, and labels."""
    images = gzip.open(os.path.join(FMNIST, "t10k-images-idx3-ubyte.gz")).read()[16:16 + 784 * n]
    labels = gzip.open(os.path.join(FMNIST, "t10k-labels-idx1-ubyte.gz")).read()[8:8 + n]
    x = torch.frombuffer(bytearray(images), dtype=torch.uint8).view(n, 1, 28, 28).float()
    return (x / 255 - 0.2860) / 0.3530, torch.frombuffer(bytearray(labels), dtype=torch.uint8).long()


def quantize_and_pack(test, model, *quantize_flags):
    """The fixture `model` quantized (quantize_flags) and packed with float activations in `test`'s
    folder: (ternary path, packed path, export's JSON summary)."""
    ternary, packed = test.out("t.pt"), test.out("p.pt")
    r = ttq("quantize", fixture(model), "-o", ternary, "-q", *quantize_flags)
    test.assertEqual(r.returncode, 0, r.stderr)
    r = ttq("export", ternary, "--format", "packed", "-o", packed, "--json")
    test.assertEqual(r.returncode, 0, r.stderr)
    return ternary, packed, json.loads(r.stdout)


def assert_back_from_int8(test, int8, ternary, eight_bit=()):
    """`ttq export INT8 --format ttq` gives the float model of `ternary` back: every tensor bit for
    bit, but the linear layers the int8 model keeps in 8 bits (`eight_bit`: export's JSON), each
    weight within half its row's step (max |w| / 127) of the original. Returns the path."""
    back = test.out("back.pt")
    test.assertEqual(ttq("export", int8, "--format", "ttq", "-o", back).returncode, 0)
    sa, sb = torch.jit.load(ternary).state_dict(), torch.jit.load(back).state_dict()
    test.assertEqual(sa.keys(), sb.keys())
    for k in sa:
        if k in eight_bit:
            half_step = sa[k].abs().amax(1, keepdim=True) / 254
            test.assertTrue(((sa[k] - sb[k]).abs() <= half_step * (1 + 1e-5)).all(), k)
        else:
            test.assertTrue(torch.equal(sa[k], sb[k]), k)
    return back


def read_log(path):
    """The records of a JSONL run log (finetune --log)."""
    with open(path) as f:
        return [json.loads(line) for line in f]


def load_with_metadata(path):
    """The module (in eval mode) and the text of its ttq.json extra file ('' or b'' if absent)."""
    extra = {"ttq.json": ""}
    module = torch.jit.load(path, _extra_files=extra)
    return module.eval(), extra["ttq.json"]


class Workdir(unittest.TestCase):
    """A test with its own temporary folder and the checks every error case shares."""

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = self.tmp.name

    def tearDown(self):
        self.tmp.cleanup()

    def out(self, name):
        return os.path.join(self.dir, name)

    def assert_one_error_line(self, result, code, pattern):
        self.assertEqual(result.returncode, code, result.stderr)
        lines = result.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertRegex(lines[0], r"^ttq: error: ")
        self.assertRegex(lines[0], pattern)
        self.assertEqual(result.stdout, "")

    def assert_no_files(self):
        self.assertEqual(os.listdir(self.dir), [])


class SharedWorkdir(Workdir):
    """A Workdir whose tests also read files the class makes once, in setUpShared(cls), under
    cls.shared_path(name)."""

    @classmethod
    def setUpClass(cls):
        cls.shared = tempfile.TemporaryDirectory()
        cls.setUpShared()

    @classmethod
    def tearDownClass(cls):
        cls.shared.cleanup()

    @classmethod
    def shared_path(cls, name):
        return os.path.join(cls.shared.name, name)


def top1(model):
    """`ttq eval`'s top-1 of a model on the embedded default data (2 threads)."""
    r = ttq("eval", model, "--json", "--threads", "2")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["top1"]


def train_then_finetune_with_defaults(cls, model, fp_epochs):
    """As a new user would, on the embedded default data: trains fixture `model` in full precision
    (adam at 0.002, `fp_epochs`), quantizes it one-shot, and fine-tunes it with TTQ for one epoch
    with every default (--json). Sets, on the SharedWorkdir class `cls`: fp, fp_top1, one_shot_top1,
    model (the TTQ output) and result (its finetune run)."""
    flags = ["--threads", "2", "--no-progress"]
    cls.fp = cls.shared_path("fp.pt")
    r = ttq("finetune", fixture(model), "-o", cls.fp, "--fp", "--optimizer", "adam", "--lr", "0.002",
            "--epochs", str(fp_epochs), *flags)
    assert r.returncode == 0, r.stderr
    one_shot = cls.shared_path("one_shot.pt")
    r = ttq("quantize", cls.fp, "-o", one_shot)
    assert r.returncode == 0, r.stderr
    cls.fp_top1, cls.one_shot_top1 = top1(cls.fp), top1(one_shot)
    cls.model = cls.shared_path("ttq.pt")
    cls.result = ttq("finetune", cls.fp, "-o", cls.model, "--epochs", "1", "--json", *flags)
