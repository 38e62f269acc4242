"""End-to-end tests of --precision (finetune, eval, bench): bf16 through LibTorch's CPU autocast, and auto,
which takes bf16 only on a CPU that computes it natively (an AVX2 machine simulated with
TTQ_KERNEL=avx2, as the packed kernels are).

Environment (set by CTest): see ttq_testing.py.
"""
import json
import os
import subprocess
import sys
import unittest

import torch
import torch.nn.functional as F

from ttq_testing import TTQ, Workdir, fashion_test_tensors, fixture, load_with_metadata, ttq

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "scripts"))
from make_resnet20 import ResNet20  # noqa: E402  (residual adds, as the models bf16 pays on)

# The small CNN on 2048 Fashion-MNIST images, two epochs of 16 steps.
RUN = ["finetune", fixture("small_cnn.pt"), "--subset", "2048", "--optimizer", "adam", "--lr", "0.002", "--threads",
       "2", "--no-progress"]
TWO_EPOCHS = [*RUN, "--epochs", "2"]


def cpu_has_native_bf16():
    """The kernel's account of this CPU, independent of ttq's."""
    with open("/proc/cpuinfo") as f:
        flags = next((line.split() for line in f if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


def differing_parameters(a, b):
    sa, sb = torch.jit.load(a).state_dict(), torch.jit.load(b).state_dict()
    assert sa.keys() == sb.keys()
    return [k for k in sa if not torch.equal(sa[k], sb[k])]


def options_of(model):
    return json.loads(load_with_metadata(model)[1])["run"]["options"]


class Bf16Finetune(Workdir):
    def test_a_resumed_bf16_run_is_the_uninterrupted_one_bit_for_bit(self):
        # Channels-last too (auto takes it for deep networks only): the path a ResNet trains on.
        bf16 = [*TWO_EPOCHS, "--precision", "bf16", "--memory-format", "channels-last"]
        whole = self.out("whole.pt")
        r = ttq(*bf16, "-o", whole)
        self.assertEqual(r.returncode, 0, r.stderr)
        options = options_of(whole)
        self.assertEqual((options["precision"], options["memory_format"]), ("bf16", "channels-last"))
        for name, w in torch.jit.load(whole).state_dict().items():
            self.assertTrue(w.is_contiguous(), name)  # stored in PyTorch's default order
        self.assert_resumed_is_whole(bf16, whole, "small")
        # With BatchNorm (ttq's own kernel in training, core/batch_norm.cpp): its running
        # statistics too.
        bn = [fixture("bn_cnn.pt") if a == fixture("small_cnn.pt") else a for a in bf16]
        r = ttq(*bn, "-o", self.out("bn_whole.pt"))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assert_resumed_is_whole(bn, self.out("bn_whole.pt"), "bn")
        # In float32 the same run ends elsewhere: the products did run in bfloat16.
        r = ttq(*TWO_EPOCHS, "-o", self.out("fp32.pt"))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(options_of(self.out("fp32.pt"))["precision"], "fp32")
        self.assertNotEqual(differing_parameters(whole, self.out("fp32.pt")), [])
        # A bf16 run does not resume in float32: it would not be the same run.
        r = ttq(*TWO_EPOCHS, "--precision", "fp32", "--memory-format", "channels-last", "-o", self.out("small_cut.pt"),
                "--checkpoint-dir", self.out("small_ck"), "--resume", "-q")
        self.assert_one_error_line(r, 2, r"made with --precision \"bf16\", this run has \"fp32\"")

    def assert_resumed_is_whole(self, run, whole, name):
        cut, ck = self.out(f"{name}_cut.pt"), self.out(f"{name}_ck")
        r = ttq(*run, "-o", cut, "--checkpoint-dir", ck, "--max-steps", "20")
        self.assertEqual(r.returncode, 0, r.stderr)
        r = ttq(*run, "-o", cut, "--checkpoint-dir", ck, "--resume")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("resuming from", r.stderr)
        self.assertEqual(differing_parameters(whole, cut), [])
        buffers = [torch.jit.load(f).state_dict() for f in (whole, cut)]
        self.assertTrue(all(torch.equal(buffers[0][k], buffers[1][k]) for k in buffers[0]))

    def test_auto_is_bf16_only_where_the_cpu_computes_it_natively(self):
        want = "bf16" if cpu_has_native_bf16() else "fp32"
        r = ttq(*TWO_EPOCHS, "--precision", "auto", "--max-steps", "2", "-o", self.out("auto.pt"))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(f"--precision auto: {want} (", r.stderr)
        self.assertEqual(options_of(self.out("auto.pt"))["precision"], want)
        # An AVX2 machine, simulated: bf16 would be emulated there, slower than float32.
        r = subprocess.run([TTQ, *TWO_EPOCHS, "--precision", "auto", "--max-steps", "2", "-o", self.out("avx2.pt")],
                           capture_output=True, text=True, timeout=600, env=dict(os.environ, TTQ_KERNEL="avx2"))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("--precision auto: fp32 (this CPU has no native bf16", r.stderr)
        self.assertEqual(options_of(self.out("avx2.pt"))["precision"], "fp32")


class Bf16Eval(Workdir):
    def test_eval_in_bf16_scores_as_float32_within_rounding(self):
        # A model trained one epoch (labels), evaluated on the test split both ways.
        model = self.out("fp.pt")
        r = ttq(*RUN, "--fp", "--epochs", "1", "-o", model)
        self.assertEqual(r.returncode, 0, r.stderr)
        scores = {}
        for precision in ("fp32", "bf16"):
            r = ttq("eval", model, "--precision", precision, "--json", "--threads", "2")
            self.assertEqual(r.returncode, 0, r.stderr)
            scores[precision] = json.loads(r.stdout)
            self.assertEqual(scores[precision]["precision"], precision)
        self.assertAlmostEqual(scores["bf16"]["top1"], scores["fp32"]["top1"], delta=0.005)
        self.assertAlmostEqual(scores["bf16"]["loss"], scores["fp32"]["loss"], delta=0.02 * scores["fp32"]["loss"])
        self.assertNotEqual(scores["bf16"]["loss"], scores["fp32"]["loss"])

    def test_a_packed_model_runs_its_kernels_in_float32(self):
        ternary, packed = self.out("t.pt"), self.out("p.pt")
        self.assertEqual(ttq("quantize", fixture("small_cnn.pt"), "-o", ternary).returncode, 0)
        self.assertEqual(ttq("export", ternary, "--format", "packed", "-o", packed).returncode, 0)
        r = ttq("eval", packed, "--precision", "bf16", "--subset", "256")
        self.assert_one_error_line(r, 2, r"--precision bf16: .*p\.pt is packed.*use --precision fp32")
        r = ttq("eval", packed, "--precision", "auto", "--subset", "256", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("--precision auto: fp32 (", r.stderr)
        self.assertEqual(json.loads(r.stdout)["precision"], "fp32")


class Bf16Rules(Workdir):
    def test_a_scripted_model_in_bf16_computes_as_torch_autocast_on_the_eager_model(self):
        # TorchScript's own autocast pass casts a residual add's bf16 inputs to float32, where eager
        # autocast (a Python user's torch.autocast) adds in bf16; ttq must compute as the latter.
        torch.manual_seed(0)
        self.addCleanup(torch.set_num_threads, torch.get_num_threads())
        torch.set_num_threads(1)
        model = ResNet20().eval()
        x, y = fashion_test_tensors(512)
        data = self.out("images.pt")
        torch.save({"x": x, "y": y, "x_test": x, "y_test": y}, data)
        scripted = self.out("resnet20.pt")
        torch.jit.save(torch.jit.script(model), scripted)

        def loss_under_autocast(m):
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                return sum(F.cross_entropy(m(b).float(), t, reduction="sum").item()
                           for b, t in zip(x.split(128), y.split(128))) / len(y)

        eager = loss_under_autocast(model)
        jit_rules = loss_under_autocast(torch.jit.load(scripted))
        r = ttq("eval", scripted, "--data", "tensors:" + data, "--precision", "bf16", "--memory-format", "contiguous",
                "--batch-size", "128", "--threads", "1", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        loss = json.loads(r.stdout)["loss"]
        # The rules differ here by ~2e-5 of the loss; ttq's loss was the eager one to the last digit.
        self.assertGreater(abs(jit_rules - eager), 1e-6 * eager, "the two rules must differ on this model")
        self.assertAlmostEqual(loss, eager, delta=1e-7 * eager)


class Bf16Bench(Workdir):
    def bench(self, *args, env=None):
        r = subprocess.run([TTQ, "bench", *args, "--input-shape", "1,28,28", "--batch-size", "8", "--runs", "2",
                            "--warmup", "1", "--threads", "2", "--json"], capture_output=True, text=True, timeout=600,
                           env=env)
        self.assertEqual(r.returncode, 0, r.stderr)
        return json.loads(r.stdout)["models"]

    def test_bench_decides_the_precision_of_each_model(self):
        ternary, packed = self.out("t.pt"), self.out("p.pt")
        self.assertEqual(ttq("quantize", fixture("small_cnn.pt"), "-o", ternary).returncode, 0)
        self.assertEqual(ttq("export", ternary, "--format", "packed", "-o", packed).returncode, 0)
        # auto: the float model in bf16 where the CPU has it, the packed one on its float32 kernels.
        models = self.bench(ternary, "--vs", packed, "--precision", "auto")
        self.assertEqual([m["precision"] for m in models], ["bf16" if cpu_has_native_bf16() else "fp32", "fp32"])
        self.assertTrue(all(m["median_ms"] > 0 and m["peak_mib"] > 0 for m in models), models)
        simulated_avx2 = {**os.environ, "TTQ_KERNEL": "avx2"}
        self.assertEqual(self.bench(ternary, "--precision", "auto", env=simulated_avx2)[0]["precision"], "fp32")
        self.assertEqual(self.bench(ternary, "--precision", "bf16")[0]["precision"], "bf16")
        self.assertEqual(self.bench(ternary)[0]["precision"], "fp32")  # the default
        r = ttq("bench", ternary, "--vs", packed, "--precision", "bf16", "--input-shape", "1,28,28")
        self.assert_one_error_line(r, 2, r"--precision bf16: .*p\.pt is packed.*use --precision fp32")


if __name__ == "__main__":
    unittest.main()
