"""End-to-end tests of durability (issue: no lost or silently wrong training state): full disks and
file-size limits, outputs that overlap inputs, signals during writes, corrupt checkpoints, changed
options on resume, concurrent runs, torn logs, stale temporary files, crash-resume at random steps,
decompression bombs, non-finite weights and the errors users found unclear. Each case checks the
exit code, the one line, that inputs are unchanged and that no temporary file is left.

Environment (set by CTest): see ttq_testing.py.
"""
import glob
import gzip
import hashlib
import json
import os
import random
import resource
import shutil
import signal
import struct
import subprocess
import tempfile
import time
import unittest
import zlib

import torch

from ttq_testing import TTQ, Workdir, fixture, load_with_metadata, read_log, ttq

FMNIST = "/usr/share/datasets/fashion-mnist"
QUICK = ["--init", "mean", "--optimizer", "adam", "--lr", "0.002", "--no-progress"]
RUN = {"--subset": "1024", "--batch-size": "64", "--threads": "1", "--seed": "5", "--init": "mean",
       "--optimizer": "adam", "--lr": "0.002"}


def small_run(**changes):
    """A short deterministic run's options; changes={"--lr": "0.05"} replaces one."""
    options = dict(RUN, **{(k if k.startswith("--") else "--" + k.replace("_", "-")): v for k, v in changes.items()})
    return [word for pair in options.items() for word in pair] + ["--no-progress"]


SMALL_RUN = small_run()


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def temps(folder):
    return [f for f in os.listdir(folder) if ".tmp-" in f]


def file_size_limit(nbytes):
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))


def run_limited(args, nbytes):
    return subprocess.run([TTQ, *args], capture_output=True, text=True, timeout=600, preexec_fn=file_size_limit(nbytes))


