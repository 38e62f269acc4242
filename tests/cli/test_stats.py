"""End-to-end tests of `ttq stats`: logs of real finetune runs on Fashion-MNIST, models written by
quantize/finetune/export, the SVG rendered by Debian's rsvg-convert and looked at with PIL.

Environment (set by CTest): see ttq_testing.py.
"""
import csv
import io
import json
import os
import pty
import re
import shutil
import subprocess
import unittest
import xml.etree.ElementTree as ET

from PIL import Image

from ttq_testing import TTQ, SharedWorkdir, Workdir, fixture, load_with_metadata, read_log, ttq

# 1024 samples in batches of 64: 16 steps an epoch; a step record every 4 steps.
RUN = ["--subset", "1024", "--batch-size", "64", "--log-every", "4", "--seed", "5",
       "--threads", "1", "--init", "mean", "--optimizer", "adam", "--lr", "0.002", "--no-progress"]
LAYER_METRICS = ("wp", "wn", "delta", "sparsity", "neg", "pos")
SPARK = set("▁▂▃▄▅▆▇█")


def layer_values(layer):
    """The log's layer record in stats' metric names."""
    return {"wp": layer["wp"], "wn": layer["wn"], "delta": layer["delta"], "sparsity": layer["zero"],
            "neg": layer["neg"], "pos": layer["pos"]}


def points_of(records):
    """Step -> layer name -> values, as a reader that lets later records replace earlier ones sees it."""
    points = {}
    for r in records:
        if r["type"] in ("init", "step", "epoch"):
            for s in [s for s in points if s >= r["step"]]:
                del points[s]
            points[r["step"]] = {l["name"]: layer_values(l) for l in r["layers"]}
    return points


