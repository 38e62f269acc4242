"""End-to-end tests of `ttq finetune` with its defaults (--optimizer auto, --lr auto) on trained
full-precision models, as a new user runs it: no flag but the data and the length of the run.

Environment (set by CTest): see ttq_testing.py.
"""
import json
import re
import unittest

from ttq_testing import SharedWorkdir, load_with_metadata, read_log, top1, train_then_finetune_with_defaults, ttq

# Fashion-MNIST, the embedded default: the small CNN trains an epoch in about 4 s on two cores.
DATA = ["--threads", "2"]


def same_parameters(a, b):
    """The names of the parameters and buffers that differ between two TorchScript models (PyTorch's view)."""
    import torch
    sa, sb = torch.jit.load(a).state_dict(), torch.jit.load(b).state_dict()
    assert sa.keys() == sb.keys()
    return [k for k in sa if not torch.equal(sa[k], sb[k])]


class DefaultsOnATrainedCnnWithoutNormalization(SharedWorkdir):
    """The small CNN (LeNet-style, no BatchNorm), trained in full precision (87%; one-shot ternary 76%):
    SGD at 0.01, the old default, threw it to chance (10.00%) in one epoch of TTQ."""

    @classmethod
    def setUpShared(cls):
        train_then_finetune_with_defaults(cls, "small_cnn.pt", fp_epochs=3)

    def test_one_epoch_beats_one_shot_quantization_and_stays_near_full_precision(self):
        self.assertEqual(self.result.returncode, 0, self.result.stderr)
        self.assertGreater(self.fp_top1, 0.85)
        got = top1(self.model)
        self.assertAlmostEqual(got, json.loads(self.result.stdout)["run"]["val_top1"], places=6)
        self.assertGreaterEqual(got, self.one_shot_top1)
        self.assertGreater(got, self.fp_top1 - 0.015, (got, self.fp_top1, self.one_shot_top1))

    def test_the_recipe_is_printed_with_its_reason_and_recorded(self):
        self.assertIn("--optimizer auto: adam (", self.result.stderr)
        # 468 steps an epoch: a probe of 37 (8%).
        probed = re.search(r"--lr auto: ([0-9.e-]+) \(a range test of (\d+) steps from 1e-05 to 0.1, [0-9.]+ s\)",
                           self.result.stderr)
        self.assertIsNotNone(probed, self.result.stderr)
        self.assertLessEqual(int(probed.group(2)), 37)
        _, meta = load_with_metadata(self.model)
        run = json.loads(meta)["run"]
        self.assertEqual(run["options"]["optimizer"], "adam")
        self.assertEqual(f"{run['options']['lr']:.3g}", probed.group(1))
        self.assertTrue(1e-5 <= run["options"]["lr"] <= 0.1)
        self.assertIn(probed.group(0)[:-1], run["recipe"])

    def test_the_probe_changes_nothing_but_the_rate_and_a_resumed_run_keeps_it(self):
        common = ["--epochs", "1", *DATA]
        a, b, ck = self.out("a.pt"), self.out("b.pt"), self.out("ck")
        r = ttq("finetune", self.fp, "-o", a, "--log", self.out("a.jsonl"), "--progress", *common)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("probing lr [", r.stderr)  # the progress line
        probe = [e for e in read_log(self.out("a.jsonl")) if e["type"] == "probe"]
        self.assertEqual(len(probe), 1)
        lrs = probe[0]["lrs"]
        self.assertEqual(len(lrs), len(probe[0]["losses"]))
        self.assertEqual(lrs, sorted(lrs))
        self.assertEqual(lrs[0], 1e-5)
        run_a = json.loads(load_with_metadata(a)[1])["run"]
        self.assertEqual(probe[0]["lr"], run_a["options"]["lr"])
        # The same rate given: the same model, bit for bit (the probe put everything back).
        r = ttq("finetune", self.fp, "-o", self.out("given.pt"), "--optimizer", "adam", "--lr",
                repr(run_a["options"]["lr"]), *common)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(same_parameters(a, self.out("given.pt")), [])
        # Cut after 100 steps, then resumed: no second probe, the same rate, the same model.
        r = ttq("finetune", self.fp, "-o", b, "--checkpoint-dir", ck, "--max-steps", "100", *common)
        self.assertEqual(r.returncode, 0, r.stderr)
        r = ttq("finetune", self.fp, "-o", b, "--checkpoint-dir", ck, "--resume", "--progress", *common)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("epoch 1/1 [", r.stderr)
        self.assertNotIn("probing lr", r.stderr)
        run_b = json.loads(load_with_metadata(b)[1])["run"]
        untimed = lambda recipe: re.sub(r", [0-9.]+ s\)", ")", recipe)  # the probe's seconds vary from run to run
        self.assertEqual((run_b["options"]["lr"], untimed(run_b["recipe"])),
                         (run_a["options"]["lr"], untimed(run_a["recipe"])))
        self.assertEqual(same_parameters(a, b), [])

    def test_the_start_is_measured_and_the_kept_epoch_recorded(self):
        self.assertIn(f"start (one-shot ternary): val top-1 {100 * self.one_shot_top1:.2f}%", self.result.stderr)
        run = json.loads(load_with_metadata(self.model)[1])["run"]
        self.assertEqual(run["kept_epoch"], 1)
        self.assertEqual(run["options"]["keep"], "best")

    def test_a_run_that_destroys_the_model_goes_back_with_a_lower_rate_and_says_so(self):
        # The old default recipe on this model: the epoch ends at chance; then again at a tenth of it.
        old = ["--optimizer", "sgd", "--lr", "0.01", "--epochs", "1", *DATA]
        out = self.out("recovered.pt")
        r = ttq("finetune", self.fp, "-o", out, *old)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn(f"epoch 1 ended at val top-1 10.00%, below the start's val top-1 {100 * self.one_shot_top1:.2f}%: "
                      "back to the start with 0.1 times the rate (recovery 1 of 3", r.stderr)
        self.assertGreater(top1(out), self.one_shot_top1 + 0.05)
        run = json.loads(load_with_metadata(out)[1])["run"]
        self.assertEqual((run["recoveries"], run["kept_epoch"], run["options"]["on_divergence"]), (1, 1, "recover"))

    def test_without_recovery_the_start_is_kept_and_said(self):
        old = ["--optimizer", "sgd", "--lr", "0.01", "--epochs", "1", "--on-divergence", "continue", *DATA]
        best, last = self.out("best.pt"), self.out("last.pt")
        r = ttq("finetune", self.fp, "-o", best, *old)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("below the start's val top-1", r.stderr)
        self.assertIn("--on-divergence continue: training on", r.stderr)
        self.assertIn(f"no epoch beat the start's val top-1 {100 * self.one_shot_top1:.2f}%: the output is the start "
                      "(the one-shot ternary model)", r.stderr)
        self.assertEqual(top1(best), self.one_shot_top1)
        self.assertEqual(json.loads(load_with_metadata(best)[1])["run"]["kept_epoch"], 0)
        r = ttq("finetune", self.fp, "-o", last, "--keep", "last", *old)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("is below the start's", r.stderr)
        self.assertLess(top1(last), 0.2)
        self.assertNotIn("kept_epoch", json.loads(load_with_metadata(last)[1])["run"])

    def test_an_absurd_rate_stops_with_one_line_and_the_start_bit_exactly(self):
        one_shot = self.shared_path("one_shot.pt")
        for mode, said in (("stop", "(--on-divergence stop)"), ("recover", "after 3 recoveries")):
            out = self.out(f"{mode}.pt")
            r = ttq("finetune", self.fp, "-o", out, "--optimizer", "sgd", "--lr", "100", "--on-divergence", mode,
                    "--epochs", "1", *DATA)
            self.assertEqual(r.returncode, 1, r.stderr)
            errors = [line for line in r.stderr.splitlines() if line.startswith("ttq: error:")]
            self.assertEqual(len(errors), 1, r.stderr)
            self.assertIn(said, errors[0])
            self.assertIn(f"{out} holds the best state so far, the start (val top-1 {100 * self.one_shot_top1:.2f}%)",
                          errors[0])
            self.assertEqual(r.stderr.count("back to the start"), 0 if mode == "stop" else 3)
            self.assertEqual(same_parameters(out, one_shot), [])
            run = json.loads(load_with_metadata(out)[1])["run"]
            self.assertEqual((run["kept_epoch"], run["steps"]), (0, 0))

    def test_explicit_values_are_kept_and_bad_ones_refused(self):
        r = ttq("finetune", self.fp, "-o", self.out("sgd.pt"), "--optimizer", "sgd", "--lr", "0.003",
                "--max-steps", "2", *DATA)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotIn("--optimizer auto", r.stderr)
        self.assertNotIn("--lr auto", r.stderr)
        run = json.loads(load_with_metadata(self.out("sgd.pt"))[1])["run"]
        self.assertEqual((run["options"]["optimizer"], run["options"]["lr"]), ("sgd", 0.003))
        self.assertNotIn("recipe", run)
        for bad in ("0", "-1", "fast"):
            r = ttq("finetune", self.fp, "-o", self.out("x.pt"), "--lr", bad, *DATA)
            self.assertEqual(r.returncode, 2, (bad, r.stderr))
            self.assertIn("--lr", r.stderr)


if __name__ == "__main__":
    unittest.main()