def start(*args):
    return subprocess.Popen([TTQ, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(predicate, seconds=60):
    end = time.time() + seconds
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.005)
    return False


class FullDisk(Workdir):
    """Case 1: every writer fails with one line, exit 1, and no temporary file."""

    def small_disk(self):
        folder = tempfile.mkdtemp()
        self.addCleanup(os.rmdir, folder)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", folder], capture_output=True)
        if r.returncode != 0:
            self.skipTest("cannot mount a tmpfs here: " + r.stderr.decode().strip())
        self.addCleanup(subprocess.run, ["umount", folder])
        return folder

    def test_quantize_and_restore_on_a_full_disk(self):
        disk = self.small_disk()
        r = ttq("quantize", fixture("resnet18.pt"), "-o", os.path.join(disk, "r.pt"), "-q")
        self.assert_one_error_line(r, 1, r"cannot write .*r\.pt: No space left on device")
        self.assertEqual(os.listdir(disk), [])
        q, archive = self.out("q.pt"), self.out("q.ttqz")
        self.assertEqual(ttq("quantize", fixture("resnet18.pt"), "-o", q, "-q").returncode, 0)
        self.assertEqual(ttq("export", q, "-o", archive, "-q").returncode, 0)
        r = ttq("export", archive, "-o", os.path.join(disk, "restored.pt"), "-q")
        self.assert_one_error_line(r, 1, r"cannot write .*restored\.pt: No space left on device")
        self.assertEqual(os.listdir(disk), [])

    def test_a_file_size_limit_is_a_write_error(self):
        before = digest(fixture("small_cnn.pt"))
        r = run_limited(["quantize", fixture("resnet18.pt"), "-o", self.out("r.pt"), "-q"], 1 << 20)
        self.assert_one_error_line(r, 1, r"cannot write .*r\.pt: File too large")
        r = run_limited(["-q", "finetune", fixture("small_cnn.pt"), "-o", self.out("f.pt"), "--max-steps", "3",
                         *SMALL_RUN], 20000)
        self.assert_one_error_line(r, 1, r"cannot write .*f\.pt: File too large")
        r = run_limited(["-q", "finetune", fixture("small_cnn.pt"), "-o", self.out("g.pt"), "--max-steps", "3",
                         "--checkpoint-dir", self.out("ck"), *SMALL_RUN], 20000)
        self.assert_one_error_line(r, 1, r"cannot write .*checkpoint-0000000003\.pt: File too large")
        self.assertEqual(temps(self.dir) + temps(self.out("ck")), [])
        self.assertEqual(digest(fixture("small_cnn.pt")), before)


class Outputs(Workdir):
    """Case 2: every output is checked against every input and every other output."""

    def test_overlapping_paths_are_refused_before_any_work(self):
        model = self.out("in.pt")
        shutil.copy(fixture("small_cnn.pt"), model)
        before = digest(model)
        for args, pattern in [
            (["-o", self.out("x.pt"), "--log", model], r"--log .*in\.pt is the input file"),
            (["-o", self.out("x.pt"), "--log", self.out("x.pt")], r"--log .*x\.pt is also -o"),
            (["-o", self.out("x.pt"), "--log", self.out("ck"), "--checkpoint-dir", self.out("ck")],
             r"--checkpoint-dir .*ck is also --log"),
        ]:
            with self.subTest(args=args):
                self.assert_one_error_line(ttq("finetune", model, *args), 2, pattern)
        self.assertEqual(digest(model), before)
        self.assertEqual(os.listdir(self.dir), ["in.pt"])
        log = self.out("run.jsonl")
        self.assertEqual(ttq("-q", "finetune", model, "-o", self.out("f.pt"), "--max-steps", "2", "--log", log,
                             *SMALL_RUN).returncode, 0)
        r = ttq("stats", log, "--plot", log)
        self.assert_one_error_line(r, 2, r"--plot .*run\.jsonl is also the first input")


class Signals(Workdir):
    """Case 3: a signal never loses a checkpoint and never ends a command without a line."""

    def big_tensors(self):
        path = self.out("images.pt")
        torch.manual_seed(0)
        torch.save({"x": torch.randn(64, 3, 32, 32), "y": torch.randint(0, 10, (64,))}, path)
        return path

    def test_sigint_while_a_checkpoint_is_written_keeps_it(self):
        ck = self.out("ck")
        cmd = ["-q", "finetune", fixture("resnet18.pt"), "-o", self.out("r.pt"), "--data", "tensors:" + self.big_tensors(),
               "--batch-size", "16", "--epochs", "50", "--checkpoint-dir", ck, "--checkpoint-every", "1", "--no-progress"]
        p = start(*cmd)
        self.assertTrue(wait_for(lambda: os.path.isdir(ck) and temps(ck)), "no checkpoint was being written")
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=300)
        self.assertEqual(p.returncode, 130, err)
        self.assertRegex(err.strip().splitlines()[-1], r"^ttq: error: interrupted; continue with --resume")
        self.assertEqual(temps(ck), [])
        step = max(int(f[11:21]) for f in os.listdir(ck) if f.startswith("checkpoint-"))
        r = ttq(*cmd, "--resume", "--max-steps", str(step + 1))
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_sigterm_during_quantize_says_so_and_leaves_nothing(self):
        # The signal is sent once the output's temporary file appears; on a loaded machine the write
        # may finish before it arrives, so that attempt is a normal run and another one is made.
        for _ in range(5):
            p = start("quantize", fixture("resnet18.pt"), "-o", self.out("r.pt"), "-q")
            self.assertTrue(wait_for(lambda: temps(self.dir)), "quantize never wrote")
            p.send_signal(signal.SIGTERM)
            out, err = p.communicate(timeout=60)
            if p.returncode == 0:
                os.remove(self.out("r.pt"))
                continue
            self.assertEqual(p.returncode, 130, err)
            self.assertEqual(err, "ttq: error: interrupted\n")
            self.assertEqual(os.listdir(self.dir), [])
            return
        self.fail("quantize finished before the signal in every attempt")


