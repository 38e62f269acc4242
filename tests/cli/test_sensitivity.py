"""ttq sensitivity end to end: per-layer one-shot drops recomputed independently in PyTorch on a
trained CNN and real Fashion-MNIST images, the frontier, unlabeled outputs, the plot and errors."""
import json
import os
import re
import unittest
import xml.etree.ElementTree as ET

import torch

from ttq_testing import SharedWorkdir, fashion_test_tensors, fixture, load_with_metadata, ttq

SAMPLES = 600


def ternarize(w, threshold):
    """The max-scaled rule with mean scales (shared/docs/algorithm.md), written here independently."""
    delta = threshold * w.abs().max()
    wp, wn = w[w > delta].mean(), -w[w < -delta].mean()
    return torch.where(w > delta, wp, torch.where(w < -delta, -wn, torch.zeros_like(w))), delta, wp, wn


class TrainedCnn(SharedWorkdir):
    """small_cnn trained for an epoch, real test images as tensors, and its sensitivity run."""

    @classmethod
    def setUpShared(cls):
        cls.fp = cls.shared_path("fp.pt")
        r = ttq("finetune", fixture("small_cnn.pt"), "-o", cls.fp, "--fp", "--optimizer", "adam", "--lr", "0.002",
                "--epochs", "1", "--subset", "3000", "--threads", "2", "--no-progress")
        assert r.returncode == 0, r.stderr
        cls.x, cls.y = fashion_test_tensors(SAMPLES)
        cls.data = cls.shared_path("fmnist.pt")
        torch.save({"x": cls.x, "y": cls.y, "x_test": cls.x, "y_test": cls.y}, cls.data)
        cls.plot = cls.shared_path("frontier.svg")
        cls.result = ttq("sensitivity", cls.fp, "--data", "tensors:" + cls.data, "--batch-size", "128", "--json",
                      "--plot", cls.plot, "--threads", "2")
        cls.report = json.loads(cls.result.stdout) if cls.result.returncode == 0 else None

    def setUp(self):
        super().setUp()
        self.assertEqual(self.result.returncode, 0, self.result.stderr)

    def top1(self, model):
        with torch.no_grad():
            return (model(self.x).argmax(1) == self.y).double().mean().item()


