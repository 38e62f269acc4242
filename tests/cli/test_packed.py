"""Packed models (`ttq export --format packed`) run by PyTorch with libttq_ops.so loaded: torchvision
networks and transformers against their float models, the way back bit-exact, bench on packed models,
memory while loading, and bad packed files.
"""
import json
import os
import subprocess
import sys
import unittest

import torch

from ops_testing import LIBRARY
from ttq_testing import Workdir, assert_back_from_int8, fixture, quantize_and_pack, ttq


class PackedModels(Workdir):
    def packed(self, model, *quantize_flags):
        return quantize_and_pack(self, model, *quantize_flags)

    def assert_same_outputs(self, ternary, packed, x):
        a, b = torch.jit.load(ternary).eval(), torch.jit.load(packed).eval()
        x = x if isinstance(x, tuple) else (x,)
        with torch.no_grad():
            want, got = a(*x), b(*x)
        self.assertTrue(torch.allclose(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item()),
                        (got - want).abs().max())

    def test_resnet18_and_mobilenet_v2_run_packed_in_pytorch(self):
        for model, x in (("resnet18.pt", torch.randn(2, 3, 64, 64)), ("mobilenet_v2.pt", torch.randn(1, 3, 64, 64))):
            ternary, packed, summary = self.packed(model)
            self.assertEqual(summary["float"], [])
            self.assert_same_outputs(ternary, packed, x)
            # The weights are gone from the file: >= 12x smaller for ResNet-18, whose weights dominate.
            if model == "resnet18.pt":
                self.assertGreater(os.path.getsize(ternary) / os.path.getsize(packed), 12)
            state = torch.jit.load(packed).state_dict()
            self.assertEqual(state["layer1.0.conv1.weight" if model == "resnet18.pt" else
                                   "features.1.conv.1.weight"].numel(), 0)

    def test_transformer_encoders_run_packed_off_their_fused_fast_paths(self):
        # nn.TransformerEncoderLayer and nn.MultiheadAttention have fused kernels that read the float
        # weights; the packed model takes their ordinary path, whose projections run packed.
        ternary, packed, summary = self.packed("text_classifier.pt", "--quantize-first", "--quantize-last")
        self.assertEqual(summary["float"], [{"name": "emb.weight", "use": "embedding"}])
        self.assertIn("encoder.layers.0.self_attn.in_proj_weight", summary["packed"])
        graph = str(torch.jit.load(packed).inlined_graph)
        self.assertNotIn("_transformer_encoder_layer_fwd", graph)
        self.assertNotIn("_native_multi_head_attention", graph)
        self.assertGreaterEqual(graph.count("ttq::linear("), 9)  # per layer: qkv, out, 2 feed-forward; the head
        ids = torch.randint(1, 100, (3, 12))
        mask = torch.ones(3, 12, dtype=torch.bool)
        mask[0, 8:] = False  # padding
        self.assert_same_outputs(ternary, packed, (ids, mask))
        ternary, packed, summary = self.packed("vit_small.pt")
        self.assertEqual(summary["float"], [])
        self.assert_same_outputs(ternary, packed, (torch.randn(2, 3, 32, 32),))
        # With grad mode on (a PyTorch user without torch.no_grad()) the ops still run.
        got = torch.jit.load(packed)(torch.randn(1, 3, 32, 32))
        self.assertEqual(got.shape, (1, 10))

    def test_a_class_shared_by_packed_and_float_layers(self):
        # Three Linear(24, 24) share one TorchScript class; the first and last stay float (the
        # first/last rule), so the class's rewritten forward runs packed only where codes exist.
        model = self.out("mlp.pt")
        net = torch.nn.Sequential(torch.nn.Linear(24, 24), torch.nn.ReLU(), torch.nn.Linear(24, 24), torch.nn.ReLU(),
                                  torch.nn.Linear(24, 24))
        torch.jit.save(torch.jit.script(net.eval()), model)
        ternary, packed = self.out("t.pt"), self.out("p.pt")
        self.assertEqual(ttq("quantize", model, "-o", ternary, "-q").returncode, 0)
        r = ttq("export", ternary, "--format", "packed", "-o", packed, "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["packed"], ["2.weight"])
        self.assert_same_outputs(ternary, packed, torch.randn(5, 24))
        state = torch.jit.load(packed).state_dict()
        self.assertEqual(state["2.weight"].numel(), 0)
        self.assertTrue(torch.equal(state["0.weight"], net[0].weight))

    def test_int8_activations_stay_close_to_the_float_path(self):
        # The text classifier's linear layers on int8 inputs: outputs within 5% of the float path's
        # largest output, and the same class for all but the closest calls.
        ternary, packed, summary = self.packed("text_classifier.pt", "--quantize-last")
        int8 = self.out("int8.pt")
        r = ttq("export", ternary, "--format", "packed", "--activations", "int8", "-o", int8, "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["activations"], "int8")
        self.assertIn("ttq::linear_int8", str(torch.jit.load(int8).inlined_graph))
        ids = torch.randint(1, 200, (64, 16))
        mask = torch.ones(64, 16, dtype=torch.bool)
        a, b = torch.jit.load(packed), torch.jit.load(int8)
        with torch.no_grad():
            want, got = a(ids, mask), b(ids, mask)
        self.assertLess((got - want).abs().max(), 0.05 * want.abs().max())
        self.assertGreaterEqual((got.argmax(1) == want.argmax(1)).float().mean(), 0.95)
        # Back to float32 weights, bit-exact, as from a float-activation packed model.
        assert_back_from_int8(self, int8, ternary)
        r = ttq("export", ternary, "--activations", "int8", "-o", self.out("x.ttqz"))
        self.assert_one_error_line(r, 2, r"--activations applies to --format packed only")

    def test_int8_convolutions_in_resnet18_and_back_bit_exact(self):
        # ResNet-18's convolutions (in-channels 64 and more) run ttq::conv2d_int8 on tap-major codes;
        # the outputs stay near the float path's, and the float32 model comes back bit-exact, but for
        # the classifier (float by the paper's rule, kept in 8 bits).
        ternary, packed, _ = self.packed("resnet18.pt")
        int8 = self.out("int8.pt")
        r = ttq("export", ternary, "--format", "packed", "--activations", "int8", "-o", int8, "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(str(torch.jit.load(int8).inlined_graph).count("ttq::conv2d_int8("), 19)
        x = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            want, got = torch.jit.load(packed)(x), torch.jit.load(int8)(x)
        self.assertLess((got - want).abs().max(), 0.1 * want.abs().max())
        self.assertEqual(json.loads(r.stdout)["eight_bit"], ["fc.weight"])
        assert_back_from_int8(self, int8, ternary, ["fc.weight"])

    def test_back_to_the_float_model_bit_exact_and_read_by_every_command(self):
        ternary, packed, _ = self.packed("resnet18.pt")
        back = self.out("back.pt")
        r = ttq("export", packed, "--format", "ttq", "-o", back)
        self.assertEqual(r.returncode, 0, r.stderr)
        a, b = torch.jit.load(ternary), torch.jit.load(back)
        self.assertEqual(a.code, b.code)
        sa, sb = a.state_dict(), b.state_dict()
        self.assertEqual(sa.keys(), sb.keys())
        for k in sa:
            self.assertTrue(torch.equal(sa[k], sb[k]), k)
        r = ttq("inspect", packed)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("19 of 21 layers ternary", r.stdout)
        data = self.out("img.pt")
        torch.save({"x": torch.randn(16, 3, 32, 32), "y": torch.randint(0, 10, (16,))}, data)
        results = []
        for path in (ternary, packed):
            r = ttq("eval", path, "--data", "tensors:" + data, "--json")
            self.assertEqual(r.returncode, 0, r.stderr)
            results.append(json.loads(r.stdout))
        self.assertEqual(results[0]["top1"], results[1]["top1"])
        self.assertAlmostEqual(results[0]["loss"], results[1]["loss"], places=4)

    def test_layers_that_cannot_run_packed_stay_float_and_say_why(self):
        ternary, packed, summary = self.packed("lstm_tagger.pt", "--quantize-first", "--quantize-last")
        self.assertEqual(summary["packed"], ["out.weight"])
        self.assertEqual({f["name"]: f["use"] for f in summary["float"]},
                         {"emb.weight": "embedding", "lstm.weight_ih_l0": "list", "lstm.weight_hh_l0": "list"})
        self.assert_same_outputs(ternary, packed, torch.randint(0, 100, (2, 9)))

    def test_bench_compares_a_packed_model_with_its_float_original(self):
        ternary, packed, _ = self.packed("resnet18.pt")
        r = ttq("bench", packed, "--vs", ternary, "--runs", "3", "--warmup", "1", "--input-shape", "3,32,32",
                "--threads", "1", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        doc = json.loads(r.stdout)
        self.assertEqual([m["model"] for m in doc["models"]], [packed, ternary])
        self.assertEqual(doc["kernels"], torch.ops.ttq.kernel())
        for m in doc["models"]:
            self.assertGreater(m["median_ms"], 0)
            self.assertGreaterEqual(m["peak_mib"], m["loaded_mib"])
        # The float32 weights (42.7 MiB) are not held by the packed model once loaded: it holds its
        # codes (2.7 MiB), the float layers and the program (10.7x less in all, measured).
        self.assertGreater(doc["models"][1]["loaded_mib"] - doc["models"][0]["loaded_mib"], 30)
        self.assertGreater(doc["memory_ratio"], 8)
        r = ttq("bench", packed, "--input-shape", "5,7")
        self.assert_one_error_line(r, 1, r"the model rejects inputs of shape \[1, 5, 7\]")
        env = dict(os.environ, TTQ_KERNEL="portable")
        r = subprocess.run([os.environ["TTQ_BIN"], "bench", packed, "--runs", "1", "--input-shape", "3,32,32", "--json"],
                           capture_output=True, text=True, env=env)
        self.assertEqual(json.loads(r.stdout)["kernels"], "portable", r.stderr)
        env["TTQ_KERNEL"] = "sse9"
        r = subprocess.run([os.environ["TTQ_BIN"], "bench", packed], capture_output=True, text=True, env=env)
        self.assert_one_error_line(r, 2, r"TTQ_KERNEL=sse9 is not one of portable, avx2, avx512")

    def test_bench_runs_models_on_samples_of_a_dataset(self):
        # A text classifier takes token ids and a mask: --data gives it both, from real samples.
        ternary, packed, _ = self.packed("text_classifier.pt", "--quantize-first", "--quantize-last")
        data = "tensors:" + fixture("text_tokens.pt")
        r = ttq("bench", packed, "--vs", ternary, "--data", data, "--batch-size", "3", "--runs", "2", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        doc = json.loads(r.stdout)
        stored = torch.load(fixture("text_tokens.pt"))
        self.assertEqual(doc["data"], data)
        self.assertEqual(doc["inputs"], [[3] + list(t.shape[1:]) for t in stored["x_test"]])
        self.assertEqual(len(doc["models"]), 2)
        self.assertTrue(all(m["median_ms"] > 0 for m in doc["models"]))
        r = ttq("bench", packed, "--data", data, "--batch-size", "100000")
        self.assert_one_error_line(r, 1, r"has \d+ sample\(s\); --batch-size asks for 100000")
        # --batch, bench's old name for it, still works (scripts written for it keep running).
        r = ttq("bench", packed, "--data", data, "--batch", "2", "--runs", "1", "--json")
        self.assertEqual(json.loads(r.stdout)["inputs"], [[2] + list(t.shape[1:]) for t in stored["x_test"]], r.stderr)
        r = ttq("bench", packed, "--data", data, "--input-shape", "16")
        self.assertEqual(r.returncode, 2, r.stderr)

    def test_memory_freed_while_loading_goes_back_to_the_system(self):
        # Loading compiles the program and frees most of what compiling took, which glibc would keep
        # resident (a packed ViT: 17 MiB); ttq hands it back, so the model holds what it needs (4 MiB).
        _, packed, _ = self.packed("vit_small.pt")
        r = ttq("bench", packed, "--runs", "1", "--warmup", "0", "--input-shape", "3,32,32", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertLess(json.loads(r.stdout)["models"][0]["loaded_mib"], 8)

    def test_packed_attention_compiles_as_cheaply_as_the_original(self):
        # Peak memory while PyTorch loads a model: for a packed ViT, F.multi_head_attention_forward
        # inlined into nn.MultiheadAttention took 6x the float model's (55 against 9 MiB); as a
        # method of its own, 2x.
        code = f"""
import torch, sys
torch.ops.load_library({LIBRARY!r})
torch.jit.load({fixture("one_layer.pt")!r})  # the TorchScript runtime's own start-up
def status(key):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key))
open("/proc/self/clear_refs", "w").write("5")
before = status("VmRSS:")
torch.jit.load(sys.argv[1])
print(status("VmHWM:") - before)
"""
        ternary, packed, _ = self.packed("vit_small.pt")
        peak = {}
        for path in (ternary, packed):
            r = subprocess.run([sys.executable, "-c", code, path], capture_output=True, text=True)
            self.assertEqual(r.returncode, 0, r.stderr)
            peak[path] = int(r.stdout)
        self.assertLess(peak[packed], 3 * peak[ternary], peak)

    def test_bad_packed_files_are_one_clear_error(self):
        _, packed, _ = self.packed("resnet18.pt")
        extra = {"ttq.json": "", "ttq.program": ""}
        m = torch.jit.load(packed, _extra_files=extra)
        m = torch.jit.load(packed, _extra_files=extra)
        getattr(m.layer1, "0").conv1.weight_codes = torch.zeros(5, dtype=torch.uint8)
        broken = self.out("broken.pt")
        torch.jit.save(m, broken, _extra_files=extra)
        r = ttq("inspect", broken)
        self.assert_one_error_line(r, 1, r"packed layer layer1\.0\.conv1\.weight: packed codes hold 5 bytes; "
                                         r"a weight of this shape needs 9216")
        r = ttq("eval", broken)
        self.assert_one_error_line(r, 1, r"packed layer layer1\.0\.conv1\.weight: packed codes hold 5 bytes")
        # PyTorch without the library names the operator it lacks.
        code = f"import torch; torch.jit.load({packed!r})"
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("ttq::conv2d", r.stderr)


if __name__ == "__main__":
    unittest.main()