class Checkpoints(Workdir):
    """Cases 4, 5, 6, 7 and 9: corrupt checkpoints, changed options, concurrent runs, torn logs,
    and a crash at random steps resumed exactly."""

    def run_ttq(self, *args, options=SMALL_RUN):
        return ttq("finetune", fixture("small_cnn.pt"), *options, *args)

    def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one(self):
        ck = self.out("ck")
        r = self.run_ttq("-o", self.out("a.pt"), "--epochs", "2", "--checkpoint-dir", ck, "--checkpoint-every", "5",
                         "--max-steps", "12")
        self.assertEqual(r.returncode, 0, r.stderr)
        newest, previous = sorted(glob.glob(os.path.join(ck, "checkpoint-*.pt")))[::-1]
        data = bytearray(open(newest, "rb").read())
        data[len(data) // 2] ^= 0x01
        open(newest, "wb").write(bytes(data))
        r = self.run_ttq("-o", self.out("a.pt"), "--epochs", "2", "--checkpoint-dir", ck, "--resume")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("%s: corrupt checkpoint (checksum mismatch); falling back to %s" % (newest, previous), r.stderr)
        self.assertIn("resuming from %s (epoch 1, step 10)" % previous, r.stderr)
        for f in glob.glob(os.path.join(ck, "checkpoint-*.pt")):
            with open(f, "r+b") as h:
                h.truncate(1000)
        r = self.run_ttq("-o", self.out("c.pt"), "--epochs", "2", "--checkpoint-dir", ck, "--resume", "-q")
        self.assertEqual(r.returncode, 1)
        self.assertRegex(r.stderr.strip().splitlines()[-1], r"ttq: error: --resume: no usable checkpoint in .*ck")
        self.assertFalse(os.path.exists(self.out("c.pt")))

    def test_resume_refuses_changed_options_and_allows_the_harmless_ones(self):
        ck = self.out("ck")
        self.assertEqual(self.run_ttq("-o", self.out("a.pt"), "--checkpoint-dir", ck, "--max-steps", "4").returncode, 0)
        for flag, value, shown in [("--lr", "0.05", "--lr 0.002"), ("--optimizer", "sgd", '--optimizer "adam"'),
                                   ("--seed", "6", "--seed 5"), ("--subset", "2048", "--subset 1024"),
                                   ("--sparsity", "0.5", "--threshold/--sparsity")]:
            with self.subTest(flag=flag):
                options = small_run(**{flag: value}) if flag in RUN else [*SMALL_RUN, flag, value]
                r = self.run_ttq("-q", "-o", self.out("a.pt"), "--checkpoint-dir", ck, "--resume", options=options)
                self.assert_one_error_line(r, 2, r"--resume: .*checkpoint-0000000004\.pt was made with " + shown)
        r = self.run_ttq("-o", self.out("a.pt"), "--checkpoint-dir", ck, "--resume", "--epochs", "1", "--max-steps",
                         "6", "--log-every", "3", options=small_run(threads="2"))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("after 6 steps", r.stdout)

    def test_a_second_run_on_the_same_folder_or_log_fails_at_once(self):
        ck, log = self.out("ck"), self.out("run.jsonl")
        p = start("finetune", fixture("small_cnn.pt"), "-o", self.out("a.pt"), "--checkpoint-dir", ck, "--log", log,
                  "--epochs", "50", *QUICK)
        self.assertTrue(wait_for(lambda: os.path.exists(log) and os.path.getsize(log) > 0))
        r = ttq("finetune", fixture("small_cnn.pt"), "-o", self.out("b.pt"), "--checkpoint-dir", ck, "-q", *QUICK)
        self.assert_one_error_line(r, 1, r"--checkpoint-dir .*ck is in use by another ttq run")
        r = ttq("finetune", fixture("small_cnn.pt"), "-o", self.out("b.pt"), "--log", log, "-q", *QUICK)
        self.assert_one_error_line(r, 1, r"the log .*run\.jsonl is in use by another ttq run")
        p.kill()
        p.communicate()

    def test_a_torn_last_log_line_is_cut_on_resume(self):
        ck, log = self.out("ck"), self.out("run.jsonl")
        r = self.run_ttq("-o", self.out("a.pt"), "--checkpoint-dir", ck, "--log", log, "--log-every", "2",
                         "--max-steps", "6")
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(log, "a") as f:
            f.write('{"type": "step", "epoch": 1, "st')
        r = self.run_ttq("-o", self.out("a.pt"), "--checkpoint-dir", ck, "--log", log, "--resume", "--max-steps", "8",
                         "--log-every", "2")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stderr, r"run\.jsonl: removed a torn last line of 32 bytes")
        self.assertEqual([x["step"] for x in read_log(log) if x["type"] == "step"], [2, 4, 6, 8])

    def test_kill_at_random_steps_then_resume_gives_the_uninterrupted_run(self):
        full = self.out("full.pt")
        args = ["--epochs", "2", "--log-every", "1"]
        self.assertEqual(self.run_ttq("-o", full, *args, "--log", self.out("full.jsonl")).returncode, 0)
        ck, log, out = self.out("ck"), self.out("run.jsonl"), self.out("resumed.pt")
        rng = random.Random(7)
        for kill_at in sorted(rng.sample(range(3, 30), 2)):
            cmd = ["finetune", fixture("small_cnn.pt"), *SMALL_RUN, "-o", out, *args, "--log", log,
                   "--checkpoint-dir", ck, "--checkpoint-every", "4"]
            if os.path.isdir(ck):
                cmd.append("--resume")
            p = start(*cmd)
            self.assertTrue(wait_for(lambda: os.path.exists(log) and
                                     any(x.get("step", 0) >= kill_at for x in read_log_lenient(log))))
            p.send_signal(signal.SIGKILL)
            p.communicate()
        r = ttq("finetune", fixture("small_cnn.pt"), *SMALL_RUN, "-o", out, *args, "--log", log, "--checkpoint-dir",
                ck, "--checkpoint-every", "4", "--resume")
        self.assertEqual(r.returncode, 0, r.stderr)
        a, b = load_with_metadata(full)[0], load_with_metadata(out)[0]
        for (name, x), (_, y) in zip(a.named_parameters(), b.named_parameters()):
            self.assertTrue(torch.equal(x, y), name)
        # The resumed log repeats the steps after each checkpoint; the last record of a step counts.
        loss = lambda path: {x["step"]: x["loss"] for x in read_log(path) if x["type"] == "step"}
        self.assertEqual(loss(self.out("full.jsonl")), loss(log))
        self.assertEqual(len(loss(log)), 32)


