"""End-to-end tests of `ttq finetune` and `ttq eval` on real data (Fashion-MNIST from Debian's
dataset-fashion-mnist, the embedded default) and on the fixtures' tensors and CSV data.

Environment (set by CTest): see ttq_testing.py; TTQ_BUILD_DIR (for the example plugin).
"""
import gzip
import json
import os
import shutil
import signal
import subprocess
import time
import unittest

import torch

from ttq_testing import FMNIST, TTQ, Workdir, fixture, load_with_metadata, read_log, ttq

PLUGIN = os.path.join(os.environ["TTQ_BUILD_DIR"], "plugins", "libttq_csv_plugin.so")
# A recipe that trains the small CNN (no BatchNorm) quickly: L2-optimal scales and Adam.
QUICK = ["--init", "mean", "--optimizer", "adam", "--lr", "0.002", "--no-progress"]


class Finetune(Workdir):
    def test_learns_on_fashion_mnist_by_default(self):
        out, log = self.out("ft.pt"), self.out("run.jsonl")
        r = ttq("finetune", fixture("small_cnn.pt"), "-o", out, "--max-steps", "250", "--batch-size", "64",
                "--log", log, "--log-every", "50", "--json", *QUICK)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("fashion-mnist:/usr/share/datasets/fashion-mnist (the default)", r.stderr)
        summary = json.loads(r.stdout)
        self.assertGreater(summary["run"]["val_top1"], 0.6)  # chance is 0.1
        self.assertEqual(summary["run"]["steps"], 250)

        model, meta_text = load_with_metadata(out)
        meta = json.loads(meta_text)
        self.assertEqual(meta["command"], "finetune")
        self.assertAlmostEqual(meta["run"]["val_top1"], summary["run"]["val_top1"])
        params = dict(model.named_parameters())
        original = dict(torch.jit.load(fixture("small_cnn.pt")).named_parameters())
        for layer in meta["layers"]:
            w = params[layer["name"]]
            self.assertEqual(set(torch.unique(w).tolist()), {-layer["wn"], 0.0, layer["wp"]})
            zero = layer["counts"]["zero"] / w.numel()
            self.assertTrue(0 < zero < 1, layer)
            x = original[layer["name"]]
            start = float(x[x > 0.05 * x.abs().max()].mean())  # --init mean
            self.assertNotAlmostEqual(layer["wp"], start, places=4)
        self.assertGreater(params["conv1.weight"].unique().numel(), 3)  # the first layer stays FP

        records = read_log(log)
        self.assertEqual(records[0]["type"], "run")
        self.assertEqual([r["step"] for r in records if r["type"] == "step"], [50, 100, 150, 200, 250])
        epoch = [r for r in records if r["type"] == "epoch"][-1]
        self.assertTrue(epoch["partial"])
        self.assertEqual({l["name"] for l in epoch["layers"]}, {"conv2.weight", "fc1.weight"})
        for l in epoch["layers"]:
            self.assertAlmostEqual(l["neg"] + l["zero"] + l["pos"], 1.0, places=6)

        r = ttq("eval", out, "--json", "--batch-size", "64")  # the batches finetune evaluated with
        self.assertEqual(r.returncode, 0, r.stderr)
        ev = json.loads(r.stdout)
        self.assertEqual(ev["samples"], 10000)
        self.assertAlmostEqual(ev["top1"], summary["run"]["val_top1"], places=6)

    def test_resume_gives_the_same_run(self):
        common = ["finetune", fixture("small_cnn.pt"), "--subset", "1024", "--epochs", "2", "--batch-size", "64",
                  "--seed", "3", "--threads", "1", *QUICK]
        a, b = self.out("a.pt"), self.out("b.pt")
        r = ttq(*common, "-o", a, "--log", self.out("a.jsonl"), "--checkpoint-dir", self.out("ca"))
        self.assertEqual(r.returncode, 0, r.stderr)
        r = ttq(*common, "-o", b, "--log", self.out("b.jsonl"), "--checkpoint-dir", self.out("cb"), "--max-steps", "24")
        self.assertEqual(r.returncode, 0, r.stderr)
        r = ttq(*common, "-o", b, "--log", self.out("b.jsonl"), "--checkpoint-dir", self.out("cb"), "--resume")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("resuming from", r.stderr)
        # 16 steps an epoch: the interrupted run logged epoch 1 and a partial epoch 2.
        full = [r for r in read_log(self.out("a.jsonl")) if r["type"] == "epoch"]
        resumed = [r for r in read_log(self.out("b.jsonl")) if r["type"] == "epoch"]
        self.assertEqual([(r["epoch"], r["partial"]) for r in full], [(1, False), (2, False)])
        self.assertEqual([(r["epoch"], r["partial"]) for r in resumed], [(1, False), (2, True), (2, False)])
        for key in ("loss", "val_top1", "val_loss", "layers"):
            self.assertEqual(full[0][key], resumed[0][key], key)
            self.assertEqual(full[1][key], resumed[2][key], key)
        pa, pb = dict(torch.jit.load(a).named_parameters()), dict(torch.jit.load(b).named_parameters())
        for k in pa:
            self.assertTrue(torch.equal(pa[k], pb[k]), k)

    def test_sigint_writes_a_checkpoint_and_exits_130(self):
        ckpt = self.out("ckpt")
        cmd = [TTQ, "finetune", fixture("small_cnn.pt"), "-o", self.out("s.pt"), "--subset", "4096",
               "--epochs", "100", "--batch-size", "32", "--checkpoint-dir", ckpt, "--threads", "1", "--keep", "last",
               *QUICK]  # --keep last: the resumed run's output is its last step
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(4)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=120)
        self.assertEqual(p.returncode, 130, err)
        self.assertRegex(err.strip().splitlines()[-1], r"^ttq: error: interrupted; continue with --resume")
        self.assertGreaterEqual(len(os.listdir(ckpt)), 1)
        self.assertFalse(os.path.exists(self.out("s.pt")))
        step = max(int(f.split("-")[1].split(".")[0]) for f in os.listdir(ckpt))
        self.assertGreater(step, 0)
        r = ttq(*cmd[1:], "--resume", "--max-steps", str(step + 5))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("after %d steps" % (step + 5), r.stdout)

    def test_tensors_data_and_the_example_plugin(self):
        out = self.out("t.pt")
        r = ttq("finetune", fixture("one_layer.pt"), "-o", out, "--data", "tensors:" + fixture("tensors.pt"),
                "--quantize-first", "--quantize-last", "--epochs", "5", "--batch-size", "64", "--init", "mean",
                "--optimizer", "adam", "--lr", "0.01", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertGreater(json.loads(r.stdout)["run"]["val_top1"], 0.5)
        data = torch.load(fixture("tensors.pt"))
        csv = self.out("d.csv")
        with open(csv, "w") as f:
            f.write("# features..., label\n")
            for x, y in zip(data["x_test"], data["y_test"]):
                f.write(",".join("%r" % v for v in x.tolist()) + ",%d\n" % y)
        r = ttq("eval", out, "--plugin", PLUGIN, "--data", "csv:" + csv, "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        ev = json.loads(r.stdout)
        self.assertEqual(ev["samples"], 100)  # the last fifth of 500 rows
        model = load_with_metadata(out)[0]
        with torch.no_grad():
            expected = (model(data["x_test"][400:]).argmax(1) == data["y_test"][400:]).float().mean().item()
        self.assertAlmostEqual(ev["top1"], expected, places=6)

    def test_imagefolder_of_png_and_jpeg(self):
        import numpy as np
        from PIL import Image
        images = gzip.open(os.path.join(FMNIST, "t10k-images-idx3-ubyte.gz")).read()[16:]
        pixels = np.frombuffer(images, np.uint8).reshape(-1, 28, 28)
        root = self.out("images")
        for i in range(36):  # 3 classes, 8 train + 4 test images each, rectangular, PNG and JPEG
            split = "train" if (i // 3) < 8 else "test"
            folder = os.path.join(root, split, "class%d" % (i % 3))
            os.makedirs(folder, exist_ok=True)
            Image.fromarray(pixels[i]).resize((40, 30)).save(os.path.join(folder, "%02d.%s" % (i, "png" if i % 2 else "jpg")))
        r = ttq("eval", fixture("mobilenet_v2.pt"), "--data", "imagefolder:" + root, "--image-size", "32", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["samples"], 12)
        r = ttq("finetune", fixture("mobilenet_v2.pt"), "-o", self.out("m.pt"), "--data", "imagefolder:" + root,
                "--max-steps", "2", "--batch-size", "8", "--no-progress")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("after 2 steps", r.stdout)

    def test_a_one_shot_start_that_overflows_in_eval_mode_trains_on(self):
        # ResNet-56 with Wp = Wn = 1 (the paper's start): ±1 weights ~20x the FP ones, 54 layers,
        # BatchNorm statistics of the FP weights: Inf in eval mode, finite with each batch's own.
        model = self.out("resnet56.pt")
        script = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "make_resnet20.py")
        subprocess.run(["/usr/bin/python3", script, model, "0", "56"], check=True)
        out, log = self.out("t.pt"), self.out("t.jsonl")
        r = ttq("finetune", model, "-o", out, "--init", "ones", "--optimizer", "sgd", "--lr", "0.01", "--subset", "512",
                "--epochs", "1", "--batch-size", "64", "--threads", "2", "--no-progress", "--log", log, "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stderr, r"the one-shot model's outputs are not finite on 512 of 512 validation samples")
        self.assertIn("start (one-shot ternary): val not finite 100.00%", r.stderr)
        epoch = [e for e in read_log(log) if e["type"] == "epoch"][0]
        self.assertNotIn("val_nonfinite", epoch)  # eight steps of batch statistics: finite again
        self.assertGreater(json.loads(r.stdout)["run"]["val_top1"], 0)
        self.assertTrue(torch.isfinite(torch.jit.load(out).eval()(torch.randn(2, 1, 28, 28))).all())

    def test_fp_baseline_writes_no_ternary_layers(self):
        out = self.out("fp.pt")
        r = ttq("finetune", fixture("small_cnn.pt"), "-o", out, "--fp", "--max-steps", "20", "--subset", "2048",
                *QUICK)
        self.assertEqual(r.returncode, 0, r.stderr)
        model, meta = load_with_metadata(out)
        self.assertFalse(meta)
        self.assertGreater(model.fc1.weight.unique().numel(), 3)


class BadInput(Workdir):
    def copy_fmnist(self):
        d = self.out("fm")
        shutil.copytree(FMNIST, d)
        return d

    def finetune(self, *args, model="small_cnn.pt"):
        return ttq("-q", "finetune", fixture(model), "-o", self.out("o.pt"), "--max-steps", "2", *QUICK, *args)

    def test_truncated_idx(self):
        d = self.copy_fmnist()
        path = os.path.join(d, "t10k-labels-idx1-ubyte.gz")
        data = gzip.open(path).read()
        with gzip.open(path, "wb") as f:
            f.write(data[:-10])
        r = self.finetune("--data", "fashion-mnist:" + d)
        self.assert_one_error_line(r, 1, r"t10k-labels-idx1-ubyte\.gz: truncated or padded IDX data")
        self.assertFalse(os.path.exists(self.out("o.pt")))

    def test_eval_reads_the_test_split_alone(self):
        # eval (and bench, and a budget's samples) decode the test split only: a folder of its files
        # serves them; finetune, which needs the training files, names the one missing.
        d = self.out("test-only")
        os.makedirs(d)
        for name in os.listdir(FMNIST):
            if name.startswith("t10k-"):
                shutil.copy(os.path.join(FMNIST, name), d)
        r = ttq("eval", fixture("small_cnn.pt"), "--data", "fashion-mnist:" + d, "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["samples"], 10000)
        r = self.finetune("--data", "fashion-mnist:" + d)
        self.assert_one_error_line(r, 1, r"no train-(images-idx3|labels-idx1)-ubyte")

    def test_wrong_magic(self):
        d = self.copy_fmnist()
        path = os.path.join(d, "train-images-idx3-ubyte.gz")
        with gzip.open(path, "wb") as f:
            f.write(b"\x00\x00\x08\x01" + b"\x00" * 100)
        r = self.finetune("--data", "fashion-mnist:" + d)
        self.assert_one_error_line(r, 1, r"not an IDX file with 3 dimension\(s\)")

    def test_label_out_of_range(self):
        r = self.finetune("--data", "tensors:" + fixture("tensors_bad_labels.pt"), "--quantize-first",
                          "--quantize-last", model="one_layer.pt")
        self.assert_one_error_line(r, 1, r"label 15 is out of range for the model's 10 outputs")

    def test_input_shape_the_model_rejects(self):
        r = self.finetune("--subset", "64", model="resnet18.pt")
        self.assert_one_error_line(r, 1, r"the model rejects inputs of shape \[2, 1, 28, 28\]")

    def test_resume_with_a_checkpoint_of_another_model(self):
        ckpt = self.out("ck")
        r = ttq("finetune", fixture("one_layer.pt"), "-o", self.out("a.pt"), "--data",
                "tensors:" + fixture("tensors.pt"), "--quantize-first", "--quantize-last", "--max-steps", "2",
                "--checkpoint-dir", ckpt, *QUICK)
        self.assertEqual(r.returncode, 0, r.stderr)
        r = self.finetune("--checkpoint-dir", ckpt, "--resume", "--subset", "256")
        self.assert_one_error_line(r, 1, r"checkpoint is of another model")

    def test_non_finite_loss_names_the_step(self):
        r = ttq("-q", "finetune", fixture("small_cnn.pt"), "-o", self.out("o.pt"), "--subset", "512",
                "--init", "mean", "--lr", "1e12", "--no-progress", "--checkpoint-dir", self.out("ck"),
                "--batch-size", "64", "--epochs", "3", "--on-divergence", "stop")
        self.assertEqual(r.returncode, 1, r.stderr)
        line, = r.stderr.strip().splitlines()
        self.assertRegex(line, r"^ttq: error: the loss became -?(nan|inf) at step \d+ \(epoch \d\) \(--on-divergence "
                               r"stop\); stopped: .*o\.pt holds the best state so far, the start")
        self.assertRegex(r.stdout, r"o\.pt: val top-1 .* after 0 steps")  # the start, written whole

    def test_unwritable_output_fails_before_training(self):
        r = ttq("finetune", fixture("small_cnn.pt"), "-o", self.out("missing/o.pt"), *QUICK)
        self.assert_one_error_line(r, 1, r"folder .*missing does not exist")

    def test_usage_errors(self):
        self.assert_one_error_line(self.finetune("--resume"), 2, r"--resume needs --checkpoint-dir")
        self.assert_one_error_line(self.finetune("--data", "nosuch:/x"), 2, r"unknown dataset kind 'nosuch'")
        self.assert_one_error_line(self.finetune("--data", "mnist"), 2, r"is not KIND:PATH")
        self.assert_one_error_line(self.finetune("--resume", "--checkpoint-dir", self.out("none")), 1,
                                   r"no checkpoint in")
        self.assert_one_error_line(self.finetune("--device", "cuda"), 2, r"--device cuda")
        self.assert_one_error_line(ttq("-q", "eval", fixture("small_cnn.pt"), "--plugin", self.out("nope.so")), 1,
                                   r"nope\.so: no such plugin file")


if __name__ == "__main__":
    unittest.main()
