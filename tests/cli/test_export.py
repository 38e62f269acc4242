"""End-to-end tests of `ttq export`, .ttqz archives and the installed C++ package.

Environment (set by CTest): see ttq_testing.py; TTQ_BUILD_DIR (for the package test).
"""
import json
import os
import random
import subprocess
import sys
import unittest

import torch

from ttq_testing import Workdir, fixture, ttq
from ttq_testing import load_with_metadata as load

INPUTS = {"resnet18.pt": (2, 3, 64, 64), "mobilenet_v2.pt": (2, 3, 64, 64), "small_cnn.pt": (2, 1, 28, 28)}


class Work(Workdir):
    def quantized(self, name, *flags):
        path = self.out(name.replace(".pt", ".ttq.pt"))
        r = ttq("quantize", fixture(name), "-o", path, *flags)
        self.assertEqual(r.returncode, 0, r.stderr)
        return path

    def export(self, src, dst, *flags):
        r = ttq("export", src, "-o", dst, "--json", *flags)
        self.assertEqual(r.returncode, 0, r.stderr)
        return json.loads(r.stdout)


class RoundTrip(Work):
    def check_round_trip(self, name, whole_archive_bound=True):
        q = self.quantized(name)
        doc = self.export(q, self.out("m.ttqz"))
        self.assertEqual(doc["file_bytes"], os.path.getsize(self.out("m.ttqz")))
        self.assertEqual(doc["input_bytes"], os.path.getsize(q))
        # Near the entropy limit: each ternary tensor costs n·H/8 bytes plus at most 14 (frequency
        # table and coder states), so within 2% once its codes take 700 bytes; then the archive.
        for t in doc["tensors"]:
            if t["encoding"] != "ternary-rans":
                continue
            entropy_bytes = t["entropy_bits"] * t["numel"] / 8
            self.assertLessEqual(t["stored_bytes"], 1.001 * entropy_bytes + 14, t["name"])
            if entropy_bytes >= 700:
                self.assertLessEqual(t["bits_per_weight"], 1.02 * t["entropy_bits"], t["name"])
        if whole_archive_bound:  # the program's few KiB dominate a tiny model
            self.assertLessEqual(doc["totals"]["ratio_to_bound"], 1.03)

        r = ttq("export", self.out("m.ttqz"), "-o", self.out("r.pt"))
        self.assertEqual(r.returncode, 0, r.stderr)
        before, meta_before = load(q)
        after, meta_after = load(self.out("r.pt"))
        self.assertEqual(json.loads(meta_before), json.loads(meta_after))
        pb, pa = dict(before.named_parameters()), dict(after.named_parameters())
        self.assertEqual(pb.keys(), pa.keys())
        for k in pb:
            self.assertTrue(torch.equal(pb[k], pa[k]), k)
            self.assertEqual(pb[k].dtype, pa[k].dtype)
        bb, ba = dict(before.named_buffers()), dict(after.named_buffers())
        for k in bb:
            self.assertTrue(torch.equal(bb[k], ba[k]), k)
        x = torch.randn(*INPUTS[name])
        with torch.no_grad():
            self.assertTrue(torch.equal(before(x), after(x)))
        return doc

    def test_resnet18_about_20x_smaller_than_fp32(self):
        doc = self.check_round_trip("resnet18.pt")
        self.assertGreater(doc["ratio"], 19.0)
        self.assertEqual(sum(t["encoding"] == "ternary-rans" for t in doc["tensors"]), 19)

    def test_mobilenet_v2(self):
        self.check_round_trip("mobilenet_v2.pt")

    def test_small_cnn(self):
        doc = self.check_round_trip("small_cnn.pt", whole_archive_bound=False)
        self.assertLess(doc["program_bytes"], 8192)

    def test_deterministic(self):
        q = self.quantized("resnet18.pt")
        self.export(q, self.out("a.ttqz"))
        self.export(q, self.out("b.ttqz"))
        with open(self.out("a.ttqz"), "rb") as a, open(self.out("b.ttqz"), "rb") as b:
            self.assertEqual(a.read(), b.read())

    def test_plain_torchscript_has_no_ttq_extras(self):
        q = self.quantized("small_cnn.pt")
        self.export(q, self.out("m.ttqz"))
        x = torch.randn(*INPUTS["small_cnn.pt"])
        reference = load(q)[0](x)
        for src in (q, self.out("m.ttqz")):
            dst = self.out("plain.pt")
            doc = self.export(src, dst, "--format", "torchscript")
            self.assertFalse(doc["ttq_metadata"])
            model, meta = load(dst)
            self.assertFalse(meta)
            self.assertTrue(torch.equal(model(x), reference))

    def test_fp16_storage(self):
        q = self.quantized("small_cnn.pt")
        exact = self.export(q, self.out("a.ttqz"))
        half = self.export(q, self.out("h.ttqz"), "--fp-dtype", "fp16")
        self.assertLess(half["file_bytes"], exact["file_bytes"])
        self.assertEqual(ttq("export", self.out("h.ttqz"), "-o", self.out("r.pt")).returncode, 0)
        before, after = dict(load(q)[0].named_parameters()), dict(load(self.out("r.pt"))[0].named_parameters())
        meta = {l["name"] for l in json.loads(load(q)[1])["layers"]}
        for k in before:
            self.assertEqual(after[k].dtype, torch.float32)
            if k in meta:
                self.assertTrue(torch.equal(before[k], after[k]), k)
            else:
                self.assertTrue(torch.equal(before[k].half().float(), after[k]), k)

    def test_inspect_reads_archives(self):
        q = self.quantized("small_cnn.pt")
        written = self.export(q, self.out("m.ttqz"))
        r = ttq("inspect", self.out("m.ttqz"), "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        doc = json.loads(r.stdout)
        for key in ("tensors", "totals", "file_bytes", "format_version", "producer"):
            self.assertEqual(doc[key], written[key])
        meta = {l["name"]: l for l in json.loads(load(q)[1])["layers"]}
        for t in doc["tensors"]:
            if t["name"] in meta:
                self.assertEqual(t["encoding"], "ternary-rans")
                self.assertEqual(t["counts"], meta[t["name"]]["counts"])
        text = ttq("inspect", self.out("m.ttqz")).stdout
        self.assertRegex(text, r"fc1\.weight\s+32x256\s+ternary-rans")
        self.assertIn("bound", text)


class Errors(Work):
    def test_model_without_ttq_metadata(self):
        r = ttq("export", fixture("small_cnn.pt"), "-o", self.out("m.ttqz"))
        self.assert_one_error_line(r, 1, "no TTQ metadata")
        self.assertEqual(os.listdir(self.dir), [])

    def test_usage(self):
        q = self.quantized("small_cnn.pt")
        self.export(q, self.out("m.ttqz"))
        self.assert_one_error_line(ttq("export", self.out("m.ttqz"), "-o", self.out("x.ttqz"), "--format", "ttqz"),
                                   2, "already a .ttqz archive")
        self.assert_one_error_line(ttq("export", q, "-o", q), 2, "is the input file")
        self.assert_one_error_line(ttq("export", q, "-o", self.out("y"), "--level", "40"), 2, "--level")
        self.assert_one_error_line(ttq("export", q, "-o", self.out("y"), "--fp-dtype", "fp8"), 2, "--fp-dtype")

    def test_truncated_archive(self):
        q = self.quantized("small_cnn.pt")
        self.export(q, self.out("m.ttqz"))
        data = open(self.out("m.ttqz"), "rb").read()
        with open(self.out("t.ttqz"), "wb") as f:
            f.write(data[:-100])
        for cmd in (["export", self.out("t.ttqz"), "-o", self.out("r.pt")], ["inspect", self.out("t.ttqz")]):
            self.assert_one_error_line(ttq(*cmd), 1, r"t\.ttqz: invalid \.ttqz archive: .*truncated")
        self.assertFalse(os.path.exists(self.out("r.pt")))

    def test_random_flips_are_rejected_through_the_cli(self):
        q = self.quantized("small_cnn.pt")
        self.export(q, self.out("m.ttqz"))
        data = bytearray(open(self.out("m.ttqz"), "rb").read())
        rng = random.Random(7)
        for _ in range(25):
            bad = bytearray(data)
            at = rng.randrange(len(bad))
            bad[at] ^= 1 << rng.randrange(8)
            with open(self.out("bad.ttqz"), "wb") as f:
                f.write(bad)
            r = ttq("export", self.out("bad.ttqz"), "-o", self.out("r.pt"))
            self.assert_one_error_line(r, 1, r"bad\.ttqz: invalid \.ttqz archive")
            self.assertFalse(os.path.exists(self.out("r.pt")))


class InstalledPackage(Work):
    def test_consumer_builds_against_find_package_ttq(self):
        build = os.environ["TTQ_BUILD_DIR"]
        prefix, consumer = self.out("prefix"), self.out("consumer")
        src = os.path.join(os.path.dirname(__file__), "..", "consumer")
        for cmd in (["cmake", "--install", build, "--prefix", prefix],
                    ["cmake", "-S", src, "-B", consumer, f"-DCMAKE_PREFIX_PATH={prefix}"],
                    ["cmake", "--build", consumer]):
            r = subprocess.run(cmd, capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertTrue(os.path.exists(os.path.join(prefix, "share", "man", "man5", "ttqz.5")))
        q = self.quantized("small_cnn.pt")
        self.export(q, self.out("m.ttqz"))
        r = subprocess.run([os.path.join(consumer, "consumer"), self.out("m.ttqz"), "1", "1", "28", "28"],
                           capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        got = torch.tensor([float(v) for v in r.stdout.split()])
        with torch.no_grad():
            expected = load(q)[0](torch.ones(1, 1, 28, 28)).flatten()
        self.assertTrue(torch.allclose(got, expected, rtol=1e-6, atol=1e-6), (got, expected))
        # ttq::load_packed: the archive packed as it loads, and a packed file as stored.
        packed = self.out("m.packed.pt")
        self.assertEqual(ttq("export", q, "--format", "packed", "-o", packed).returncode, 0)
        for model in (self.out("m.ttqz"), packed):
            r = subprocess.run([os.path.join(consumer, "consumer"), "--packed", model, "1", "1", "28", "28"],
                               capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, r.stderr)
            got = torch.tensor([float(v) for v in r.stdout.split()])
            self.assertTrue(torch.allclose(got, expected, rtol=1e-4, atol=1e-5), (model, got, expected))

    def test_the_operators_build_alone_against_this_pytorchs_libtorch(self):
        # README, "PyTorch 2.x": -DTTQ_OPS_ONLY=ON with the LibTorch of the PyTorch that will load
        # the operators; that PyTorch then runs a packed model with them.
        build = self.out("ops")
        source = os.path.join(os.path.dirname(__file__), "..", "..")
        for cmd in (["cmake", "-S", source, "-B", build, "-DTTQ_OPS_ONLY=ON", "-DCMAKE_BUILD_TYPE=Release",
                     f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}"], ["cmake", "--build", build]):
            r = subprocess.run(cmd, capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertFalse(os.path.exists(os.path.join(build, "ttq")))  # the operators only
        q, packed = self.quantized("small_cnn.pt"), self.out("m.packed.pt")
        self.assertEqual(ttq("export", q, "--format", "packed", "-o", packed).returncode, 0)
        program = ("import sys, torch; torch.ops.load_library(sys.argv[1]); x = torch.randn(2, 1, 28, 28); "
                   "a, b = torch.jit.load(sys.argv[2]), torch.jit.load(sys.argv[3]); "
                   "print(torch.allclose(a(x), b(x), rtol=1e-4, atol=1e-5))")
        r = subprocess.run([sys.executable, "-c", program, os.path.join(build, "plugins", "libttq_ops.so"), packed, q],
                           capture_output=True, text=True)
        self.assertEqual((r.returncode, r.stdout.strip()), (0, "True"), r.stderr)


if __name__ == "__main__":
    unittest.main()
