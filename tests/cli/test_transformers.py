"""Transformers scripted by the PyTorch that runs the tests, through every command: nn.TransformerEncoder
and nn.TransformerDecoder classifiers on token ids and a mask, torchvision's ViT and Swin. Their graphs
hold the fused fast paths and, from PyTorch 2.x, aten::scaled_dot_product_attention (checked, so that
the Debian 13 line really exercises them); PyTorch loads every output and, with libttq_ops.so, runs
the packed models with the ternary models' outputs.

Environment (set by CTest): TTQ_BIN, TTQ_FIXTURES, TTQ_BUILD_DIR.
"""
import json
import os
import unittest

import torch

from ttq_testing import Workdir, assert_back_from_int8, fixture, ttq

torch.ops.load_library(os.path.join(os.environ["TTQ_BUILD_DIR"], "plugins", "libttq_ops.so"))
PYTORCH_2 = int(torch.__version__.split(".")[0]) >= 2
QUICK = ["--threads", "1", "--no-progress", "--optimizer", "adam", "--lr", "0.002", "--batch-size", "32"]
TOKENS = "tensors:" + fixture("text_tokens.pt")


def token_inputs():
    ids = torch.randint(1, 200, (4, 16))
    mask = torch.ones(4, 16, dtype=torch.bool)
    mask[0, 10:] = False  # padding
    return ids, mask


# model -> (example inputs, its fused fast paths). PyTorch 2.x's attention also calls
# aten::scaled_dot_product_attention, except Swin's, which computes its own.
MODELS = {
    "text_classifier.pt": (token_inputs, ["aten::_transformer_encoder_layer_fwd", "aten::_native_multi_head_attention"]),
    "decoder_classifier.pt": (token_inputs, ["aten::_native_multi_head_attention"]),
    "vit_small.pt": (lambda: (torch.randn(2, 3, 32, 32),), ["aten::_native_multi_head_attention"]),
    "swin_small.pt": (lambda: (torch.randn(2, 3, 32, 32),), []),
}
SDPA = "aten::scaled_dot_product_attention"


def run(path, inputs):
    with torch.no_grad():
        return torch.jit.load(path).eval()(*inputs)


def tensors(path):
    m = torch.jit.load(path)
    return {**dict(m.named_parameters()), **dict(m.named_buffers())}


class EveryCommand(Workdir):
    def quantized(self, model):
        ternary = self.out(model.replace(".pt", ".ttq.pt"))
        r = ttq("quantize", fixture(model), "-o", ternary, "-q")
        self.assertEqual(r.returncode, 0, r.stderr)
        return ternary

    def assert_close(self, got, want, tolerance=1e-4):
        self.assertTrue(torch.allclose(got, want, rtol=tolerance, atol=tolerance * want.abs().max().item()),
                        (got - want).abs().max())

    def test_graphs_of_this_pytorch_hold_its_attention_ops(self):
        for model, (_, fused) in MODELS.items():
            graph = str(torch.jit.load(fixture(model)).inlined_graph)
            for op in fused:
                self.assertIn(op, graph, model)
            self.assertEqual(SDPA in graph, PYTORCH_2 and model != "swin_small.pt", model)

    def test_quantize_inspect_and_archive_round_trip(self):
        for model, (inputs, _) in MODELS.items():
            with self.subTest(model):
                ternary = self.quantized(model)
                r = ttq("inspect", ternary, "--json")
                self.assertEqual(r.returncode, 0, r.stderr)
                doc = json.loads(r.stdout)
                self.assertGreater(doc["totals"]["coded_layers"], 0)
                self.assertEqual(doc["libtorch_version"].split(".")[:2], torch.__version__.split(".")[:2])
                archive, restored = self.out("m.ttqz"), self.out("restored.pt")
                for args in (["export", ternary, "-o", archive], ["export", archive, "-o", restored]):
                    r = ttq(*args)
                    self.assertEqual(r.returncode, 0, r.stderr)
                a, b = tensors(ternary), tensors(restored)
                self.assertEqual(a.keys(), b.keys())
                self.assertTrue(all(torch.equal(a[k], b[k]) for k in a))
                x = inputs()
                self.assertTrue(torch.equal(run(ternary, x), run(restored, x)))

    def test_packed_with_float_and_int8_activations_run_in_pytorch(self):
        for model, (inputs, fused) in MODELS.items():
            with self.subTest(model):
                ternary = self.quantized(model)
                packed, int8 = self.out("packed.pt"), self.out("int8.pt")
                r = ttq("export", ternary, "--format", "packed", "-o", packed, "--json")
                self.assertEqual(r.returncode, 0, r.stderr)
                summary = json.loads(r.stdout)
                self.assertEqual(summary["float"], [], summary)  # attention and MLP weights all run packed
                graph = str(torch.jit.load(packed).inlined_graph)
                for op in fused:
                    self.assertNotIn(op, graph)
                self.assertGreaterEqual(graph.count("ttq::linear("), len(summary["packed"]))
                x = inputs()
                want = run(ternary, x)
                self.assertGreater(want.abs().max(), 0)  # outputs that depend on the weights
                self.assert_close(run(packed, x), want)
                r = ttq("export", ternary, "--format", "packed", "--activations", "int8", "-o", int8, "--json")
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertIn("ttq::linear_int8", str(torch.jit.load(int8).inlined_graph))
                self.assertLess((run(int8, x) - want).abs().max(), 0.1 * want.abs().max())
                # Back bit-exact, but for the float layers (the heads, by the paper's rule) kept in 8 bits.
                eight_bit = json.loads(r.stdout)["eight_bit"]
                self.assertTrue(all(name.endswith(".weight") for name in eight_bit), eight_bit)
                assert_back_from_int8(self, int8, ternary, eight_bit)

    def test_finetune_with_labels_and_with_distillation_then_eval_and_bench(self):
        for model in ("text_classifier.pt", "decoder_classifier.pt"):
            with self.subTest(model):
                out, distilled = self.out("labels.pt"), self.out("distilled.pt")
                r = ttq("finetune", fixture(model), "--data", TOKENS, "-o", out, "--epochs", "1", *QUICK)
                self.assertEqual(r.returncode, 0, r.stderr)
                self.assertRegex(r.stdout, r"val top-1 \d")
                r = ttq("finetune", fixture(model), "--data", TOKENS, "-o", distilled, "--distill", "--epochs", "1",
                        *QUICK)
                self.assertEqual(r.returncode, 0, r.stderr)
                packed = self.out("packed.pt")
                self.assertEqual(ttq("export", out, "--format", "packed", "-o", packed).returncode, 0)
                scores = []
                for path in (out, packed):
                    r = ttq("eval", path, "--data", TOKENS, "--json")
                    self.assertEqual(r.returncode, 0, r.stderr)
                    scores.append(json.loads(r.stdout)["top1"])
                self.assertAlmostEqual(scores[0], scores[1], delta=0.01)
                r = ttq("bench", packed, "--vs", out, "--data", TOKENS, "--batch-size", "4", "--runs", "2", "--warmup",
                        "1", "--json")
                self.assertEqual(r.returncode, 0, r.stderr)


if __name__ == "__main__":
    unittest.main()
