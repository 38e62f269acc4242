"""`ttq finetune` with its defaults on trained full-precision models of several families, as a new
user runs it: no flag but the length of the run. Each fixture (scripts/make_fixtures.py) is trained
here in full precision for two epochs on Fashion-MNIST, the embedded default, then fine-tuned with
TTQ for one epoch with every default. The small CNN without normalization is in test_recipe.py.

Environment (set by CTest): see ttq_testing.py.
"""
import json
import sys
import unittest

from ttq_testing import SharedWorkdir, load_with_metadata, top1, train_then_finetune_with_defaults

class Family:
    """One family of the zoo: `name` (its fixture) and the optimizer --optimizer auto picks for it;
    one default epoch ends within 1.5 pp of its full-precision model."""
    name = optimizer = None
    within = 0.015

    @classmethod
    def setUpShared(cls):
        train_then_finetune_with_defaults(cls, cls.name + ".pt", fp_epochs=2)

    def test_one_default_epoch_beats_one_shot_and_stays_near_full_precision(self):
        self.assertEqual(self.result.returncode, 0, self.result.stderr)
        self.assertGreater(self.fp_top1, 0.84)  # trained
        got = top1(self.model)
        print(f"\n{self.name}: FP {100 * self.fp_top1:.2f}%, one-shot {100 * self.one_shot_top1:.2f}%, one default "
              f"epoch {100 * got:.2f}%", file=sys.stderr)  # the figures of the note, in CTest's log
        self.assertAlmostEqual(got, json.loads(self.result.stdout)["run"]["val_top1"], places=6)
        self.assertGreaterEqual(got, self.one_shot_top1)
        self.assertGreater(got, self.fp_top1 - self.within, (got, self.fp_top1, self.one_shot_top1))

    def test_the_recipe_is_adam_at_the_probed_rate(self):
        self.assertIn(f"--optimizer auto: {self.optimizer} (", self.result.stderr)
        self.assertIn("--lr auto: ", self.result.stderr)
        self.assertIn("(a range test of ", self.result.stderr)
        run = json.loads(load_with_metadata(self.model)[1])["run"]
        self.assertEqual(run["options"]["optimizer"], self.optimizer)
        self.assertNotIn("recoveries", run)  # the defaults did not diverge


class BatchNormCnn(Family, SharedWorkdir):
    name, optimizer = "bn_cnn", "adam"


class DepthwiseSeparableCnn(Family, SharedWorkdir):
    # Measured before the probe: sgd at 0.01 (the old rule for normalized layers) 83.37%, against FP
    # 88.22%; with the probe's rate for adam (0.0042) 87.28%.
    name, optimizer = "depthwise_cnn", "adam"


class VitWithClassToken(Family, SharedWorkdir):
    name, optimizer = "tiny_vit", "adam"


class LstmOverImageRows(Family, SharedWorkdir):
    name, optimizer = "row_lstm", "adam"


if __name__ == "__main__":
    unittest.main()