class Sensitivity(TrainedCnn):

    def test_each_drop_equals_pytorch_ternarizing_that_layer_alone(self):
        model = torch.jit.load(self.fp)
        fp_top1 = self.top1(model)
        self.assertEqual(self.report["metric"], "top1")
        self.assertEqual(self.report["samples"], SAMPLES)
        self.assertAlmostEqual(self.report["fp_value"], fp_top1, places=12)
        params = dict(model.named_parameters())
        names = [l["name"] for l in self.report["layers"]]
        self.assertEqual(len(names), 4)  # every candidate, the first and the last included
        drops = []
        for layer in self.report["layers"]:
            w = params[layer["name"]]
            original = w.detach().clone()
            t, delta, wp, wn = ternarize(original, 0.05)
            self.assertAlmostEqual(layer["delta"], delta.item(), places=6)
            self.assertAlmostEqual(layer["wp"] / wp.item(), 1, places=5)
            self.assertAlmostEqual(layer["wn"] / wn.item(), 1, places=5)
            with torch.no_grad():
                w.copy_(t)
                top1 = self.top1(model)
                w.copy_(original)
            self.assertAlmostEqual(layer["value"], top1, places=12, msg=layer["name"])
            self.assertAlmostEqual(layer["drop"], (fp_top1 - top1) * 100, places=9, msg=layer["name"])
            self.assertEqual(layer["numel"], w.numel())
            drops.append(layer["drop"])
        self.assertGreater(max(drops), 0)  # one-shot ternarization costs something somewhere

    def test_the_frontier_falls_in_size_and_each_point_is_its_set_evaluated(self):
        layers, frontier = self.report["layers"], self.report["frontier"]
        self.assertEqual(len(frontier), len(layers))
        sizes = [p["bytes_entropy"] for p in frontier]
        self.assertEqual(sizes, sorted(sizes, reverse=True))
        self.assertLess(sizes[0], self.report["model_bytes"])
        self.assertTrue(all(a["bytes_2bit"] > b["bytes_2bit"] for a, b in zip(frontier, frontier[1:])))
        by_name = {l["name"]: l for l in layers}
        costs = [max(by_name[p["added"]]["drop"], 0) / by_name[p["added"]]["bytes_saved"] for p in frontier]
        self.assertEqual(costs, sorted(costs))  # least drop per byte saved first
        self.assertEqual([p["layers"] for p in frontier], list(range(1, len(layers) + 1)))
        # The second point, recomputed: its two layers ternary together.
        model = torch.jit.load(self.fp)
        params = dict(model.named_parameters())
        with torch.no_grad():
            for p in frontier[:2]:
                w = params[p["added"]]
                w.copy_(ternarize(w.detach().clone(), 0.05)[0])
        self.assertAlmostEqual(frontier[1]["value"], self.top1(model), places=12)
        # Quantize's selection: the first and last layers in forward order stay FP.
        self.assertEqual([l["in_rule"] for l in layers], [False, True, True, False])
        self.assertEqual(self.report["rule"]["names"], [l["name"] for l in layers if l["in_rule"]])
        self.assertLess(self.report["rule"]["bytes_entropy"], self.report["model_bytes"])
        # The same sizes as inspect gives the model quantize writes with the same flags.
        r = ttq("quantize", self.fp, "-o", self.out("q.pt"), "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["totals"]["bytes_entropy"], self.report["rule"]["bytes_entropy"])

    def test_the_plot_is_svg_with_the_notable_points_marked(self):
        root = ET.parse(self.plot).getroot()
        self.assertTrue(root.tag.endswith("svg"))
        text = " ".join(t.text or "" for t in root.iter() if t.tag.endswith("text"))
        for label in ("full precision", "quantize's selection", "every layer", "model size"):
            self.assertIn(label, text)
        self.assertEqual(sum(1 for e in root.iter() if e.tag.endswith("polyline")), 2)

    def test_the_table_names_every_layer_and_the_frontier(self):
        r = ttq("sensitivity", self.fp, "--data", "tensors:" + self.data, "--subset", "200", "--threads", "2")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("on 200 samples", r.stdout)
        for layer in self.report["layers"]:
            self.assertIn(layer["name"], r.stdout)
        self.assertRegex(r.stdout, r"\nfrontier \(layers added by least drop per byte saved\)")
        self.assertRegex(r.stdout, r"quantize's selection: 2 ternary layers, .* at the codes' entropy \(\d+\.\d\dx\)")

    def test_without_labels_rel_mse_against_the_fp_outputs(self):
        data = fixture("regression_unlabeled.pt")
        r = ttq("sensitivity", fixture("regression_mlp.pt"), "--data", "tensors:" + data, "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        report = json.loads(r.stdout)
        self.assertEqual(report["metric"], "rel_mse")
        self.assertEqual(report["fp_value"], 0)
        model = torch.jit.load(fixture("regression_mlp.pt"))
        x = torch.load(data)["x_test"]
        with torch.no_grad():
            y = model(x).double()
        params = dict(model.named_parameters())
        for layer in report["layers"]:
            w = params[layer["name"]]
            original = w.detach().clone()
            with torch.no_grad():
                w.copy_(ternarize(original, 0.05)[0])
                rel = ((model(x).double() - y) ** 2).sum() / ((y - y.mean()) ** 2).sum()
                w.copy_(original)
            self.assertAlmostEqual(layer["drop"] / (100 * rel.item()), 1, places=5, msg=layer["name"])

    def test_a_dict_output_is_measured_by_agreement_with_the_fp_model(self):
        r = ttq("sensitivity", fixture("dict_output.pt"), "--data", "tensors:" + fixture("tensors.pt"),
                "--model-output", "logits", "--metric", "agreement", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        report = json.loads(r.stdout)
        self.assertEqual((report["metric"], report["fp_value"]), ("agreement", 1))
        self.assertTrue(all(0 <= l["value"] <= 1 for l in report["layers"]))

    def test_bad_requests_are_one_line_errors(self):
        cases = [
            (["sensitivity", fixture("regression_mlp.pt"), "--data", "tensors:" + fixture("regression_unlabeled.pt"),
              "--metric", "top1"], 2, r"--metric top1 needs labels and the data has none"),
            (["sensitivity", fixture("regression_mlp.pt"), "--data", "tensors:" + fixture("regression_unlabeled.pt"),
              "--metric", "agreement"], 2, r"--metric agreement needs one output of class scores"),
            (["sensitivity", self.fp, "--data", "tensors:" + self.data, "--exclude", "."], 2, r"nothing|no layer"),
            (["sensitivity", self.fp, "--data", "tensors:" + self.data, "--plot", self.out("no/such/dir/p.svg")], 1,
             r"p\.svg"),
            (["sensitivity", fixture("no_quantizable.pt")], 1, r"nothing to quantize|no .*layer"),
        ]
        for args, code, pattern in cases:
            with self.subTest(args=args[1:]):
                self.assert_one_error_line(ttq("-q", *args), code, pattern)
        self.assert_no_files()


class Budgets(TrainedCnn):
    """quantize and inspect with --max-drop and --target-ratio."""

    def budget(self, command, *flags, output=None):
        r = ttq(command, self.fp, *(["-o", output] if output else []), "--data", "tensors:" + self.data, "--json",
                "--threads", "2", *flags)
        self.assertEqual(r.returncode, 0, r.stderr)
        return json.loads(r.stdout)

    def test_max_drop_takes_the_frontier_within_it_then_each_layer_that_fits_and_holds_it(self):
        out = self.out("b.pt")
        doc = self.budget("quantize", "--max-drop", "1", "--budget-samples", "0", output=out)
        frontier = self.report["frontier"]
        within = [p for p in frontier if p["drop"] is not None and p["drop"] <= 1]
        self.assertTrue(within)
        prefix = [p["added"] for p in frontier[:within[-1]["layers"]]]
        b = doc["budget"]
        expected = [l["name"] for l in b["layers"] if l["ternary"]]
        self.assertLessEqual(set(prefix), set(expected))
        self.assertLessEqual(b["drop"], 1)
        alone = {l["name"]: l["drop"] for l in self.report["layers"]}
        for l in b["layers"]:  # each layer left out breaks the budget alone, or in the set it was tried in
            if l["ternary"]:
                continue
            m = re.fullmatch(r"the set with it drops (\S+), beyond 1", l["reason"])
            if m:
                self.assertGreater(float(m.group(1)), 1, l)
            else:
                self.assertEqual(l["reason"], "beyond 1 alone", l)
                self.assertGreater(alone[l["name"]], 1, l)
        self.assertEqual((b["budget"], b["metric"], b["samples"]), ("--max-drop 1", "top1", SAMPLES))
        for l in b["layers"]:
            self.assertEqual(l["reason"] == "", l["ternary"], l)
        # The file holds exactly that choice, and on the samples it was chosen on it keeps the budget.
        model, text = load_with_metadata(out)
        meta = json.loads(text)
        self.assertEqual(sorted(l["name"] for l in meta["layers"]), sorted(expected))
        self.assertEqual(meta["budget"], b)
        self.assertEqual(meta["options"]["only"], [l["name"] for l in b["layers"] if l["ternary"]])
        drop = (self.report["fp_value"] - self.top1(model)) * 100
        self.assertAlmostEqual(drop, b["drop"], places=9)
        self.assertLessEqual(drop, 1)
        # inspect shows what the budget chose and why the others stay full precision.
        r = ttq("inspect", out)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout, r"\nbudget --max-drop 1: %d of 4 layers ternary" % len(expected))
        for l in b["layers"]:
            if not l["ternary"]:
                self.assertIn("kept full precision: %s (alone" % l["name"], r.stdout)

    def test_target_ratio_takes_the_first_frontier_set_that_reaches_it(self):
        target = 1.5
        frontier = self.report["frontier"]
        first = next(p for p in frontier if p["ratio_entropy"] >= target)
        out = self.out("t.pt")
        doc = self.budget("quantize", "--target-ratio", str(target), "--budget-samples", "0", output=out)
        self.assertGreaterEqual(doc["totals"]["ratio_entropy"], target)
        self.assertEqual(doc["totals"]["coded_layers"], first["layers"])
        self.assertAlmostEqual(doc["budget"]["ratio"], doc["totals"]["ratio_entropy"], places=9)
        # inspect's dry run makes the same choice without writing anything.
        dry = self.budget("inspect", "--target-ratio", str(target), "--budget-samples", "0")
        self.assertTrue(dry["dry_run"])
        self.assertEqual(dry["budget"]["layers"], doc["budget"]["layers"])
        self.assertEqual(dry["totals"]["bytes_entropy"], doc["totals"]["bytes_entropy"])

    def test_budget_samples_bound_the_measurement(self):
        doc = self.budget("inspect", "--max-drop", "100", "--budget-samples", "100")
        self.assertEqual(doc["budget"]["samples"], 100)
        self.assertTrue(all(l["ternary"] for l in doc["budget"]["layers"]))  # every set drops less than 100 points

    def test_a_budget_that_cannot_be_met_is_a_usage_error(self):
        data = ["--data", "tensors:" + self.data]
        cases = [
            (["quantize", self.fp, "-o", self.out("x.pt"), *data, "--target-ratio", "1000"], 2,
             r"--target-ratio 1000: every layer ternary makes the model only \d+\.\d\dx smaller"),
            (["quantize", self.fp, "-o", self.out("x.pt"), *data, "--max-drop", "-100"], 2,
             r"--max-drop -100: no layer keeps the one-shot drop within it"),
            (["quantize", self.fp, "-o", self.out("x.pt"), *data], 2, r"--data is read by a budget only"),
            (["quantize", self.fp, "-o", self.out("x.pt"), "--max-drop", "1", "--target-ratio", "2"], 2, r"excludes"),
            (["inspect", self.ternary(), *data, "--max-drop", "1"], 2, r"has ternary layers already"),
        ]
        for args, code, pattern in cases:
            with self.subTest(args=args):
                self.assert_one_error_line(ttq("-q", *args), code, pattern)
        self.assertEqual(os.listdir(self.dir), ["q.pt"])  # the ternary model made for the last case only

    def test_finetune_trains_the_layers_a_budget_chose_and_checks_it_after(self):
        out = self.out("f.pt")
        r = ttq("finetune", self.fp, "-o", out, "--data", "tensors:" + self.data, "--max-drop", "2",
                "--budget-samples", "0", "--epochs", "1", "--threads", "2", "--no-progress")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stderr, r"--max-drop 2: after training, top1 drops [-+]\d+\.\d\d on the %d validation "
                                   r"samples it was chosen on \(one-shot: [-+]\d+\.\d\d\)" % SAMPLES)
        meta = json.loads(load_with_metadata(out)[1])
        chosen = [l["name"] for l in meta["budget"]["layers"] if l["ternary"]]
        self.assertEqual(sorted(l["name"] for l in meta["layers"]), sorted(chosen))
        self.assertEqual(meta["options"]["only"], chosen)
        quantized = self.budget("quantize", "--max-drop", "2", "--budget-samples", "0", output=self.out("q2.pt"))
        self.assertEqual(quantized["budget"]["layers"], meta["budget"]["layers"])  # the same measurement
        r = ttq("-q", "finetune", self.fp, "-o", self.out("x.pt"), "--fp", "--max-drop", "2")
        self.assert_one_error_line(r, 2, r"--fp trains the model as given: a budget chooses ternary layers")

    def test_two_ranks_share_the_measuring_and_choose_as_one_process(self):
        from test_distributed import finish, free_port, start_ranks
        args = ["finetune", self.fp, "--data", "tensors:" + self.data, "--target-ratio", "1.5", "--budget-samples", "0",
                "--max-steps", "2", "--threads", "1", "--no-progress", "--world-size", "2",
                "--master-port", str(free_port())]
        results = finish(start_ranks([[*args, "-o", self.out("r.pt"), "--rank", str(r)] for r in range(2)]))
        for code, _, err in results:
            self.assertEqual(code, 0, err)
        two = json.loads(load_with_metadata(self.out("r.pt"))[1])["budget"]
        one = self.budget("inspect", "--target-ratio", "1.5", "--budget-samples", "0")["budget"]
        self.assertEqual([(l["name"], l["ternary"]) for l in two["layers"]],
                         [(l["name"], l["ternary"]) for l in one["layers"]])
        for a, b in zip(two["layers"], one["layers"]):
            self.assertAlmostEqual(a["drop"], b["drop"], places=9)

    def ternary(self):
        path = self.out("q.pt")
        r = ttq("quantize", self.fp, "-o", path)
        self.assertEqual(r.returncode, 0, r.stderr)
        return path


if __name__ == "__main__":
    unittest.main()
