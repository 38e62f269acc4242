"""Packed models on int8 activations end to end: static steps calibrated on data (export
--calibrate) and BatchNorms folded into the convolutions before them, checked against PyTorch
recomputing the same arithmetic; the operators themselves are tested in test_ops_int8.py.

Environment (set by CTest): TTQ_BUILD_DIR, the build folder holding plugins/libttq_ops.so.
"""
import io
import json
import os
import unittest
import zipfile

import torch
import torch.nn.functional as F

from ttq_testing import FMNIST, Workdir, assert_back_from_int8, load_with_metadata, quantize_and_pack, ttq

torch.ops.load_library(os.path.join(os.environ["TTQ_BUILD_DIR"], "plugins", "libttq_ops.so"))


def int8_conv(x, conv, step=None):
    """A float convolution as an int8 model runs it (ttq::conv2d_affine with an input step): x on the
    int8 grid of `step` (each sample's own, max |x| / 127, where None), the weight rounded to 8 bits
    per output channel."""
    step = x.abs().amax((1, 2, 3), keepdim=True) / 127 if step is None else step
    w_step = conv.weight.abs().amax((1, 2, 3), keepdim=True) / 127
    w8 = torch.round(conv.weight / w_step) * w_step
    return F.conv2d(torch.round(x / step).clamp(-127, 127) * step, w8, conv.bias, conv.stride, conv.padding,
                    conv.dilation)


def int8_linear(x, linear):
    """A float linear layer as an int8 model runs it (ttq::linear_8bit): each row of x on its own int8
    grid, the weight rounded to 8 bits per output channel."""
    step = x.abs().amax(1, keepdim=True) / 127
    w_step = linear.weight.abs().amax(1, keepdim=True) / 127
    return F.linear(torch.round(x / step).clamp(-127, 127) * step, torch.round(linear.weight / w_step) * w_step,
                    linear.bias)


class ReadsAChildsWeight(torch.nn.Module):
    def __init__(self):
        super().__init__()
        # head and out of two classes: a class's rewrite serves all its modules, and so a class stays
        # float where one of its modules' weights is read elsewhere.
        self.body, self.out = torch.nn.Linear(64, 64), torch.nn.Linear(64, 10)
        self.head = torch.nn.Linear(64, 10, bias=False)

    def forward(self, x):
        h = torch.relu(self.body(x))
        return self.out(h) + F.linear(h, self.head.weight)


class FunctionalRelu(torch.nn.Module):
    """conv → BatchNorm → F.relu: the activation a call of a function, as many models write it."""
    def __init__(self, conv, bn):
        super().__init__()
        self.conv, self.bn = conv, bn

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class FunctionalRelu6(FunctionalRelu):
    def forward(self, x):
        return F.relu6(self.bn(self.conv(x)))


class CalledTwice(torch.nn.Module):
    """One convolution called at two places: its output goes to another int8 convolution at the first
    and to a float op at the second."""
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Conv2d(64, 64, 1), torch.nn.Conv2d(64, 64, 1)

    def forward(self, x):
        return torch.relu(self.a(self.b(self.a(x))))