def read_log_lenient(path):
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except ValueError:
                pass
    return records


class StaleTemps(Workdir):
    """Case 8: temporary files of killed processes are removed from the folder written to."""

    def test_stale_temps_of_dead_processes_are_removed(self):
        for name in [".r.pt.tmp-999999", ".ck.pt.tmp-999998-AbC123"]:
            open(self.out(name), "w").write("partial")
        alive = ".x.pt.tmp-%d-AbC123" % os.getpid()
        open(self.out(alive), "w").write("being written")
        r = ttq("quantize", fixture("small_cnn.pt"), "-o", self.out("q.pt"), "-q")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("removed %s, left by ttq process 999999" % self.out(".r.pt.tmp-999999"), r.stderr)
        self.assertEqual(sorted(os.listdir(self.dir)), sorted([alive, "q.pt"]))


class Bombs(Workdir):
    """Cases 10 and 11: decompression bombs are refused without decompressing them."""

    def test_gzip_bomb_stops_at_what_the_header_promises(self):
        d = self.out("fm")
        shutil.copytree(FMNIST, d)
        header = struct.pack(">IIII", 0x803, 60000, 28, 28)
        z = zlib.compressobj(1, zlib.DEFLATED, 31)
        chunk = bytes(1 << 24)
        with open(os.path.join(d, "train-images-idx3-ubyte.gz"), "wb") as f:
            f.write(z.compress(header))
            for _ in range(64):  # 1 GiB of zeros after the header
                f.write(z.compress(chunk))
            f.write(z.flush())
        start_time = time.time()
        r = ttq("-q", "finetune", fixture("small_cnn.pt"), "-o", self.out("o.pt"), "--data", "fashion-mnist:" + d,
                "--max-steps", "1", *QUICK)
        self.assert_one_error_line(r, 1, r"train-images-idx3-ubyte\.gz: truncated or padded IDX data "
                                         r"\(more than 47040000 bytes for 47040000 values\)")
        self.assertLess(time.time() - start_time, 20)
        self.assertLess(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, 1 << 20)  # KiB: under 1 GiB

    def png(self, path, width, height):
        raw = zlib.compress(bytes((width + 1) * height), 9)
        chunk = lambda kind, data: struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        with open(path, "wb") as f:
            f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) +
                    chunk(b"IDAT", raw) + chunk(b"IEND", b""))

    def test_image_bombs_are_refused_from_their_header(self):
        for name, (w, h), pattern in [("huge", (10000, 10000), r"10000x10000 image \(100000000 pixels\) is over the "
                                                                 r"limit of 89478485"),
                                      ("thin", (1000000, 1), r"1000000x1 image has an aspect ratio over 100:1")]:
            with self.subTest(name=name):
                # Headers are checked when a batch decodes the image: put it in the split eval reads.
                root = self.out(name)
                os.makedirs(os.path.join(root, "val", "a"))
                os.makedirs(os.path.join(root, "train", "a"))
                self.png(os.path.join(root, "val", "a", "bomb.png"), w, h)
                self.png(os.path.join(root, "train", "a", "ok.png"), 8, 8)
                r = ttq("eval", fixture("mobilenet_v2.pt"), "--data", "imagefolder:" + root)
                self.assert_one_error_line(r, 1, r"bomb\.png: " + pattern)
        r = ttq("eval", fixture("mobilenet_v2.pt"), "--data", "imagefolder:" + self.out("huge"), "--max-image-pixels",
                "100000000", "--image-size", "8", "-q")
        self.assertEqual(r.returncode, 0, r.stderr)


