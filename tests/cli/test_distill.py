"""End-to-end tests of models other than image classifiers: token and multi-tensor inputs, unlabeled
data, distillation from the full-precision model, tuple and dict outputs, --init auto. PyTorch loads
every output; the scripted model must compute with the ternary weights it holds (for an LSTM, its
_flat_weights list too), which the tests check by rebuilding the model class from its state_dict.
"""
import json
import os
import sys
import unittest

import torch

from ttq_testing import Workdir, fixture, load_with_metadata, read_log, ttq

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "scripts"))
import make_fixtures  # noqa: E402  (the fixtures' model classes)

QUICK = ["--threads", "1", "--no-progress", "--optimizer", "adam"]


def ternary_values(t):
    return torch.unique(t.detach()).numel()


def rebuilt(cls, scripted):
    """An eager model of class `cls` holding the scripted model's tensors."""
    model = cls()
    model.load_state_dict(scripted.state_dict())
    return model.eval()


def quantized_layers(path):
    extra = {"ttq.json": ""}
    torch.jit.load(path, _extra_files=extra)
    return [layer["name"] for layer in json.loads(extra["ttq.json"])["layers"]]


class TokenAndMultiTensorInputs(Workdir):
    def test_transformer_text_classifier_on_token_ids_and_a_mask(self):
        out, log = self.out("text.pt"), self.out("text.jsonl")
        r = ttq("finetune", fixture("text_classifier.pt"), "--data", "tensors:" + fixture("text_tokens.pt"),
                "-o", out, "--epochs", "2", "--batch-size", "32", "--lr", "0.002", "--log", log, *QUICK)
        self.assertEqual(r.returncode, 0, r.stderr)
        # Token ids reach the embedding as integers; the mask is the second argument of forward.
        self.assertRegex(r.stdout, r"val top-1 \d+\.\d+%")
        self.assertIn("--init auto: mean", r.stderr)
        layers = quantized_layers(out)
        self.assertIn("encoder.layers.0.self_attn.in_proj_weight", layers)
        self.assertNotIn("pos", layers)
        self.assertEqual(read_log(log)[0]["options"]["init"], "mean")  # the value chosen, logged
        scripted = torch.jit.load(out).eval()
        self.assertLessEqual(ternary_values(getattr(scripted.encoder.layers, "1").linear1.weight), 3)
        data = torch.load(fixture("text_tokens.pt"))
        ids, mask = data["x_test"]
        with torch.no_grad():
            want = rebuilt(make_fixtures.TextClassifier, scripted)(ids, mask)
            got = scripted(ids, mask)
        self.assertTrue(torch.allclose(got, want, atol=1e-5), (got - want).abs().max())

    def test_lstm_tagger_distilled_without_labels_computes_with_its_ternary_weights(self):
        out, log = self.out("tagger.pt"), self.out("tagger.jsonl")
        r = ttq("finetune", fixture("lstm_tagger.pt"), "--data", "tensors:" + fixture("tagger_tokens.pt"), "-o", out,
                "--distill", "--distill-loss", "kl", "--epochs", "2", "--batch-size", "32", "--lr", "0.003",
                "--quantize-first", "--quantize-last", "--log", log, "--log-every", "4", *QUICK)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout, r"val agreement \d+\.\d+%, rel_mse [0-9.e-]+ after (0|8|16) steps")
        self.assertNotIn("top-1", r.stdout)  # no labels, no accuracy
        epochs = [e for e in read_log(log) if e["type"] == "epoch"]
        self.assertIn("val_agreement", epochs[-1])
        self.assertIn("train_distill", epochs[-1])
        self.assertNotIn("val_top1", epochs[-1])
        steps = [e for e in read_log(log) if e["type"] == "step"]
        self.assertTrue(steps and all("distill" in e and "ce" not in e for e in steps))
        scripted = torch.jit.load(out).eval()
        self.assertIn("lstm.weight_hh_l0", quantized_layers(out))
        self.assertLessEqual(ternary_values(scripted.lstm.weight_hh_l0), 3)
        ids = torch.load(fixture("tagger_tokens.pt"))["x_test"]
        with torch.no_grad():
            want = rebuilt(make_fixtures.LstmTagger, scripted)(ids)
            got = scripted(ids)
        # A stale _flat_weights list would run the LSTM with its full-precision weights.
        self.assertTrue(torch.allclose(got, want, atol=1e-5), (got - want).abs().max())
        # The teacher's view of the same run: eval --teacher measures what finetune reported.
        r = ttq("eval", out, "--data", "tensors:" + fixture("tagger_tokens.pt"), "--teacher",
                fixture("lstm_tagger.pt"), "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        ev = json.loads(r.stdout)
        # The state kept (--keep best) is the one the metadata's validation measured.
        run = json.loads(load_with_metadata(out)[1])["run"]
        self.assertAlmostEqual(ev["agreement"], run["val_agreement"], places=6)
        kept = run["kept_epoch"]
        self.assertEqual(run["steps"], 8 * kept)  # the steps behind the state kept
        if kept:
            self.assertAlmostEqual(run["val_agreement"], epochs[kept - 1]["val_agreement"], places=6)
        self.assertGreaterEqual(run["val_agreement"] + 1e-9, max(e["val_agreement"] for e in epochs))
        self.assertNotIn("top1", ev)


class Distillation(Workdir):
    def test_regression_without_labels_gets_close_to_its_teacher(self):
        data = "tensors:" + fixture("regression_unlabeled.pt")
        out, log = self.out("reg.pt"), self.out("reg.jsonl")
        r = ttq("finetune", fixture("regression_mlp.pt"), "--data", data, "-o", out, "--distill", "--distill-loss",
                "mse", "--epochs", "4", "--batch-size", "32", "--lr", "0.002", "--quantize-first", "--quantize-last",
                "--log", log, *QUICK)
        self.assertEqual(r.returncode, 0, r.stderr)
        epochs = [e for e in read_log(log) if e["type"] == "epoch"]
        self.assertNotIn("val_agreement", epochs[-1])  # one output column: no classes to agree on
        self.assertLess(epochs[-1]["val_rel_mse"], epochs[0]["val_rel_mse"])
        self.assertLess(epochs[-1]["val_rel_mse"], 0.1)
        # Measured from PyTorch's side: the ternary student against the FP teacher on the test split.
        x = torch.load(fixture("regression_unlabeled.pt"))["x_test"]
        student, teacher = torch.jit.load(out).eval(), torch.jit.load(fixture("regression_mlp.pt")).eval()
        self.assertLessEqual(ternary_values(student.fc2.weight), 3)
        with torch.no_grad():
            ys, yt = student(x), teacher(x)
        rel = ((ys - yt) ** 2).sum() / ((yt - yt.mean()) ** 2).sum()
        self.assertAlmostEqual(rel.item(), epochs[-1]["val_rel_mse"], places=4)
        # stats shows and checks the teacher metrics; accuracy is not recorded for such a run.
        r = ttq("stats", log, "--expect", "rel_mse<=0.1")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("val_rel_mse", r.stdout)
        r = ttq("stats", log, "--expect", "top1>=0.5")
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("top1 is not recorded", r.stdout + r.stderr)

    def test_labels_and_teacher_mix_cross_entropy_and_kl(self):
        out, log = self.out("mix.pt"), self.out("mix.jsonl")
        r = ttq("finetune", fixture("one_layer.pt"), "--data", "tensors:" + fixture("tensors.pt"), "-o", out,
                "--teacher", fixture("one_layer.pt"), "--quantize-first", "--quantize-last", "--epochs", "1",
                "--batch-size", "50", "--log", log, *QUICK)
        self.assertEqual(r.returncode, 0, r.stderr)
        options = read_log(log)[0]["options"]
        self.assertEqual((options["distill_loss"], options["distill_alpha"]), ("kl", 0.5))
        epoch = [e for e in read_log(log) if e["type"] == "epoch"][-1]
        # The logged loss is the weighted sum of its logged terms.
        self.assertAlmostEqual(epoch["loss"], 0.5 * epoch["train_ce"] + 0.5 * epoch["train_distill"], places=5)
        self.assertIn("val_top1", epoch)
        self.assertIn("val_agreement", epoch)

    def test_resume_of_a_distilled_run_is_exact(self):
        common = ["finetune", fixture("text_classifier.pt"), "--data", "tensors:" + fixture("text_tokens.pt"),
                  "--distill", "--epochs", "2", "--batch-size", "64", "--lr", "0.002", "--seed", "5", *QUICK]
        a, b = self.out("a.pt"), self.out("b.pt")
        r = ttq(*common, "-o", a, "--log", self.out("a.jsonl"))
        self.assertEqual(r.returncode, 0, r.stderr)
        r = ttq(*common, "-o", b, "--log", self.out("b.jsonl"), "--checkpoint-dir", self.out("ck"), "--max-steps", "21")
        self.assertEqual(r.returncode, 0, r.stderr)
        r = ttq(*common, "-o", b, "--log", self.out("b.jsonl"), "--checkpoint-dir", self.out("ck"), "--resume")
        self.assertEqual(r.returncode, 0, r.stderr)
        full = [e for e in read_log(self.out("a.jsonl")) if e["type"] == "epoch"]
        resumed = [e for e in read_log(self.out("b.jsonl")) if e["type"] == "epoch" and not e["partial"]]
        for key in ("loss", "train_ce", "train_distill", "val_agreement", "val_rel_mse", "val_top1", "layers"):
            self.assertEqual(full[-1][key], resumed[-1][key], key)
        pa, pb = dict(torch.jit.load(a).named_parameters()), dict(torch.jit.load(b).named_parameters())
        for k in pa:
            self.assertTrue(torch.equal(pa[k], pb[k]), k)
        # Another teacher is another run: resume refuses it.
        r = ttq(*common, "--teacher", fixture("text_classifier.pt"), "-o", b, "--checkpoint-dir", self.out("ck"),
                "--resume")
        self.assertEqual(r.returncode, 2, r.stderr)
        self.assertIn("teacher", r.stderr)

    def test_dict_outputs_train_on_the_named_output_or_distill_on_all(self):
        data = "tensors:" + fixture("tensors.pt")
        both = ["--quantize-first", "--quantize-last", *QUICK]
        r = ttq("finetune", fixture("dict_output.pt"), "--data", data, "-o", self.out("d.pt"), "--epochs", "1",
                "--batch-size", "50", "-q", *both)
        self.assert_one_error_line(r, 1, r"returns 2 floating tensors .*--model-output KEY\|INDEX")
        r = ttq("finetune", fixture("dict_output.pt"), "--data", data, "-o", self.out("d.pt"), "--epochs", "1",
                "--batch-size", "50", "--model-output", "logits", *both)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout, r"val top-1 \d")
        out = torch.jit.load(self.out("d.pt")).eval()(torch.randn(3, 20))
        self.assertEqual(set(out), {"logits", "embedding"})
        # Without labels: distill on both outputs (mean of their MSEs).
        x_only = self.out("x.pt")
        g = torch.Generator().manual_seed(0)
        torch.save({"x": torch.randn(200, 20, generator=g), "x_test": torch.randn(50, 20, generator=g)}, x_only)
        # --keep last: this checks that all 4 steps train on both outputs, not which epoch is best.
        r = ttq("finetune", fixture("dict_output.pt"), "--data", "tensors:" + x_only, "-o", self.out("u.pt"),
                "--distill", "--epochs", "1", "--batch-size", "50", "--keep", "last", *both)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout, r"val rel_mse [0-9.e-]+ after 4 steps")
        r = ttq("eval", fixture("dict_output.pt"), "--data", "tensors:" + x_only, "--teacher", fixture("dict_output.pt"),
                "--model-output", "nope")
        self.assert_one_error_line(r, 1, r"--model-output nope: the model's output \(dict\) has no key nope")

    def test_unlabeled_data_needs_a_teacher(self):
        data = "tensors:" + fixture("regression_unlabeled.pt")
        r = ttq("finetune", fixture("regression_mlp.pt"), "--data", data, "-o", self.out("r.pt"))
        self.assert_one_error_line(r, 2, r"the data has no labels: distill from the model itself with --distill")
        r = ttq("eval", fixture("regression_mlp.pt"), "--data", data)
        self.assert_one_error_line(r, 2, r"has no labels: compare with a teacher model \(--teacher FILE\)")
        r = ttq("finetune", fixture("regression_mlp.pt"), "--data", data, "-o", self.out("r.pt"), "--distill",
                "--distill-alpha", "0.5")
        self.assert_one_error_line(r, 2, r"--distill-alpha below 1 weights cross-entropy on labels; the data has none")
        self.assert_no_files()


class InitAuto(Workdir):
    def test_ones_after_batchnorm_mean_elsewhere(self):
        # A ResNet-18: BatchNorm takes the output of every convolution, the fc layer stays FP.
        x = torch.randn(64, 3, 32, 32)
        data = self.out("img.pt")
        torch.save({"x": x, "y": torch.randint(0, 10, (64,))}, data)
        r = ttq("finetune", fixture("resnet18.pt"), "--data", "tensors:" + data, "-o", self.out("r.pt"),
                "--max-steps", "1", "--batch-size", "32", *QUICK)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("--init auto: ones (a normalization follows every ternary layer)", r.stderr)
        r = ttq("finetune", fixture("resnet18.pt"), "--data", "tensors:" + data, "-o", self.out("r.pt"),
                "--max-steps", "1", "--batch-size", "32", "--quantize-last", *QUICK)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("--init auto: mean (no normalization takes the output of 1 of 20 ternary layers (fc.weight))",
                      r.stderr)


if __name__ == "__main__":
    unittest.main()