class StatsOfRuns(SharedWorkdir):
    @classmethod
    def setUpShared(cls):
        cls.log_a, cls.model_a = cls.shared_path("a.jsonl"), cls.shared_path("a.pt")
        cls.log_b, cls.model_b = cls.shared_path("b.jsonl"), cls.shared_path("b.pt")
        for log, model, threshold in ((cls.log_a, cls.model_a, "0.05"), (cls.log_b, cls.model_b, "0.15")):
            r = ttq("finetune", fixture("small_cnn.pt"), "-o", model, "--log", log, "--threshold", threshold,
                    "--epochs", "3", *RUN)
            assert r.returncode == 0, r.stderr
        cls.records = read_log(cls.log_a)

    def stats(self, *args):
        r = ttq("stats", *args)
        self.assertEqual(r.returncode, 0, r.stderr)
        return r.stdout

    def test_the_log_starts_with_the_layers_before_training(self):
        self.assertEqual(self.records[0]["type"], "run")
        self.assertEqual((self.records[0]["epochs"], self.records[0]["steps_per_epoch"]), (3, 16))
        self.assertEqual((self.records[1]["type"], self.records[1]["step"]), ("init", 0))
        self.assertEqual([l["name"] for l in self.records[1]["layers"]], ["conv2.weight", "fc1.weight"])

    def test_the_kept_epoch_is_marked_and_its_metrics_are_the_final_ones(self):
        end, = [r for r in self.records if r["type"] == "end"]
        _, meta = load_with_metadata(self.model_a)
        run = json.loads(meta)["run"]
        self.assertEqual(end["kept_epoch"], run["kept_epoch"])
        self.assertEqual(end["val_top1"], run["val_top1"])
        kept = [l for l in self.stats(self.log_a).splitlines() if l.endswith("<- kept")]
        if end["kept_epoch"] == 0:
            self.assertEqual(kept, [])
            self.assertIn("(kept: the start", self.stats(self.log_a))
        else:
            self.assertEqual(len(kept), 1)
            self.assertEqual(kept[0].split()[0], str(end["kept_epoch"]))
        doc = json.loads(self.stats(self.log_a, "--json"))
        self.assertEqual(doc["runs"][0]["kept_epoch"], end["kept_epoch"])
        self.assertEqual(doc["runs"][0]["final"]["top1"], end["val_top1"])

    def test_json_summarizes_every_layer_trajectory(self):
        doc = json.loads(self.stats(self.log_a, "--json"))
        self.assertEqual(doc["expectations"], [])
        run, = doc["runs"]
        points = points_of(self.records)
        self.assertEqual([p["step"] for p in run["points"]], sorted(points))
        self.assertEqual([p["step"] for p in run["points"]], [0] + list(range(4, 49, 4)))
        self.assertEqual(run["points"][-1]["position"], 3.0)
        for layer in run["layers"]:
            for metric in LAYER_METRICS:
                values = [points[s][layer["name"]][metric] for s in sorted(points)]
                self.assertEqual(layer["first"][metric], values[0])
                self.assertEqual(layer["last"][metric], values[-1])
                self.assertEqual(layer["min"][metric], min(values))
                self.assertEqual(layer["max"][metric], max(values))
        epochs = [r for r in self.records if r["type"] == "epoch"]
        self.assertEqual([e["val_top1"] for e in run["epochs"]], [e["val_top1"] for e in epochs])
        self.assertEqual(run["final"]["top1"], epochs[-1]["val_top1"])
        # Training moved the scales: the trajectory is not flat.
        wp = run["layers"][0]
        self.assertNotEqual(wp["first"]["wp"], wp["last"]["wp"])

    def test_text_shows_epochs_trajectories_and_final_fractions(self):
        out = self.stats(self.log_a)
        self.assertFalse(SPARK & set(out), "no sparklines when piped")
        self.assertRegex(out, r"small_cnn\.pt on fashion-mnist:\S+, 3 of 3 epochs, 48 steps")
        self.assertRegex(out, r"\n\s+epoch\s+step\s+lr\s+train_loss\s+train_top1\s+val_loss\s+val_top1")
        self.assertEqual(len([l for l in out.splitlines() if l.lstrip().startswith(("1 ", "2 ", "3 "))]), 3)
        last = {l["name"]: l for l in [r for r in self.records if r["type"] == "epoch"][-1]["layers"]}
        first = {l["name"]: l for l in self.records[1]["layers"]}
        for name in ("conv2.weight", "fc1.weight"):
            self.assertRegex(out, r"\n%s\s+wp\s+%s\s+%s\s" % (name.replace(".", r"\."), "%.4g" % first[name]["wp"],
                                                               "%.4g" % last[name]["wp"]))
            self.assertRegex(out, r"\n%s(\s+\S+){3}\s+%.4f\s+%.4f\s+%.4f\n" % (
                name.replace(".", r"\."), last[name]["neg"], last[name]["zero"], last[name]["pos"]))

    def test_sparklines_on_a_terminal_unless_no_color(self):
        def on_tty(env):
            master, slave = pty.openpty()
            p = subprocess.Popen([TTQ, "stats", self.log_a], stdout=slave, stderr=subprocess.PIPE, env=env)
            os.close(slave)
            chunks = []
            while True:
                try:
                    data = os.read(master, 65536)
                except OSError:
                    break
                if not data:
                    break
                chunks.append(data)
            p.wait(timeout=60)
            p.stderr.close()
            os.close(master)
            return b"".join(chunks).decode()

        env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
        lines = [l for l in on_tty(env).splitlines() if SPARK & set(l)]
        self.assertEqual(len(lines), 8)  # wp, wn, delta, sparsity of two layers
        for l in lines:
            self.assertEqual(len([c for c in l if c in SPARK]), 13)  # init + 12 logged steps
        self.assertFalse(SPARK & set(on_tty(dict(env, NO_COLOR="1"))))
        self.assertTrue(SPARK & set(self.stats(self.log_a, "--sparklines", "always")))

    def test_layers_regex_chooses_layers(self):
        doc = json.loads(self.stats(self.log_a, "--json", "--layers", "^fc"))
        self.assertEqual([l["name"] for l in doc["runs"][0]["layers"]], ["fc1.weight"])
        self.assertNotIn("conv2", self.stats(self.log_a, "--layers", "^fc"))
        self.assert_one_error_line(ttq("stats", self.log_a, "--layers", "^nothing"), 2, r"--layers matches no layer")
        self.assert_one_error_line(ttq("stats", self.log_a, "--layers", "(("), 2, r"invalid regex")

    def test_csv_is_long_format_with_every_logged_value(self):
        rows = list(csv.DictReader(io.StringIO(self.stats(self.log_a, "--format", "csv"))))
        self.assertEqual(list(rows[0]), ["epoch", "step", "layer", "metric", "value"])
        points = points_of(self.records)
        layer_rows = [r for r in rows if r["layer"]]
        self.assertEqual(len(layer_rows), len(points) * 2 * len(LAYER_METRICS))
        for r in layer_rows:
            expected = points[int(r["step"])][r["layer"]][r["metric"]]
            self.assertAlmostEqual(float(r["value"]), expected, delta=1e-8 * max(1, abs(expected)))
            self.assertAlmostEqual(float(r["epoch"]), int(r["step"]) / 16, places=5)
        val = [(int(r["step"]), float(r["value"])) for r in rows if r["metric"] == "val_top1"]
        epochs = [r for r in self.records if r["type"] == "epoch"]
        self.assertEqual([s for s, _ in val], [16, 32, 48])
        for (_, v), e in zip(val, epochs):
            self.assertAlmostEqual(v, e["val_top1"], places=8)
        losses = [r for r in rows if r["metric"] == "loss"]
        self.assertEqual([int(r["step"]) for r in losses], list(range(4, 49, 4)))

    def test_expectations_pass_and_fail_with_every_failure_listed(self):
        final = {l["name"]: l for l in [r for r in self.records if r["type"] == "epoch"][-1]["layers"]}
        low = min(l["zero"] for l in final.values())
        r = ttq("stats", self.log_a, "--expect", "wp>0", "--expect", "sparsity>=%r" % low, "--expect", "top1>=0.1")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("all 3 expectations hold", r.stderr)

        r = ttq("stats", self.log_a, "--expect", "sparsity>=0.99", "--expect", "top1 >= 99.5%", "--expect", "wn>0")
        self.assertEqual(r.returncode, 1)
        lines = r.stderr.strip().splitlines()
        self.assertEqual(len(lines), 4, r.stderr)  # two layers, top1, then the summary
        self.assertRegex(lines[0], r"^ttq: expect 'sparsity>=0\.99' failed: conv2\.weight sparsity = 0\.\d+")
        self.assertRegex(lines[1], r"^ttq: expect 'sparsity>=0\.99' failed: fc1\.weight sparsity = ")
        self.assertRegex(lines[2], r"^ttq: expect 'top1 >= 99\.5%' failed: top1 = 0\.\d+")
        self.assertEqual(lines[3], "ttq: error: 2 of 3 expectations failed")
        self.assertIn("conv2.weight", r.stdout)  # the report is still printed

        doc = json.loads(ttq("stats", self.log_a, "--json", "--expect", "sparsity>=0.99", "--expect", "wp>0").stdout)
        self.assertEqual([(e["condition"], e["passed"], len(e["failures"])) for e in doc["expectations"]],
                         [("sparsity>=0.99", False, 2), ("wp>0", True, 0)])

        self.assert_one_error_line(ttq("stats", self.log_a, "--expect", "accuracy>1"), 2, r"unknown metric 'accuracy'")
        self.assert_one_error_line(ttq("stats", self.log_a, "--expect", "top1 0.5"), 2, r"METRIC OP VALUE")
        self.assert_one_error_line(ttq("stats", self.log_a, "--expect", "top1>=x"), 2, r"'x' is not a number")

    def test_model_files_give_their_final_state(self):
        log_final = json.loads(self.stats(self.log_a, "--json"))["runs"][0]["points"][-1]["layers"]
        for path in (self.model_a, self.convert(self.model_a)):
            doc = json.loads(self.stats(path, "--json"))
            run, = doc["runs"]
            self.assertEqual(run["kind"], "model")
            self.assertEqual(len(run["points"]), 1)
            for got, want in zip(run["points"][0]["layers"], log_final):
                self.assertEqual(got["name"], want["name"])
                for m in LAYER_METRICS:
                    self.assertAlmostEqual(got[m], want[m], places=6, msg=(path, m))
            self.assertIn("top1", run["final"])
            self.assertRegex(self.stats(path), r"validation after training: top1 \d+\.\d\d%")
        self.assertEqual(ttq("stats", self.model_a, "--expect", "sparsity>0", "--expect", "top1>0.1").returncode, 0)

    def convert(self, model):
        archive = self.out("a.ttqz")
        r = ttq("export", model, "-o", archive)
        self.assertEqual(r.returncode, 0, r.stderr)
        return archive

    def test_a_quantized_model_has_layers_but_no_run(self):
        q = self.out("q.pt")
        self.assertEqual(ttq("quantize", fixture("small_cnn.pt"), "-o", q, "--sparsity", "0.5").returncode, 0)
        inspected = json.loads(ttq("inspect", q, "--json").stdout)
        run = json.loads(self.stats(q, "--json"))["runs"][0]
        ternary = [l for l in inspected["layers"] if l["kind"] == "ternary"]
        self.assertEqual([l["name"] for l in run["points"][0]["layers"]], [l["name"] for l in ternary])
        for got, want in zip(run["points"][0]["layers"], ternary):
            self.assertAlmostEqual(got["sparsity"], want["sparsity"], places=6)
            self.assertAlmostEqual(got["wp"], want["wp"], places=6)
        r = ttq("stats", q, "--expect", "top1>0.5")
        self.assertEqual(r.returncode, 1)
        self.assertIn("top1 is not recorded", r.stderr)

    def test_two_runs_side_by_side(self):
        out = self.stats(self.log_a, self.log_b)
        self.assertRegex(out, r"^A  .*a\.jsonl: .*\nB  .*b\.jsonl: ")
        final_b = json.loads(self.stats(self.log_b, "--json"))["runs"][0]["points"][-1]["layers"]
        final_a = json.loads(self.stats(self.log_a, "--json"))["runs"][0]["points"][-1]["layers"]
        rows = re.findall(r"^\S*\s+sparsity\s+(\S+)\s+(\S+)\s+(\S+)$", out, re.M)
        self.assertEqual(rows, [("%.4g" % a["sparsity"], "%.4g" % b["sparsity"], "%+.4g" % (b["sparsity"] - a["sparsity"]))
                                for a, b in zip(final_a, final_b)])
        self.assertGreater(final_b[0]["sparsity"], final_a[0]["sparsity"])  # the higher threshold
        rows = list(csv.DictReader(io.StringIO(self.stats(self.log_a, self.model_b, "--format", "csv"))))
        self.assertEqual(list(rows[0]), ["run", "epoch", "step", "layer", "metric", "value"])
        self.assertEqual({r["run"] for r in rows}, {self.log_a, self.model_b})
        r = ttq("stats", self.log_a, self.log_b, "--expect", "sparsity>=%r" % final_b[0]["sparsity"])
        self.assertEqual(r.returncode, 1)
        self.assertIn("a.jsonl: conv2.weight sparsity", r.stderr)
        self.assertNotIn("b.jsonl: conv2.weight", r.stderr)

    def test_plot_renders_the_paper_figure(self):
        svg = self.out("run.svg")
        r = ttq("stats", self.log_a, "--plot", svg)
        self.assertEqual(r.returncode, 0, r.stderr)
        root = ET.parse(svg).getroot()  # well-formed XML
        texts = {t.text for t in root.iter("{http://www.w3.org/2000/svg}text")}
        for label in ("conv2.weight", "fc1.weight", "Wp", "−Wn", "epochs", "accuracy (top-1)", "weights −/0/+"):
            self.assertIn(label, texts)
        self.assertFalse([e for e in root.iter() if "href" in "".join(e.attrib)], "self-contained: no links")

        png = self.out("run.png")
        subprocess.run(["rsvg-convert", svg, "-o", png], check=True)
        image = Image.open(png).convert("RGB")
        self.assertEqual(image.size, (int(root.get("width")), int(root.get("height"))))
        pixels = image.getdata()
        colors = {}
        for p in pixels:
            colors[p] = colors.get(p, 0) + 1
        non_white = sum(n for c, n in colors.items() if c != (255, 255, 255))
        self.assertGreater(non_white / len(pixels), 0.15)  # the stacked areas fill their panels
        # Wp and −Wn curves in their colours (#1f77b4, #d62728), a large area of the zero band.
        self.assertGreater(colors.get((0x1f, 0x77, 0xb4), 0), 200)
        self.assertGreater(colors.get((0xd6, 0x27, 0x28), 0), 200)

    def test_plot_refuses_a_model_and_leaves_no_file(self):
        svg = self.out("m.svg")
        self.assert_one_error_line(ttq("stats", self.model_a, "--plot", svg), 2, r"--plot draws .* one run log")
        self.assert_no_files()