class UnclearErrors(Workdir):
    """Cases 12 and 13: non-finite weights and the errors users found unclear, one line each."""

    def tensors(self, name, **tensors):
        path = self.out(name)
        torch.save(tensors, path)
        return "tensors:" + path

    def test_each_gets_a_line_that_says_what_is_wrong(self):
        x, y = torch.randn(40, 20), torch.randint(0, 10, (40,))
        one_layer = [fixture("one_layer.pt"), "-o", self.out("o.pt"), "--quantize-first", "--quantize-last", "--init",
                     "mean"]
        cases = [
            (["quantize", fixture("nonfinite_cnn.pt"), "-o", self.out("q.pt")], 1,
             r"layer conv2\.weight has 1 non-finite weight \(NaN or Inf\).*--exclude 'conv2\.weight'"),
            (["finetune", fixture("nonfinite_cnn.pt"), "-o", self.out("q.pt"), "--init", "mean"], 1,
             r"conv2\.weight has 1 non-finite"),
            (["eval", fixture("one_layer.pt"), "--data", self.tensors("nan.pt", x=x * float("nan"), y=y)], 1,
             r"the model's outputs are not finite"),
            # The model as given: its inputs are the likely cause (a one-shot start trains on).
            (["finetune", *one_layer, "--fp", "--optimizer", "sgd", "--lr", "0.01", "--batch-size", "8", "--data",
              "tensors:" + self.out("nan.pt")], 1,
             r"the model's outputs are not finite"),
            (["nope"], 2, r"unknown command 'nope'; commands: quantize, finetune"),
            ([], 2, r"no command given; commands: quantize"),
            # LibTorch 1.13's unpickler lacks SETITEM, which torch.save uses for a dict of one entry;
            # 2.x reads it, and finds no labels.
            (["finetune", *one_layer, "--data", self.tensors("onekey.pt", x=x)], 1,
             r"LibTorch cannot read this torch\.save\(\) file .*a dict of one entry; save at least two")
            if torch.__version__ < "2" else
            (["finetune", *one_layer, "--data", self.tensors("onekey.pt", x=x)], 2,
             r"the data has no labels: distill from the model itself with --distill"),
            (["finetune", *one_layer, "--data", self.tensors("empty.pt", x=x[:0], y=y[:0])], 1,
             r"empty\.pt: 'x' holds no samples"),
            (["finetune", *one_layer, "--data", self.tensors("neg.pt", x=x, y=y * 0 - 1)], 1,
             r"label -1 is negative: labels are class indices 0\.\.9"),
            (["eval", fixture("three_d_output.pt"), "--data", "tensors:" + fixture("tensors.pt")], 1,
             r"the model's output has shape \[256, 1, 10\]; labels need class scores"),
            (["eval", fixture("tuple_output.pt"), "--data", "tensors:" + fixture("tensors.pt")], 1,
             r"the model returns 2 floating tensors .*: name the one with class scores with --model-output"),
        ]
        for args, code, pattern in cases:
            with self.subTest(args=args[:2]):
                self.assert_one_error_line(ttq("-q", *args), code, pattern)
        os.makedirs(self.out("ro"))
        os.chmod(self.out("ro"), 0o500)
        r = ttq("-q", "finetune", fixture("small_cnn.pt"), "-o", self.out("o.pt"), "--checkpoint-dir",
                self.out("ro/ck"), *SMALL_RUN)
        if os.geteuid() != 0:  # root writes anywhere
            self.assert_one_error_line(r, 1, r"checkpoint folder .*ro/ck")

    def test_stats_refuses_a_step_that_is_not_an_integer(self):
        log = self.out("big.jsonl")
        with open(log, "w") as f:
            f.write(json.dumps({"type": "run", "version": 1, "tool": "ttq", "model": "m", "data": "d", "options": {}}))
            f.write("\n" + json.dumps({"type": "step", "epoch": 1, "step": 1e23, "lr": 0.1, "loss": 1.0,
                                       "layers": []}) + "\n")
        self.assert_one_error_line(ttq("stats", log), 1, r"line 2: malformed step record .*'step' is not an integer")


if __name__ == "__main__":
    unittest.main()
