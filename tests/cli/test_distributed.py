"""End-to-end tests of data-parallel `ttq finetune` on c10d/Gloo: ranks are separate ttq processes on
127.0.0.1, started through flags or through the environment variables torchrun sets.

Environment (set by CTest): see ttq_testing.py.
"""
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
import unittest

import torch

from ttq_testing import TTQ, SharedWorkdir, Workdir, fixture, read_log, ttq

# The small CNN has no BatchNorm, so 2 ranks × 32 samples must train exactly as 1 process × 64.
COMMON = ["finetune", fixture("small_cnn.pt"), "--subset", "1024", "--epochs", "2", "--seed", "3", "--threads", "1",
          "--init", "mean", "--optimizer", "adam", "--lr", "0.002", "--no-progress", "--log-every", "4"]


TORCHRUN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts", "torchrun.py")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_ranks(args_per_rank, env_per_rank=None):
    """Starts one ttq process per rank; returns them (the caller waits)."""
    procs = []
    for r, args in enumerate(args_per_rank):
        env = dict(os.environ, **(env_per_rank[r] if env_per_rank else {}))
        procs.append(subprocess.Popen([TTQ, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env=env))
    return procs


def finish(procs, timeout=300):
    return [(p.wait(timeout=timeout), *p.communicate()) for p in procs]


def trajectory(records):
    """(type, step, loss, [(name, wp, wn, zero)]) of every step and epoch record."""
    return [(r["type"], r["step"], r["loss"], [(l["name"], l["wp"], l["wn"], l["zero"]) for l in r["layers"]])
            for r in records if r["type"] in ("step", "epoch")]


class TwoRanksAgainstOneProcess(SharedWorkdir):
    @classmethod
    def setUpShared(cls):
        cls.one_model, cls.one_log = cls.shared_path("one.pt"), cls.shared_path("one.jsonl")
        r = ttq(*COMMON, "--batch-size", "64", "-o", cls.one_model, "--log", cls.one_log)
        assert r.returncode == 0, r.stderr
        cls.one = read_log(cls.one_log)

    def assert_same_trajectory(self, got, want, rel=1e-3, codes=2e-3):
        self.assertEqual([(t, s) for t, s, _, _ in got], [(t, s) for t, s, _, _ in want])
        # Two half batches sum their gradients in another order than one batch: float32 rounding
        # then drifts, with AMD EPYC's OpenBLAS kernels to 1.4e-5 of a scale at step 16 and 1.1e-4
        # at step 24. A rank that trained apart, or gradients not averaged, differs by far more.
        for (_, step, loss_a, layers_a), (_, _, loss_b, layers_b) in zip(got, want):
            self.assertAlmostEqual(loss_a, loss_b, delta=rel * abs(loss_b), msg=step)
            for (name_a, wp_a, wn_a, zero_a), (name_b, wp_b, wn_b, zero_b) in zip(layers_a, layers_b):
                self.assertEqual(name_a, name_b)
                self.assertAlmostEqual(wp_a, wp_b, delta=rel * abs(wp_b), msg=(step, name_a))
                self.assertAlmostEqual(wn_a, wn_b, delta=rel * abs(wn_b), msg=(step, name_a))
                self.assertAlmostEqual(zero_a, zero_b, delta=codes, msg=(step, name_a))  # a few codes may flip

    def assert_same_model(self, got, want):
        # The drift above may flip a few ternary codes (a weight near the threshold): each of those
        # differs by a whole scale, every other weight within float32 drift.
        pa = dict(torch.jit.load(got).named_parameters())
        pb = dict(torch.jit.load(want).named_parameters())
        self.assertEqual(sorted(pa), sorted(pb))
        for name in pa:
            close = torch.isclose(pa[name], pb[name], rtol=1e-3, atol=1e-5).double().mean().item()
            self.assertGreaterEqual(close, 0.998, name)

    def test_two_ranks_with_half_batches_train_as_one_process(self):
        port = str(free_port())
        model, log = self.out("two.pt"), self.out("two.jsonl")
        # Rank 0 through flags, rank 1 through the environment, as torchrun would start it. Rank 1 is
        # given its own paths: it must not write them.
        rank0 = [*COMMON, "--batch-size", "32", "-o", model, "--log", log, "--world-size", "2", "--rank", "0",
                 "--master-port", port]
        rank1 = [*COMMON, "--batch-size", "32", "-o", self.out("r1.pt"), "--log", self.out("r1.jsonl"),
                 "--checkpoint-dir", self.out("r1ck")]
        env1 = {"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        (rc0, out0, err0), (rc1, out1, err1) = finish(start_ranks([rank0, rank1], [{}, env1]))
        self.assertEqual((rc0, rc1), (0, 0), err0 + err1)
        self.assertIn("data-parallel over 2 ranks", err0)
        self.assertRegex(out0, r"two\.pt: val top-1")
        self.assertEqual((out1, err1), ("", ""))  # rank 1 trains quietly
        self.assertEqual(sorted(os.listdir(self.dir)), ["two.jsonl", "two.pt"])

        two = read_log(log)
        self.assertEqual(two[0]["options"]["world_size"], 2)
        self.assertEqual(two[0]["steps_per_epoch"], self.one[0]["steps_per_epoch"])
        self.assert_same_trajectory(trajectory(two), trajectory(self.one))
        for a, b in zip([r for r in two if r["type"] == "epoch"], [r for r in self.one if r["type"] == "epoch"]):
            for key in ("train_top1", "val_top1", "val_top5"):  # at most 2 of 1024 predictions flip
                self.assertAlmostEqual(a[key], b[key], delta=2 / 1024 + 1e-9, msg=key)
            self.assertAlmostEqual(a["val_loss"], b["val_loss"], delta=1e-3 * b["val_loss"])
        self.assert_same_model(model, self.one_model)

    def test_bf16_on_two_ranks_trains_as_one_process(self):
        # Gradients are float32 (the parameters are), summed over the ranks in float32; the
        # products of each half batch are rounded to bfloat16 as the whole batch's are.
        bf16 = [*COMMON, "--precision", "bf16"]
        r = ttq(*bf16, "--batch-size", "64", "-o", self.out("one.pt"), "--log", self.out("one.jsonl"))
        self.assertEqual(r.returncode, 0, r.stderr)
        port = str(free_port())
        two = [*bf16, "--batch-size", "32", "--world-size", "2", "--master-port", port]
        results = finish(start_ranks([[*two, "--rank", "0", "-o", self.out("two.pt"), "--log", self.out("two.jsonl")],
                                      [*two, "--rank", "1", "-o", self.out("r1.pt")]]))
        self.assertEqual([rc for rc, _, _ in results], [0, 0], results[0][2] + results[1][2])
        one, two = read_log(self.out("one.jsonl")), read_log(self.out("two.jsonl"))
        self.assertEqual(two[0]["options"]["precision"], "bf16")
        # Rounded products drift more than float32's (measured over the 32 steps: losses and scales
        # within 0.5%, 0.2% of the codes flipped, the full-precision layers within 0.5%).
        self.assert_same_trajectory(trajectory(two), trajectory(one), rel=1e-2, codes=5e-3)
        got, want = (dict(torch.jit.load(self.out(f)).named_parameters()) for f in ("two.pt", "one.pt"))
        for name, w in want.items():
            if w.unique().numel() <= 3:  # a ternary layer: its codes
                self.assertGreaterEqual((got[name].sign() == w.sign()).double().mean().item(), 0.99, name)
            else:
                self.assertLess(((got[name] - w).norm() / w.norm()).item(), 0.02, name)

    def test_the_lr_probe_on_two_ranks_measures_as_one_process(self):
        # 8192 samples in global batches of 16: 512 steps an epoch, a probe of 40; then 4 steps.
        probing = [a for a in COMMON if a not in ("--lr", "0.002")]
        probing = [*probing[:probing.index("--subset") + 1], "8192", *probing[probing.index("--subset") + 2:],
                   "--max-steps", "4"]
        logs = {w: self.out(f"probe{w}.jsonl") for w in (1, 2)}
        r = ttq(*probing, "--batch-size", "16", "-o", self.out("p1.pt"), "--log", logs[1])
        self.assertEqual(r.returncode, 0, r.stderr)
        port = str(free_port())
        ranks = [[*probing, "--batch-size", "8", "-o", self.out("p2.pt"), "--log", logs[2], "--world-size", "2",
                  "--rank", str(rank), "--master-port", port] for rank in (0, 1)]
        results = finish(start_ranks(ranks))
        self.assertEqual([rc for rc, _, _ in results], [0, 0], results[0][2] + results[1][2])
        one, two = ([e for e in read_log(logs[w]) if e["type"] == "probe"][0] for w in (1, 2))
        self.assertEqual(len(one["lrs"]), 40)
        self.assertEqual(two["lrs"], one["lrs"])
        for a, b in zip(two["losses"], one["losses"]):
            self.assertAlmostEqual(a, b, delta=1e-3 * b)
        # The same choice but where two smoothed losses tie within that rounding: one step of the grid.
        self.assertLess(abs(math.log(two["lr"] / one["lr"])), math.log(1e4) / 39 + 1e-9)

    @unittest.skipUnless(torch.__version__ >= "2",
                         "needs PyTorch 2.x's torchrun (Debian 12's, of 1.13, crashes before launching anything)")
    def test_torchrun_launches_ranks_that_train_as_one_process(self):
        # torchrun's agent serves the rendezvous store itself; the ranks it starts find it through the
        # environment, all with the same command line (rank 1 writes nothing). Debian's PyTorch has no
        # libuv, which torchrun asks for: scripts/torchrun.py is torchrun without it.
        model, log = self.out("two.pt"), self.out("two.jsonl")
        r = subprocess.run([sys.executable, TORCHRUN, "--no-python", "--nproc-per-node", "2", "--master-port",
                            str(free_port()), TTQ, *COMMON, "--batch-size", "32", "-o", model, "--log", log],
                           capture_output=True, text=True, timeout=600)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("data-parallel over 2 ranks", r.stderr)
        self.assertEqual(sorted(os.listdir(self.dir)), ["two.jsonl", "two.pt"])
        two = read_log(log)
        self.assertEqual(two[0]["options"]["world_size"], 2)
        self.assert_same_trajectory(trajectory(two), trajectory(self.one))

    def test_distillation_on_two_ranks_trains_as_one_process(self):
        # Each rank runs the teacher on its own slice; the loss terms and the teacher metrics are sums
        # over the ranks like the rest.
        args = ["finetune", fixture("one_layer.pt"), "--data", "tensors:" + fixture("tensors.pt"), "--teacher",
                fixture("one_layer.pt"), "--quantize-first", "--quantize-last", "--epochs", "2", "--threads", "1",
                "--optimizer", "adam", "--lr", "0.01", "--no-progress"]
        r = ttq(*args, "--batch-size", "100", "-o", self.out("one.pt"), "--log", self.out("one.jsonl"))
        self.assertEqual(r.returncode, 0, r.stderr)
        port = str(free_port())
        two = [*args, "--batch-size", "50", "--world-size", "2", "--master-port", port]
        results = finish(start_ranks([[*two, "--rank", "0", "-o", self.out("two.pt"), "--log", self.out("two.jsonl")],
                                      [*two, "--rank", "1", "-o", self.out("r1.pt")]]))
        self.assertEqual([rc for rc, _, _ in results], [0, 0], results)
        one = [e for e in read_log(self.out("one.jsonl")) if e["type"] == "epoch"]
        two = [e for e in read_log(self.out("two.jsonl")) if e["type"] == "epoch"]
        for a, b in zip(two, one):
            for key in ("loss", "train_ce", "train_distill", "val_loss", "val_top1", "val_agreement", "val_rel_mse"):
                self.assertAlmostEqual(a[key], b[key], delta=1e-4 * max(1e-3, abs(b[key])), msg=key)
        self.assert_same_model(self.out("two.pt"), self.out("one.pt"))

    def test_resume_on_two_ranks_then_on_one_process(self):
        port = str(free_port())
        ck, log = self.out("ck"), self.out("r.jsonl")
        args = [*COMMON, "-o", self.out("r.pt"), "--log", log, "--checkpoint-dir", ck]
        two = [*args, "--batch-size", "32", "--world-size", "2", "--master-port", port]
        results = finish(start_ranks([[*two, "--rank", "0", "--max-steps", "20"],
                                      [*two, "--rank", "1", "--max-steps", "20"]]))
        self.assertEqual([r[0] for r in results], [0, 0], results)
        results = finish(start_ranks([[*two, "--rank", "0", "--resume", "--max-steps", "28"],
                                      [*two, "--rank", "1", "--resume", "--max-steps", "28"]]))
        self.assertEqual([r[0] for r in results], [0, 0], results)
        self.assertIn("resuming from", results[0][2])
        # The same global batch on one process continues the same run.
        r = ttq(*args, "--batch-size", "64", "--resume")
        self.assertEqual(r.returncode, 0, r.stderr)
        resumed = [t for t in trajectory(read_log(log)) if not (t[0] == "epoch" and t[1] in (20, 28))]  # partial
        self.assert_same_trajectory(resumed, trajectory(self.one))


class BatchNormOnTwoRanks(Workdir):
    def test_a_resnet_with_batchnorm_trains_and_loads_in_pytorch(self):
        model = self.out("resnet20.pt")
        script = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "make_resnet20.py")
        subprocess.run(["/usr/bin/python3", script, model], check=True)
        port = str(free_port())
        args = ["finetune", model, "--subset", "512", "--epochs", "1", "--max-steps", "6", "--batch-size", "16",
                "--threads", "1", "--no-progress", "--world-size", "2", "--master-port", port, "-o", self.out("t.pt"),
                "--keep", "last"]  # the statistics after the steps, even where the start validates better
        results = finish(start_ranks([[*args, "--rank", "0"], [*args, "--rank", "1"]]))
        self.assertEqual([r[0] for r in results], [0, 0], results)
        trained = torch.jit.load(self.out("t.pt")).eval()
        before = dict(torch.jit.load(model).named_buffers())
        after = dict(trained.named_buffers())
        self.assertEqual(int(after["bn1.num_batches_tracked"]), 6)  # rank 0's statistics, one update per step
        self.assertFalse(torch.equal(after["bn1.running_mean"], before["bn1.running_mean"]))
        self.assertTrue(torch.isfinite(trained(torch.randn(2, 1, 28, 28))).all())


class RankFailures(Workdir):
    def test_a_dead_rank_makes_the_other_exit_with_one_line(self):
        port = str(free_port())
        log = self.out("run.jsonl")
        args = ["finetune", fixture("small_cnn.pt"), "--subset", "8192", "--epochs", "100", "--batch-size", "32",
                "--threads", "1", "--no-progress", "--world-size", "2", "--master-port", port, "--log-every", "1",
                "--init", "mean", "--optimizer", "adam"]
        rank0, rank1 = start_ranks([[*args, "--rank", "0", "-o", self.out("m.pt"), "--log", log],
                                    [*args, "--rank", "1", "-o", self.out("m.pt")]])
        deadline = time.time() + 120
        while time.time() < deadline and not (os.path.exists(log) and len(read_log(log)) > 5):
            time.sleep(0.1)
        rank1.send_signal(signal.SIGKILL)
        killed = time.time()
        (rc0, out0, err0), _ = finish([rank0, rank1], timeout=120)
        self.assertLess(time.time() - killed, 60)
        self.assertEqual(rc0, 1)
        lines = [l for l in err0.splitlines() if not l.startswith("ttq: info:")]
        self.assertEqual(len(lines), 1, err0)
        self.assertRegex(lines[0], r"^ttq: error: rank 0: lost contact with the other ranks")
        self.assertEqual(out0, "")
        self.assertFalse(os.path.exists(self.out("m.pt")))

    def test_ctrl_c_on_one_rank_stops_both_and_rank_0_checkpoints(self):
        port, log, ck = str(free_port()), self.out("run.jsonl"), self.out("ck")
        args = ["finetune", fixture("small_cnn.pt"), "--subset", "8192", "--epochs", "100", "--batch-size", "32",
                "--threads", "1", "--no-progress", "--world-size", "2", "--master-port", port, "--log-every", "1",
                "--init", "mean", "--optimizer", "adam", "-o", self.out("m.pt"), "--checkpoint-dir", ck]
        rank0, rank1 = start_ranks([[*args, "--rank", "0", "--log", log], [*args, "--rank", "1"]])
        deadline = time.time() + 120
        while time.time() < deadline and not (os.path.exists(log) and len(read_log(log)) > 5):
            time.sleep(0.1)
        rank1.send_signal(signal.SIGINT)
        (rc0, _, err0), (rc1, _, err1) = finish([rank0, rank1], timeout=120)
        self.assertEqual((rc0, rc1), (130, 130), err0 + err1)
        for err in (err0, err1):
            self.assertRegex(err.strip().splitlines()[-1], r"^ttq: error: interrupted; continue with --resume")
        steps = [r["step"] for r in read_log(log) if r["type"] == "step"]
        self.assertEqual(sorted(os.listdir(ck))[-1], "checkpoint-%010d.pt" % steps[-1])  # the step both stopped at
        self.assertFalse(os.path.exists(self.out("m.pt")))

    def test_a_rank_that_never_comes_times_out(self):
        started = time.time()
        r = ttq("finetune", fixture("small_cnn.pt"), "-o", self.out("m.pt"), "--world-size", "2", "--rank", "1",
                "--master-port", str(free_port()), "--dist-timeout", "2")
        self.assertLess(time.time() - started, 30)
        self.assert_one_error_line(r, 1, r"rank 1: no rendezvous of 2 ranks at 127\.0\.0\.1:\d+ within 2 s")
        self.assert_no_files()

    def test_ranks_started_with_different_options_refuse(self):
        port = str(free_port())
        args = [*COMMON, "--batch-size", "32", "-o", self.out("m.pt"), "--world-size", "2", "--master-port", port,
                "--dist-timeout", "30"]
        other_seed = ["4" if before == "--seed" else a for before, a in zip([None, *args], args)]
        results = finish(start_ranks([[*args, "--rank", "0"], [*other_seed, "--rank", "1"]]))
        for rc, out, err in results:
            self.assertEqual(rc, 2, err)
            self.assertRegex(err.strip().splitlines()[-1], r"^ttq: error: rank \d: the ranks disagree on --seed")
        self.assert_no_files()

    def test_usage_errors(self):
        base = ["finetune", fixture("small_cnn.pt"), "-o", self.out("m.pt")]
        self.assert_one_error_line(ttq(*base, "--world-size", "2", "--rank", "2"), 2, r"rank 2 is outside 0\.\.1")
        self.assert_one_error_line(ttq(*base, "--world-size", "2", "--dist-backend", "nccl"), 2,
                                   r"nccl needs a LibTorch built with CUDA")
        env = dict(os.environ, RANK="one", WORLD_SIZE="2")
        r = subprocess.run([TTQ, *base], capture_output=True, text=True, env=env)
        self.assert_one_error_line(r, 2, r"--rank: one is not a non-negative integer \(from the flag or \$RANK\)")
        self.assert_no_files()


if __name__ == "__main__":
    unittest.main()