class Int8Models(Workdir):
    def packed(self, model, *quantize_flags):
        return quantize_and_pack(self, model, *quantize_flags)

    def calibrated(self, model, x, *flags):
        """`model` (a fixture) quantized, packed with float activations, and exported int8 calibrated on x:
        the ternary file, the packed one, the int8 one and export's JSON report."""
        ternary, packed, _ = self.packed(model)
        data, int8 = self.out("calibration.pt"), self.out("int8.pt")
        torch.save({"x": x, "x_test": x[:2]}, data)
        r = ttq("export", ternary, "--format", "packed", "--activations", "int8", "--calibrate", "tensors:" + data,
                *flags, "-o", int8, "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        return ternary, packed, int8, json.loads(r.stdout)

    @staticmethod
    def unchained(int8):
        """The int8 model with float32 between all its layers (every output step 0)."""
        model = torch.jit.load(int8)
        for name, buffer in model.named_buffers():
            if name.endswith("_output_step"):
                buffer.zero_()
        return model

    def assert_blocks_store_their_twins_bytes(self, blocks, mid):
        """Runs `blocks` ([(block, its float twin, the step its input is on, the step it stores at)],
        the twin's layers with float32 between them) in turn from the float `mid`: each block, given
        the bytes the one before stored (its twin the floats they stand for, q · step), stores exactly
        the bytes its twin's output makes on its step (its floats where it stores none)."""
        with torch.no_grad():
            for index, (block, twin, in_step, out_step) in enumerate(blocks):
                got = block(mid)
                want = twin(mid if mid.dtype == torch.float32 else (mid.float() - 128) * in_step)
                if out_step > 0:
                    want = (torch.round(want / out_step).clamp(-127, 127) + 128).to(torch.uint8)
                self.assertEqual(got.dtype, want.dtype, index)
                self.assertTrue(torch.equal(got, want), index)
                mid = got

    def test_calibrated_int8_steps_are_the_largest_inputs_each_layer_met(self):
        # --calibrate runs the samples through the packed model: each layer's stored input step is the
        # largest |input| it met over 127 (recomputed here in PyTorch for the first ternary layer, after
        # the stem the int8 model runs in 8 bits with each sample's step while it calibrates), the model
        # then quantizes every input with it, and the float32 model comes back bit-exact.
        x = torch.randn(12, 3, 48, 48)
        ternary, packed, int8, report = self.calibrated("resnet18.pt", x, "--calibrate-samples", "8")
        data = self.out("calibration.pt")
        calibration = report["calibration"]
        self.assertEqual((calibration["data"], calibration["samples"]), ("tensors:" + data, 8))
        steps = {l["name"]: l["input_step"] for l in calibration["layers"]}
        self.assertEqual(len(steps), 19)
        self.assertTrue(all(step > 0 for step in steps.values()))
        model = torch.jit.load(int8)
        state = model.state_dict()
        for name, step in steps.items():
            self.assertEqual(state[name + "_input_step"].item(), step)
        self.assertEqual(json.loads(load_with_metadata(int8)[1])["calibration"], {"data": "tensors:" + data, "samples": 8})
        # The stem (kept float, run on 8-bit weights with its max-pool) hands the first block its input
        # and residual as bytes; each block's first convolution hands the second its int8 input
        # (uint8, on the second's step) rather than float32, and each block but the last hands the
        # next its input (on the step of its first convolution and its downsample) and residual:
        # bytes from block to block.
        convs = [f"layer{stage}.{block}.conv{c}.weight" for stage in range(1, 5) for block in range(2) for c in (1, 2)]
        self.assertEqual(report["chained"], ["conv1.weight"] + convs[:-1])
        # Each block's add and ReLU are its second convolution's, done as it stores each value (with
        # the identity as its residual, computed before it where the block downsamples): the same
        # outputs, bit for bit, as the block's own modules computing them apart.
        self.assertEqual(sorted(report["residual_fused"]),
                         [f"layer{stage}.{block}.conv2.weight" for stage in range(1, 5) for block in range(2)])
        self.assertIn("conv2d_int8", getattr(model.layer2, "0").code)
        twin = self.unchained(int8)
        mid = torch.randn(2, 64, 12, 12).contiguous(memory_format=torch.channels_last)
        blocks = []
        with torch.no_grad():
            for stage in range(1, 5):
                for block in range(2):
                    b, f = (getattr(getattr(m, f"layer{stage}"), str(block)) for m in (model, twin))
                    identity = f.downsample(mid) if stage > 1 and block == 0 else mid
                    apart = torch.relu(f.conv2(f.conv1(mid)) + identity)
                    mid = f(mid)
                    self.assertTrue(torch.equal(mid, apart), (stage, block))
                    blocks.append((b, f, b.conv1.weight_input_step, b.conv2.weight_output_step))
        # Between blocks the bytes are the next block's input as its own quantization makes it, and
        # its residual carries their rounding (as PyTorch's quantized add does): each block stores
        # exactly what its float twin's output makes on its step, given the floats of its input's bytes.
        self.assertEqual([float(out_step > 0) for *_, out_step in blocks], [1.0] * 7 + [0.0])
        self.assert_blocks_store_their_twins_bytes(blocks, torch.randn(2, 64, 12, 12))
        # The stem's max-pool is the stem operator's own (it pools a reused scratch).
        self.assertIn("[3, 2, 1], weight_clamp", model._forward_impl.code)
        self.assertNotIn("maxpool", model._forward_impl.code)
        fp = torch.jit.load(ternary)
        with torch.no_grad():
            first = fp.maxpool(fp.relu(fp.bn1(int8_conv(x[:8], fp.conv1))))
        self.assertAlmostEqual(steps["layer1.0.conv1.weight"], first.abs().max().item() / 127, delta=1e-6 * steps[
            "layer1.0.conv1.weight"])
        # Static steps: the outputs differ from the dynamic model's, and stay near the float path's.
        dynamic = self.out("dynamic.pt")
        r = ttq("export", ternary, "--format", "packed", "--activations", "int8", "-o", dynamic)
        self.assertEqual(r.returncode, 0, r.stderr)
        with torch.no_grad():
            want, static, per_call = torch.jit.load(packed)(x), model(x), torch.jit.load(dynamic)(x)
        self.assertFalse(torch.equal(static, per_call))
        self.assertLess((static - want).abs().max(), 0.1 * want.abs().max())
        # The classifier, float by the paper's rule, is kept in 8 bits (its input step calibrated
        # too); the float model comes back bit-exact but for it, its 8-bit values.
        self.assertEqual(report["eight_bit"], ["fc.weight"])
        self.assertEqual(model.fc.weight.numel(), 0)
        self.assertGreater(model.fc.weight_input_step.item(), 0)
        back = assert_back_from_int8(self, int8, ternary, report["eight_bit"])
        self.assertNotIn("calibration", json.loads(load_with_metadata(back)[1]))

    def test_mobilenet_v2_runs_int8_from_layer_to_layer_and_block_to_block(self):
        # Torchvision's MobileNetV2 calibrated: each inverted residual's expansion hands its depthwise
        # layer (int8 too) its input as bytes, and that one the projection, through the
        # Conv2dNormActivation wrappers its BatchNorms and ReLU6s fold out of; each projection hands
        # the next block its input (and residual, where it adds one) as bytes too. Within a block the
        # outputs are the same, bit for bit, as with float32 between its layers, and the model's stay
        # near the float path's. Images channels-last too: then each projection reads its depthwise
        # layer's bytes where they lie, and each expansion its block's input.
        x = torch.randn(8, 3, 64, 64)
        _, packed, int8, report = self.calibrated("mobilenet_v2.pt", x)
        chained = report["chained"]
        self.assertEqual(len(chained), 51)  # 17 blocks: two links within each but the first, one to the next
        self.assertIn("features.0.0.weight", chained)  # the float stem (8-bit weights) -> the first block
        self.assertIn("features.1.conv.0.0.weight", chained)  # depthwise -> projection
        self.assertIn("features.2.conv.1.0.weight", chained)  # depthwise -> projection
        self.assertIn("features.2.conv.0.0.weight", chained)  # expansion -> depthwise
        self.assertIn("features.2.conv.2.weight", chained)  # projection -> the next block
        self.assertIn("features.17.conv.2.weight", chained)  # projection -> the last 1x1 convolution
        with torch.no_grad():
            got, want = torch.jit.load(int8)(x[:2]), torch.jit.load(packed)(x[:2])
            self.assertLess((got - want).abs().max(), 0.2 * want.abs().max())
        # The 10 blocks that add their input to their output (use_res_connect) have their projection
        # add it as it stores each value, bit for bit as the block's layers and the add apart; the
        # others run as they did.
        residual = report["residual_fused"]
        self.assertEqual(len(residual), 10)
        self.assertIn("features.3.conv.2.weight", residual)
        self.assertNotIn("features.2.conv.2.weight", residual)  # stride 2: no residual
        model, twin = torch.jit.load(int8), self.unchained(int8)
        blocks = []
        for index, channels in ((2, 16), (3, 24), (4, 24), (5, 32)):
            b, f = (getattr(m.features, str(index)) for m in (model, twin))
            mid = torch.randn(2, channels, 10, 10).contiguous(memory_format=torch.channels_last)
            with torch.no_grad():
                self.assertTrue(torch.equal(f(mid), mid + f.conv(mid) if f.use_res_connect else f.conv(mid)), index)
            expansion, projection = getattr(getattr(b.conv, "0"), "0"), getattr(b.conv, "2")
            blocks.append((b, f, expansion.weight_input_step, projection.weight_output_step))
        # From block to block: each stores exactly the bytes its float twin's output makes, given
        # the floats its input's bytes stand for (NCHW and channels-last).
        for last in (False, True):
            mid = torch.randn(2, 16, 10, 10)
            self.assert_blocks_store_their_twins_bytes(
                blocks, mid.contiguous(memory_format=torch.channels_last) if last else mid)
    def test_resnext_grouped_convolutions_run_int8_within_and_between_blocks(self):
        # A ResNeXt (torchvision's Bottleneck, 8 groups: 4, 8, 16 and 32 channels a group in the four
        # stages) calibrated: each grouped 3x3 convolution runs int8, takes its input as bytes from the
        # 1x1 before it and hands the 1x1 after it its output as bytes. From block to block each stores
        # exactly the bytes its float twin's output makes (float32 between its layers), and the
        # model's outputs stay near the float path's.
        from torchvision.models.resnet import Bottleneck, ResNet
        torch.manual_seed(0)
        net = ResNet(Bottleneck, [1, 1, 1, 1], groups=8, width_per_group=4, num_classes=10).eval()
        with torch.no_grad():
            for m in net.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.2, 0.2), m.running_var.uniform_(0.5, 2), m.weight.uniform_(0.5, 1.5)
        model = self.out("resnext.pt")
        torch.jit.save(torch.jit.script(net), model)
        x = torch.randn(8, 3, 32, 32)
        _, packed, int8, report = self.calibrated(model, x)
        for stage in range(1, 5):
            self.assertIn(f"layer{stage}.0.conv1.weight", report["chained"])  # 1x1 -> grouped
            self.assertIn(f"layer{stage}.0.conv2.weight", report["chained"])  # grouped -> 1x1
        with torch.no_grad():
            got, want = torch.jit.load(int8)(x[:2]), torch.jit.load(packed)(x[:2])
            self.assertLess((got - want).abs().max(), 0.2 * want.abs().max())
        model, twin = torch.jit.load(int8), self.unchained(int8)
        blocks = []
        for stage in range(1, 5):
            b, f = (getattr(getattr(m, f"layer{stage}"), "0") for m in (model, twin))
            blocks.append((b, f, b.conv1.weight_input_step, b.conv3.weight_output_step))
        self.assertGreater(blocks[0][3].item(), 0)  # layer1 hands layer2 bytes
        for last in (False, True):
            mid = torch.relu(torch.randn(2, 64, 8, 8))
            self.assert_blocks_store_their_twins_bytes(
                blocks, mid.contiguous(memory_format=torch.channels_last) if last else mid)

    def fold_one(self, activation):
        # conv (64 → 32, 3x3) → BatchNorm with trained statistics → activation, every layer ternary,
        # exported packed int8: the network, the ternary model's path and the packed one's.
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Conv2d(64, 32, 3, padding=1), torch.nn.BatchNorm2d(32), activation)
        with torch.no_grad():
            bn = net[1]
            bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
            bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-1, 1)
        model, ternary, int8 = self.out("m.pt"), self.out("t.pt"), self.out("int8.pt")
        torch.jit.save(torch.jit.script(net.eval()), model)
        self.assertEqual(ttq("quantize", model, "-o", ternary, "-q", "--quantize-first", "--quantize-last").returncode, 0)
        r = ttq("export", ternary, "--format", "packed", "--activations", "int8", "-o", int8, "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["folded"], ["0.weight"])
        return net, ternary, int8

    def test_batch_norm_and_relu_fold_into_the_int8_convolution(self):
        # conv → BatchNorm (trained statistics) → ReLU or ReLU6: the packed int8 model runs the
        # convolution alone, with the BatchNorm as its per-channel affine and the ReLU as its floor
        # (a ReLU6: and its ceiling); a BatchNorm in training mode, or one that does not take a
        # ternary convolution's output, stays.
        for activation, clamp, gone in ((torch.nn.ReLU(), [0, float("inf")], "relu"), (torch.nn.ReLU6(), [0, 6], "hardtanh")):
            with self.subTest(activation=str(activation)):
                net, ternary, int8 = self.fold_one(activation)
                packed = torch.jit.load(int8)
                graph = str(packed.inlined_graph)
                self.assertNotIn("batch_norm", graph)
                self.assertNotIn(gone, graph)
                self.assertEqual(list(packed.state_dict()["0.weight_out_affine"].shape), [2, 32])
                self.assertEqual(packed.state_dict()["0.weight_clamp"].tolist(), clamp)
                # The reference: the int8 convolution (quantize's own weights, per-sample steps) then
                # the BatchNorm and activation of PyTorch.
                w = torch.jit.load(ternary).state_dict()["0.weight"]
                wp, wn = w.max().item(), -w.min().item()
                grid = max(wp, wn) / 127
                w8 = torch.where(w == wp, round(wp / grid), torch.where(w == -wn, round(-wn / grid), 0)) * grid
                x = torch.randn(3, 64, 10, 10) * 4
                step = x.abs().amax((1, 2, 3), keepdim=True) / 127
                with torch.no_grad():
                    want = net[2](net[1](F.conv2d(torch.round(x / step) * step, w8, net[0].bias, padding=1)))
                    got = packed(x)
                self.assertTrue(torch.allclose(got, want, rtol=1e-4, atol=1e-4), (got - want).abs().max())
                if clamp[1] == 6:
                    self.assertGreater((want == 6).sum().item(), 0)  # the ceiling was met
        assert_back_from_int8(self, int8, ternary)
        # Training mode keeps the BatchNorm as it is.
        model = self.out("m.pt")
        torch.jit.save(torch.jit.script(net.train()), model)
        self.assertEqual(ttq("quantize", model, "-o", ternary, "-q", "--quantize-first", "--quantize-last").returncode, 0)
        r = ttq("export", ternary, "--format", "packed", "--activations", "int8", "-o", int8, "--json")
        self.assertEqual(json.loads(r.stdout)["folded"], [])
        self.assertIn("batch_norm", str(torch.jit.load(int8).inlined_graph))

    def test_a_functional_relu_folds_as_the_module_does(self):
        # F.relu and F.relu6 after a BatchNorm (calls of TorchScript functions) fold into the
        # convolution as nn.ReLU and nn.ReLU6 do: no activation left, the same outputs bit for bit.
        for activation, functional in ((torch.nn.ReLU(), FunctionalRelu), (torch.nn.ReLU6(), FunctionalRelu6)):
            with self.subTest(activation=str(activation)):
                net, _, int8 = self.fold_one(activation)
                model, ternary, int8_functional = self.out("f.pt"), self.out("ft.pt"), self.out("fint8.pt")
                torch.jit.save(torch.jit.script(functional(net[0], net[1]).eval()), model)
                r = ttq("quantize", model, "-o", ternary, "-q", "--quantize-first", "--quantize-last")
                self.assertEqual(r.returncode, 0, r.stderr)
                r = ttq("export", ternary, "--format", "packed", "--activations", "int8", "-o", int8_functional, "--json")
                self.assertEqual(json.loads(r.stdout)["folded"], ["conv.weight"], r.stderr)
                packed = torch.jit.load(int8_functional)
                self.assertNotIn("relu", str(packed.inlined_graph))
                self.assertNotIn("hardtanh", str(packed.inlined_graph))
                x = torch.randn(3, 64, 10, 10) * 4
                with torch.no_grad():
                    self.assertTrue(torch.equal(packed(x), torch.jit.load(int8)(x)))

    def test_batch_norm_folds_into_a_float_first_convolution_run_in_8_bits(self):
        # The first convolution stays float in the file (the paper's rule) and its BatchNorm and ReLU
        # fold into it as well: ttq::conv2d_affine runs it on int8 inputs with its weight rounded to 8
        # bits per channel and the BatchNorm as its affine, and the model computes what PyTorch does
        # with that stem followed by the int8 layer.
        torch.manual_seed(2)
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, stride=2, padding=1), torch.nn.BatchNorm2d(64),
                                  torch.nn.ReLU(), torch.nn.Conv2d(64, 32, 3, padding=1, bias=False),
                                  torch.nn.BatchNorm2d(32), torch.nn.ReLU6(), torch.nn.Flatten(),
                                  torch.nn.Linear(32 * 5 * 5, 10))
        with torch.no_grad():
            for bn in (net[1], net[4]):
                bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
                bn.weight.uniform_(0.5, 1.5), bn.bias.uniform_(-1, 1)
        model, ternary, int8 = self.out("m.pt"), self.out("t.pt"), self.out("int8.pt")
        torch.jit.save(torch.jit.script(net.eval()), model)
        self.assertEqual(ttq("quantize", model, "-o", ternary, "-q").returncode, 0)
        r = ttq("export", ternary, "--format", "packed", "--activations", "int8", "-o", int8, "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["folded"], ["0.weight", "3.weight"])
        packed = torch.jit.load(int8)
        graph = str(packed.inlined_graph)
        self.assertIn("ttq::conv2d_affine", graph)
        self.assertNotIn("batch_norm", graph)
        fp = torch.jit.load(ternary)
        x = torch.randn(4, 3, 10, 10)
        with torch.no_grad():
            stem = net[2](net[1](int8_conv(x, net[0])))
            w = fp.state_dict()["3.weight"]
            wp, wn = w.max().item(), -w.min().item()
            grid = max(wp, wn) / 127
            w8 = torch.where(w == wp, round(wp / grid), torch.where(w == -wn, round(-wn / grid), 0)) * grid
            step = stem.abs().amax((1, 2, 3), keepdim=True) / 127
            want = int8_linear(net[6](net[5](net[4](F.conv2d(torch.round(stem / step) * step, w8, padding=1)))), net[7])
            got = packed(x)
        self.assertTrue(torch.allclose(got, want, rtol=1e-3, atol=1e-3), (got - want).abs().max())
        # The running model holds the stem in 8 bits (the bytes conv2d_affine would round it to) and
        # neither its float weight nor the BatchNorms: an extra file of the archive keeps them for
        # the way back, which PyTorch does not load.
        state, w0 = packed.state_dict(), fp.state_dict()["0.weight"]
        step = w0.abs().amax((1, 2, 3)) / 127
        self.assertTrue(torch.equal(state["0.weight_step"], step))
        self.assertTrue(torch.equal(state["0.weight_int8"], torch.round(w0 / step.view(-1, 1, 1, 1)).to(torch.int8)))
        for name in ("0.weight", "1.weight", "1.running_mean", "1.running_var", "4.bias", "4.num_batches_tracked"):
            self.assertEqual(state[name].numel(), 0, name)
        with zipfile.ZipFile(int8) as z:
            unread = dict(torch.load(io.BytesIO(z.read(next(n for n in z.namelist() if n.endswith("extra/ttq.unread"))))))
        self.assertTrue(torch.equal(unread["0.weight"], w0))
        self.assertTrue(torch.equal(unread["4.running_var"], fp.state_dict()["4.running_var"]))
        # The float model comes back bit-exact, the stem's weights included; the last layer, float by
        # the rule, as its 8-bit values.
        self.assertEqual(json.loads(r.stdout)["eight_bit"], ["7.weight"])
        assert_back_from_int8(self, int8, ternary, ["7.weight"])
        # A damaged extra file is one error line when the way back needs it, and writes nothing.
        bad, back = self.out("bad.pt"), self.out("bad_back.pt")
        with zipfile.ZipFile(int8) as src, zipfile.ZipFile(bad, "w") as dst:
            for item in src.infolist():
                dst.writestr(item, b"not a pickle" if item.filename.endswith("extra/ttq.unread") else src.read(item))
        r = ttq("export", bad, "--format", "ttq", "-o", back)
        self.assert_one_error_line(r, 1, r"bad\.pt: cannot read ttq\.unread: ")
        self.assertFalse(os.path.exists(back))

    def test_a_convolution_class_folded_in_one_place_and_not_another(self):
        # a and b share one TorchScript class; only a is followed by a BatchNorm (and torch.relu), so
        # b runs the class's rewritten forward with the identity affine.
        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.a, self.bn, self.b = torch.nn.Conv2d(64, 64, 3, padding=1), torch.nn.BatchNorm2d(64), \
                    torch.nn.Conv2d(64, 64, 3, padding=1)

            def forward(self, x):
                return self.b(torch.relu(self.bn(self.a(x))))

        torch.manual_seed(1)
        net = Net().eval()
        with torch.no_grad():
            net.bn.running_mean.uniform_(-1, 1), net.bn.running_var.uniform_(0.5, 2)
        model, ternary, int8 = self.out("m.pt"), self.out("t.pt"), self.out("int8.pt")
        torch.jit.save(torch.jit.script(net), model)
        r = ttq("quantize", model, "-o", ternary, "-q", "--quantize-first", "--quantize-last")
        self.assertEqual(r.returncode, 0, r.stderr)
        r = ttq("export", ternary, "--format", "packed", "--activations", "int8", "-o", int8, "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["folded"], ["a.weight"])
        packed, fp = torch.jit.load(int8), torch.jit.load(ternary)
        self.assertEqual(packed.a._c._type(), packed.b._c._type())
        identity = packed.state_dict()["b.weight_out_affine"]
        self.assertTrue(torch.equal(identity, torch.stack([torch.ones(64), torch.zeros(64)])))
        self.assertEqual(packed.state_dict()["b.weight_clamp"].tolist(), [-float("inf"), float("inf")])

        def int8_conv(conv, x):  # the int8 convolution as ttq::conv2d_int8 computes it
            w = conv.weight
            wp, wn = w.max().item(), -w.min().item()
            grid = max(wp, wn) / 127
            w8 = torch.where(w == wp, round(wp / grid), torch.where(w == -wn, round(-wn / grid), 0)) * grid
            step = x.abs().amax((1, 2, 3), keepdim=True) / 127
            return F.conv2d(torch.round(x / step) * step, w8, conv.bias, padding=1)

        x = torch.randn(2, 64, 8, 8)
        with torch.no_grad():
            want = int8_conv(fp.b, torch.relu(fp.bn(int8_conv(fp.a, x))))
            got = packed(x)
        self.assertLess((got - want).abs().max(), 1e-3 * want.abs().max())

    def test_a_float_linear_layer_in_8_bits_unless_another_module_reads_its_weight(self):
        # `out` runs as any linear layer and goes to 8 bits; `head`'s weight the parent reads itself
        # (as nn.MultiheadAttention reads out_proj.weight), so it stays float32 where it is read.
        torch.manual_seed(0)
        model, ternary, int8 = self.out("m.pt"), self.out("t.pt"), self.out("int8.pt")
        torch.jit.save(torch.jit.script(ReadsAChildsWeight().eval()), model)
        r = ttq("quantize", model, "-o", ternary, "-q", "--quantize-first", "--quantize-last", "--include", "body")
        self.assertEqual(r.returncode, 0, r.stderr)
        r = ttq("export", ternary, "--format", "packed", "--activations", "int8", "-o", int8, "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        report = json.loads(r.stdout)
        self.assertEqual((report["packed"], report["eight_bit"]), (["body.weight"], ["out.weight"]))
        packed, fp = torch.jit.load(int8), torch.jit.load(ternary)
        self.assertEqual(packed.head.weight.shape, (10, 64))
        x = torch.randn(5, 64)
        with torch.no_grad():
            want, got = fp(x), packed(x)
        self.assertLess((got - want).abs().max(), 0.05 * want.abs().max())
        assert_back_from_int8(self, int8, ternary, report["eight_bit"])

    def test_a_module_called_where_bytes_cannot_go_stays_float(self):
        # The choice is per module, whatever the call: `a` feeds `b` at its first call and a ReLU at its
        # second, so it stores float32 at both (bytes there would reach the ReLU as numbers); `b`,
        # whose one call feeds `a`, hands it bytes. The outputs equal the float32-between model's.
        torch.manual_seed(0)
        model, ternary, int8, data = self.out("m.pt"), self.out("t.pt"), self.out("int8.pt"), self.out("d.pt")
        torch.jit.save(torch.jit.script(CalledTwice().eval()), model)
        self.assertEqual(ttq("quantize", model, "-o", ternary, "-q", "--quantize-first", "--quantize-last").returncode, 0)
        x = torch.randn(4, 64, 6, 6)
        torch.save({"x": x, "x_test": x[:2]}, data)
        r = ttq("export", ternary, "--format", "packed", "--activations", "int8", "--calibrate", "tensors:" + data,
                "-o", int8, "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["chained"], ["b.weight"])
        with torch.no_grad():
            got = torch.jit.load(int8)(x)
            self.assertEqual(got.dtype, torch.float32)
            self.assertTrue(torch.equal(got, self.unchained(int8)(x)))

    def test_calibration_takes_the_data_flags(self):
        # The data flags apply to the calibration samples as to eval's: Fashion-MNIST normalized with
        # twice its std halves the float stem's calibrated input step (max |x| / 127), exactly.
        ternary, _, _ = self.packed("bn_cnn.pt")
        steps = []
        for std in ([], ["--std", str(2 * 0.3530)]):
            int8 = self.out("int8.pt")
            r = ttq("export", ternary, "--format", "packed", "--activations", "int8", "--calibrate", "fashion-mnist:" + FMNIST,
                    "--calibrate-samples", "64", "--threads", "1", *std, "-o", int8)
            self.assertEqual(r.returncode, 0, r.stderr)
            steps.append(torch.jit.load(int8).conv1.weight_input_step.item())
        self.assertGreater(steps[1], 0)
        self.assertEqual(steps[0], 2 * steps[1])

    def test_calibration_errors_are_one_line_and_write_nothing(self):
        ternary, _, _ = self.packed("resnet18.pt")
        data = self.out("flat.pt")
        torch.save({"x": torch.randn(4, 10), "x_test": torch.randn(2, 10)}, data)
        out = self.out("int8.pt")
        r = ttq("export", ternary, "--format", "packed", "--calibrate", "tensors:" + data, "-o", out)
        self.assert_one_error_line(r, 2, r"--calibrate applies to --format packed --activations int8 only")
        r = ttq("export", ternary, "--format", "packed", "--activations", "int8", "--calibrate-samples", "4", "-o", out)
        self.assert_one_error_line(r, 2, r"--calibrate-samples needs --calibrate")
        r = ttq("export", ternary, "--format", "packed", "--activations", "int8", "--image-size", "64", "-o", out)
        self.assert_one_error_line(r, 2, r"--image-size needs --calibrate")
        r = ttq("export", ternary, "--format", "packed", "--activations", "int8", "--calibrate", "tensors:" + data,
                "-o", out)
        self.assert_one_error_line(r, 1, r"input")
        self.assertFalse(os.path.exists(out))


if __name__ == "__main__":
    unittest.main()
