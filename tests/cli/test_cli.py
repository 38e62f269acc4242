"""End-to-end tests of the ttq binary, run as a user runs it; outputs are loaded back by PyTorch.

Environment (set by CTest): see ttq_testing.py; TTQ_MAN (the man/ folder).
"""
import json
import math
import os
import re
import subprocess

import unittest
import zipfile

import torch

from ttq_testing import FIX, Workdir, fixture, load_with_metadata, ttq

MAN = os.environ["TTQ_MAN"]

# (fixture, example input) for every model quantize must handle.
MODELS = {
    "resnet18.pt": (2, 3, 64, 64),
    "mobilenet_v2.pt": (2, 3, 64, 64),
    "small_cnn.pt": (2, 1, 28, 28),
    "vit_small.pt": (2, 3, 32, 32),
    "convnext_small.pt": (2, 3, 32, 32),
}


def quantized_names(path):
    meta = json.loads(load_with_metadata(path)[1])
    return {layer["name"]: layer for layer in meta["layers"]}


class QuantizeOutputs(Workdir):
    def check_model(self, name, extra_args=()):
        out = self.out("q.pt")
        r = ttq("quantize", fixture(name), "-o", out, *extra_args)
        self.assertEqual(r.returncode, 0, r.stderr)
        original = dict(torch.jit.load(fixture(name)).named_parameters())
        quantized, meta_text = load_with_metadata(out)
        meta = json.loads(meta_text)
        layers = {layer["name"]: layer for layer in meta["layers"]}
        self.assertGreater(len(layers), 0)
        for pname, w in quantized.named_parameters():
            if pname in layers:
                layer = layers[pname]
                values = set(torch.unique(w).tolist())
                self.assertEqual(len(values), 3, pname)
                self.assertEqual(values, {-layer["wn"], 0.0, layer["wp"]}, pname)
                self.assertEqual(list(w.shape), layer["shape"])
                x = original[pname]
                # The codes follow the rule of shared/docs/algorithm.md from the original weights.
                delta = layer["delta"]
                self.assertTrue(torch.equal(w > 0, x > delta), pname)
                self.assertTrue(torch.equal(w < 0, x < -delta), pname)
                self.assertEqual(int((w == 0).sum()), layer["counts"]["zero"])
            else:
                self.assertTrue(torch.equal(w, original[pname]), f"{pname} changed")
        for bname, b in quantized.named_buffers():
            self.assertTrue(torch.equal(b, dict(torch.jit.load(fixture(name)).named_buffers())[bname]))
        quantized.eval()
        y = quantized(torch.randn(*MODELS[name]))
        self.assertEqual(tuple(y.shape), (MODELS[name][0], 10))
        self.assertTrue(torch.isfinite(y).all())
        return layers, meta

    def test_resnet18(self):
        layers, meta = self.check_model("resnet18.pt")
        self.assertEqual(len(layers), 19)  # 21 candidates minus first conv and fc
        self.assertNotIn("conv1.weight", layers)
        self.assertNotIn("fc.weight", layers)
        self.assertEqual(meta["command"], "quantize")
        self.assertEqual(meta["options"]["mode"], "max-scaled")

    def test_mobilenet_v2(self):
        layers, _ = self.check_model("mobilenet_v2.pt")
        self.assertNotIn("features.0.0.weight", layers)
        self.assertNotIn("classifier.1.weight", layers)

    def test_vision_transformer_and_convnext_keep_tokens_embeddings_and_scales(self):
        layers, _ = self.check_model("vit_small.pt")  # check_model: every other tensor is unchanged
        self.assertNotIn("class_token", layers)
        self.assertNotIn("encoder.pos_embedding", layers)
        self.assertIn("encoder.layers.encoder_layer_0.self_attention.in_proj_weight", layers)
        layers, _ = self.check_model("convnext_small.pt")
        self.assertFalse([name for name in layers if "layer_scale" in name])
        self.assertIn("features.1.0.block.3.weight", layers)
        r = ttq("inspect", fixture("vit_small.pt"), "--json")
        excluded = {e["name"]: e["use"] for e in json.loads(r.stdout)["excluded"]}
        self.assertEqual(excluded, {"class_token": "expand", "encoder.pos_embedding": "add"})
        r = ttq("inspect", fixture("convnext_small.pt"))
        self.assertRegex(r.stdout, r"not layer weights, kept full precision: features\.1\.0\.layer_scale 16x1x1 \(mul\)")

    def test_small_cnn_without_batchnorm(self):
        layers, _ = self.check_model("small_cnn.pt")
        self.assertEqual(set(layers), {"conv2.weight", "fc1.weight"})

    def test_sparsity_mode_gives_exact_zero_fraction(self):
        layers, meta = self.check_model("resnet18.pt", ["--sparsity", "0.5"])
        self.assertEqual(meta["options"]["mode"], "sparsity")
        for layer in layers.values():
            n = math.prod(layer["shape"])
            self.assertEqual(layer["counts"]["zero"], n // 2, layer["name"])

    def test_mean_init_is_mean_of_each_side(self):
        layers, _ = self.check_model("small_cnn.pt", ["--init", "mean"])
        x = dict(torch.jit.load(fixture("small_cnn.pt")).named_parameters())["fc1.weight"]
        layer = layers["fc1.weight"]
        self.assertAlmostEqual(layer["wp"], float(x[x > layer["delta"]].mean()), places=6)
        self.assertAlmostEqual(layer["wn"], float(-x[x < -layer["delta"]].mean()), places=6)

    def test_ones_init(self):
        layers, _ = self.check_model("small_cnn.pt", ["--init", "ones"])
        for layer in layers.values():
            self.assertEqual((layer["wp"], layer["wn"]), (1.0, 1.0))

    def test_selection_flags(self):
        layers, _ = self.check_model(
            "resnet18.pt", ["--quantize-first", "--quantize-last", "--include", "^(layer1|conv1|fc)",
                            "--exclude", r"layer1\.1"])
        self.assertEqual(set(layers), {"conv1.weight", "layer1.0.conv1.weight", "layer1.0.conv2.weight",
                                       "fc.weight"})

    def test_json_summary(self):
        out = self.out("q.pt")
        r = ttq("quantize", fixture("small_cnn.pt"), "-o", out, "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        doc = json.loads(r.stdout)
        self.assertEqual(doc["output"], out)
        self.assertEqual([l["kind"] for l in doc["layers"]], ["fp", "ternary", "ternary", "fp"])
        self.assertTrue(doc["ttq_metadata"])

    def test_deterministic(self):
        a, b = self.out("a.pt"), self.out("b.pt")
        self.assertEqual(ttq("quantize", fixture("resnet18.pt"), "-o", a).returncode, 0)
        self.assertEqual(ttq("quantize", fixture("resnet18.pt"), "-o", b).returncode, 0)
        pa = dict(torch.jit.load(a).named_parameters())
        pb = dict(torch.jit.load(b).named_parameters())
        for k in pa:
            self.assertTrue(torch.equal(pa[k], pb[k]), k)


def entropy_bits(counts):
    n = sum(counts)
    return -sum(c / n * math.log2(c / n) for c in counts if c)


class Inspect(Workdir):
    def check_against_pytorch(self, path, doc, quantized):
        params = dict(torch.jit.load(path).named_parameters())
        buffers = dict(torch.jit.load(path).named_buffers())
        expected_names = [n for n, p in params.items() if p.dim() >= 2]
        self.assertEqual(sorted(l["name"] for l in doc["layers"]), sorted(expected_names))
        for layer in doc["layers"]:
            w = params[layer["name"]]
            self.assertEqual(layer["numel"], w.numel())
            self.assertEqual(layer["shape"], list(w.shape))
            if layer["kind"] == "fp":
                self.assertIsNone(layer["wp"])
                self.assertEqual(layer["bits"], 32.0)
                continue
            if quantized:
                self.assertEqual(layer["kind"], "ternary")
                counts = [int((w == -layer["wn"]).sum()), int((w == 0).sum()), int((w == layer["wp"]).sum())]
                self.assertEqual(sum(counts), w.numel())
            else:
                self.assertEqual(layer["kind"], "planned")
                delta = 0.05 * float(w.abs().max())
                self.assertAlmostEqual(layer["delta"], delta, delta=1e-6 * delta)
                counts = [int((w < -layer["delta"]).sum()), int((w.abs() <= layer["delta"]).sum()),
                          int((w > layer["delta"]).sum())]
                self.assertAlmostEqual(layer["wp"], float(w[w > layer["delta"]].mean()), places=5)
            self.assertEqual([layer["counts"][k] for k in ("neg", "zero", "pos")], counts)
            self.assertAlmostEqual(layer["sparsity"], counts[1] / w.numel(), places=12)
            self.assertAlmostEqual(layer["bits"], entropy_bits(counts), places=9)
        stored = sum(p.numel() * p.element_size() for p in params.values()) + \
            sum(b.numel() * b.element_size() for b in buffers.values())
        totals = doc["totals"]
        self.assertEqual(totals["model_bytes"], stored)
        self.assertEqual(totals["parameters"], sum(p.numel() for p in params.values()))
        coded = [l for l in doc["layers"] if l["kind"] != "fp"]
        two_bit = stored - sum(4 * l["numel"] - (l["numel"] * 2 + 7) // 8 - 8 for l in coded)
        self.assertEqual(totals["bytes_2bit"], two_bit)
        self.assertAlmostEqual(totals["ratio_2bit"], stored / two_bit, places=9)
        entropy = stored - sum(4 * l["numel"] - math.ceil(l["bits"] * l["numel"] / 8) - 8 for l in coded)
        self.assertAlmostEqual(totals["bytes_entropy"], entropy, delta=len(coded))

    def test_quantized_model_matches_pytorch(self):
        out = self.out("q.pt")
        self.assertEqual(ttq("quantize", fixture("resnet18.pt"), "-o", out).returncode, 0)
        r = ttq("inspect", out, "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        doc = json.loads(r.stdout)
        self.assertTrue(doc["ttq_metadata"])
        self.assertFalse(doc["dry_run"])
        self.check_against_pytorch(out, doc, quantized=True)
        meta = quantized_names(out)
        for layer in doc["layers"]:
            if layer["kind"] == "ternary":
                self.assertEqual(layer["delta"], meta[layer["name"]]["delta"])
        # 2-bit codes for 19 of 21 layers: resnet18 shrinks by more than 10x.
        self.assertGreater(doc["totals"]["ratio_2bit"], 10)
        self.assertGreater(doc["totals"]["ratio_entropy"], doc["totals"]["ratio_2bit"])

    def test_unquantized_model_is_a_dry_run_of_quantize(self):
        r = ttq("inspect", fixture("mobilenet_v2.pt"), "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        doc = json.loads(r.stdout)
        self.assertTrue(doc["dry_run"])
        self.assertFalse(doc["ttq_metadata"])
        self.check_against_pytorch(fixture("mobilenet_v2.pt"), doc, quantized=False)
        # The dry run predicts exactly what quantize then does.
        out = self.out("q.pt")
        self.assertEqual(ttq("quantize", fixture("mobilenet_v2.pt"), "-o", out).returncode, 0)
        after = json.loads(ttq("inspect", out, "--json").stdout)
        for planned, done in zip(doc["layers"], after["layers"]):
            self.assertEqual(planned["counts"], done["counts"])
            self.assertEqual(planned["wp"], done["wp"])
        self.assertEqual(doc["totals"]["bytes_2bit"], after["totals"]["bytes_2bit"])

    def test_ternary_weights_recognised_without_metadata(self):
        m = torch.jit.load(fixture("small_cnn.pt"))
        with torch.no_grad():
            w = m.fc1.weight
            w.copy_(torch.sign(w) * (w.abs() > 0.02) * 0.1)
        path = self.out("plain.pt")
        torch.jit.save(m, path)
        doc = json.loads(ttq("inspect", path, "--json").stdout)
        kinds = {l["name"]: l["kind"] for l in doc["layers"]}
        self.assertEqual(kinds, {"conv1.weight": "fp", "conv2.weight": "fp", "fc1.weight": "ternary",
                                 "fc2.weight": "fp"})
        fc1 = [l for l in doc["layers"] if l["name"] == "fc1.weight"][0]
        self.assertIsNone(fc1["delta"])
        self.assertAlmostEqual(fc1["wp"], 0.1, places=6)

    def test_table_output(self):
        r = ttq("inspect", fixture("small_cnn.pt"))
        self.assertEqual(r.returncode, 0, r.stderr)
        lines = r.stdout.splitlines()
        self.assertRegex(lines[0], r"^layer\s+shape\s+params\s+kind\s+sparsity\s+Wp\s+Wn\s+delta\s+bits")
        self.assertRegex(lines[1], r"^conv1\.weight\s+8x1x5x5\s+200\s+fp\s")
        self.assertRegex(lines[2], r"^conv2\.weight\s+16x8x5x5\s+3200\s+planned\s+0\.\d+")
        self.assertIn("dry run", r.stdout)
        self.assertIn("no ternary layer", r.stderr)

    def test_model_without_quantizable_layers_is_reported(self):
        r = ttq("inspect", fixture("no_quantizable.pt"), "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        doc = json.loads(r.stdout)
        self.assertEqual(doc["layers"], [])
        self.assertEqual(doc["totals"]["parameters"], 30)


class Errors(Workdir):
    def test_missing_file(self):
        r = ttq("quantize", self.out("nope.pt"), "-o", self.out("q.pt"))
        self.assert_one_error_line(r, 1, r"nope\.pt: no such file")
        self.assert_no_files()

    def test_random_bytes(self):
        for cmd in (["quantize", fixture("random.bin"), "-o", self.out("q.pt")], ["inspect", fixture("random.bin")]):
            r = ttq(*cmd)
            self.assert_one_error_line(r, 1, r"random\.bin: not a TorchScript model")
        self.assert_no_files()

    def test_eager_pickle(self):
        r = ttq("quantize", fixture("eager_pickle.pt"), "-o", self.out("q.pt"))
        self.assert_one_error_line(r, 1, r"torch\.save\(\) pickle, not a TorchScript model")
        self.assert_no_files()

    def test_an_operator_this_libtorch_lacks(self):
        # A model saved by a newer PyTorch calls operators an older LibTorch does not have (PyTorch 2.x's
        # aten::scaled_dot_product_attention in LibTorch 1.13, tests/cross_version.sh): its serialized
        # program here calls one no LibTorch has.
        newer = self.out("newer.pt")
        with zipfile.ZipFile(fixture("small_cnn.pt")) as src, zipfile.ZipFile(newer, "w") as dst:
            for item in src.infolist():
                data = src.read(item)
                if item.filename.endswith(".py"):
                    data = data.replace(b"torch.relu(", b"torch.ttq_op_of_a_newer_pytorch(")
                dst.writestr(item, data)
        for cmd in (["quantize", newer, "-o", self.out("q.pt")], ["inspect", newer], ["export", newer, "-o",
                                                                                        self.out("q.ttqz")]):
            r = ttq(*cmd)
            self.assert_one_error_line(r, 1, r"newer\.pt: calls aten::ttq_op_of_a_newer_pytorch, an operator that "
                                             r"LibTorch \d+\.\d+\.\d+ \(which this ttq runs on\) does not have: it "
                                             r"was saved by a newer PyTorch; use a ttq built against ")
        os.remove(newer)
        self.assert_no_files()

    def test_nothing_to_quantize(self):
        r = ttq("quantize", fixture("no_quantizable.pt"), "-o", self.out("q.pt"))
        self.assert_one_error_line(r, 1, r"no quantizable layer")
        self.assert_no_files()

    def test_lone_layer_needs_a_flag(self):
        r = ttq("quantize", fixture("one_layer.pt"), "-o", self.out("q.pt"))
        self.assert_one_error_line(r, 2, r"no layer selected.*--quantize-first")
        # The lone layer is first and last at once.
        r = ttq("quantize", fixture("one_layer.pt"), "-o", self.out("q.pt"), "--quantize-first")
        self.assert_one_error_line(r, 2, r"no layer selected")
        r = ttq("quantize", fixture("one_layer.pt"), "-o", self.out("q.pt"), "--quantize-first", "--quantize-last")
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_threshold_out_of_range(self):
        for t in ("0", "1", "-0.2", "1.5", "nan"):
            r = ttq("quantize", fixture("small_cnn.pt"), "-o", self.out("q.pt"), "--threshold", t)
            self.assert_one_error_line(r, 2, r"--threshold must be in \(0, 1\)|--threshold")
        self.assert_no_files()

    def test_sparsity_out_of_range(self):
        for s in ("1", "-0.1", "3"):
            r = ttq("quantize", fixture("small_cnn.pt"), "-o", self.out("q.pt"), "--sparsity", s)
            self.assert_one_error_line(r, 2, r"--sparsity must be in \[0, 1\)")
        self.assert_no_files()

    def test_threshold_and_sparsity_exclude_each_other(self):
        r = ttq("quantize", fixture("small_cnn.pt"), "-o", self.out("q.pt"), "--threshold", "0.1", "--sparsity", "0.5")
        self.assert_one_error_line(r, 2, r"excludes")

    def test_bad_regex(self):
        r = ttq("quantize", fixture("small_cnn.pt"), "-o", self.out("q.pt"), "--include", "(")
        self.assert_one_error_line(r, 2, r"invalid regex '\('")
        self.assert_no_files()

    def test_output_equal_to_input_refused(self):
        path = self.out("m.pt")
        with open(fixture("small_cnn.pt"), "rb") as f, open(path, "wb") as g:
            g.write(f.read())
        before = open(path, "rb").read()
        r = ttq("quantize", path, "-o", os.path.join(self.dir, ".", "m.pt"))
        self.assert_one_error_line(r, 2, r"is the input file")
        self.assertEqual(open(path, "rb").read(), before)

    def test_output_folder_missing_or_readonly(self):
        r = ttq("quantize", fixture("small_cnn.pt"), "-o", self.out("no/such/dir/q.pt"))
        self.assert_one_error_line(r, 1, r"folder .* does not exist")
        if os.geteuid() != 0:  # root writes anywhere
            os.chmod(self.dir, 0o500)
            r = ttq("quantize", fixture("small_cnn.pt"), "-o", self.out("q.pt"))
            os.chmod(self.dir, 0o700)
            self.assert_one_error_line(r, 1, r"not writable")
        self.assert_no_files()

    def test_usage_errors(self):
        self.assert_one_error_line(ttq(), 2, r"no command given; commands: quantize, finetune")
        self.assert_one_error_line(ttq("quantize", fixture("small_cnn.pt")), 2, r"--output")
        self.assert_one_error_line(ttq("inspect", fixture("small_cnn.pt"), "--bogus"), 2, r"--bogus")
        self.assert_one_error_line(ttq("quantize", fixture("small_cnn.pt"), "-o", "x", "--init", "zeros"), 2,
                                   r"--init")


class BashCompletion(unittest.TestCase):
    def complete(self, *words):
        """What bash offers for the last word of `ttq WORDS...` with ttq's completion loaded."""
        script = ttq("--bash-completion").stdout
        line = " ".join(["ttq", *words])
        program = script + '\nCOMP_WORDS=(%s); COMP_CWORD=%d; _ttq; printf "%%s\\n" "${COMPREPLY[@]}"\n' % (
            " ".join("'%s'" % w for w in ["ttq", *words]), len(words))
        r = subprocess.run(["bash", "-c", program], capture_output=True, text=True, cwd=FIX)
        self.assertEqual(r.returncode, 0, r.stderr)
        return set(r.stdout.split())

    def test_commands_options_and_files(self):
        self.assertEqual(self.complete("s"), {"stats", "sensitivity"})
        self.assertEqual(self.complete("se"), {"sensitivity"})
        self.assertEqual(self.complete("e"), {"eval", "export"})
        self.assertEqual(self.complete("stats", "--ex"), {"--expect"})
        self.assertEqual(self.complete("-v", "finetune", "--log"), {"--log", "--log-every"})
        self.assertIn("--verbose", self.complete("quantize", "--ver"))
        self.assertNotIn("--version", self.complete("quantize", "--ver"))
        self.assertEqual(self.complete("inspect", "small_"), {"small_cnn.pt"})


class HelpAndManPages(unittest.TestCase):
    COMMANDS = {"quantize": "ttq-quantize.1", "inspect": "ttq-inspect.1", "export": "ttq-export.1",
                "finetune": "ttq-finetune.1", "eval": "ttq-eval.1", "stats": "ttq-stats.1",
                "bench": "ttq-bench.1", "sensitivity": "ttq-sensitivity.1"}

    def test_help_and_version(self):
        r = ttq("--help")
        self.assertEqual(r.returncode, 0)
        for cmd in ("quantize", "finetune", "eval", "inspect", "export", "stats", "bench", "sensitivity"):
            self.assertRegex(r.stdout, rf"\n\s+{cmd}\s")
        r = ttq("--version")
        self.assertEqual(r.returncode, 0)
        # ttq's version and the LibTorch it runs on, the one of the PyTorch that runs the tests.
        version = re.fullmatch(r"ttq \d+\.\d+\.\d+ \(LibTorch (\d+\.\d+)\.\d+\)", r.stdout.strip())
        self.assertIsNotNone(version, r.stdout)
        self.assertEqual(version.group(1), ".".join(torch.__version__.split(".")[:2]))

    @staticmethod
    def long_options(text):
        return set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]+", text))

    def man_text(self, page):
        with open(os.path.join(MAN, page)) as f:
            return f.read().replace(r"\-", "-")

    def test_every_option_in_help_is_in_the_man_page_and_back(self):
        for cmd, page in self.COMMANDS.items():
            r = ttq(cmd, "--help")
            self.assertEqual(r.returncode, 0)
            man = self.man_text(page)
            options_section = man.split(".SH OPTIONS", 1)[1].split(".SH ", 1)[0]
            help_opts = self.long_options(r.stdout)
            self.assertEqual(help_opts, self.long_options(options_section), cmd)

    def test_main_page_documents_exit_codes_and_commands(self):
        man = self.man_text("ttq.1")
        self.assertIn(".SH EXIT STATUS", man)
        for code in ("0", "1", "2"):
            self.assertRegex(man, rf"\.B {code}\n|\.IP {code}\b|^{code}\b")
        for cmd in ("quantize", "finetune", "eval", "inspect", "export", "stats", "bench", "sensitivity"):
            self.assertIn(cmd, man)
        self.assertEqual(self.long_options(ttq("--help").stdout),
                         self.long_options(man.split(".SH OPTIONS", 1)[1].split(".SH ", 1)[0]))


if __name__ == "__main__":
    unittest.main()