class ResumedLogs(Workdir):
    def test_a_crash_and_resume_reads_as_the_uninterrupted_run(self):
        common = ["finetune", fixture("small_cnn.pt"), *RUN, "--epochs", "2"]
        r = ttq(*common, "-o", self.out("full.pt"), "--log", self.out("full.jsonl"))
        self.assertEqual(r.returncode, 0, r.stderr)
        ck = self.out("ck")
        r = ttq(*common, "-o", self.out("r.pt"), "--log", self.out("r.jsonl"), "--checkpoint-dir", ck, "--max-steps", "28")
        self.assertEqual(r.returncode, 0, r.stderr)
        # As if killed after logging step 28 but before its checkpoint: resume from epoch 1 (step 16).
        os.remove(os.path.join(ck, "checkpoint-0000000028.pt"))
        r = ttq(*common, "-o", self.out("r.pt"), "--log", self.out("r.jsonl"), "--checkpoint-dir", ck, "--resume")
        self.assertEqual(r.returncode, 0, r.stderr)
        steps = [r["step"] for r in read_log(self.out("r.jsonl")) if r["type"] == "step"]
        self.assertEqual(steps.count(20), 2)  # the log really holds repeated records

        full = json.loads(self.stats_json(self.out("full.jsonl")))["runs"][0]
        resumed = json.loads(self.stats_json(self.out("r.jsonl")))["runs"][0]
        self.assertEqual(resumed["points"], full["points"])
        self.assertEqual([(e["epoch"], e["partial"], e["val_top1"]) for e in resumed["epochs"]],
                         [(e["epoch"], e["partial"], e["val_top1"]) for e in full["epochs"]])

    def stats_json(self, path):
        r = ttq("stats", path, "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        return r.stdout


class BadInput(Workdir):
    def write(self, name, text):
        path = self.out(name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_each_bad_log_gets_one_clear_line(self):
        shutil.copy(fixture("random.bin"), self.out("random.bin"))
        run = json.dumps({"type": "run", "version": 1, "tool": "ttq 0.1.0", "model": "m.pt", "data": "d",
                          "options": {}})
        step = json.dumps({"type": "step", "epoch": 1, "step": 4, "lr": 0.1, "loss": 2.0, "layers": []})
        cases = {
            self.write("empty.jsonl", ""): r"empty\.jsonl: empty log",
            self.write("blank.jsonl", "\n\n"): r"blank\.jsonl: empty log",
            self.write("text.jsonl", "epoch 1 loss 0.3\n"): r"text\.jsonl: not a ttq run log .*line 1 is not JSON",
            self.write("garbage.jsonl", run + "\nnot json\n" + step + "\n"): r"garbage\.jsonl: line 2 is not JSON",
            self.write("v9.jsonl", run.replace('"version": 1', '"version": 9') + "\n"):
                r"v9\.jsonl: run log version 9; this ttq reads version 1 \(upgrade ttq\)",
            self.write("headless.jsonl", step + "\n"): r"headless\.jsonl: not a ttq run log \(the first record",
            self.write("fields.jsonl", run + "\n" + step.replace('"loss"', '"lost"') + "\n"):
                r"fields\.jsonl: line 2: malformed step record",
            self.out("random.bin"): r"random\.bin: not a ttq run log",
            self.out("missing.jsonl"): r"missing\.jsonl: no such file",
            fixture("small_cnn.pt"): r"small_cnn\.pt: no TTQ metadata",
            fixture("eager_pickle.pt"): r"eager_pickle\.pt: a torch\.save\(\) pickle",
        }
        for path, pattern in cases.items():
            with self.subTest(path=os.path.basename(path)):
                self.assert_one_error_line(ttq("stats", path), 1, pattern)

    def test_a_torn_last_line_is_skipped_with_a_warning(self):
        run = json.dumps({"type": "run", "version": 1, "tool": "ttq 0.1.0", "model": "m.pt", "data": "d",
                          "options": {}})
        step = json.dumps({"type": "step", "epoch": 1, "step": 4, "lr": 0.1, "loss": 2.0, "layers": []})
        r = ttq("stats", self.write("cut.jsonl", run + "\n" + step + "\n" + step[:30]), "--format", "csv")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stderr, r"cut\.jsonl: line 3 is torn .*read up to the line before")
        self.assertIn("4,,loss,2", r.stdout.replace(" ", ""))

    def test_usage_errors(self):
        self.assert_one_error_line(ttq("stats"), 2, r"FILE")
        self.assert_one_error_line(ttq("stats", "a", "b", "c"), 2, r"not expected: c")
        self.assert_one_error_line(ttq("stats", "a", "--format", "xml"), 2, r"--format")
        self.assert_one_error_line(ttq("stats", "a", "--format", "csv", "--json"), 2, r"--json")


if __name__ == "__main__":
    unittest.main()
