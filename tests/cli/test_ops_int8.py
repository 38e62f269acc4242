"""The int8 operators of libttq_ops.so (inputs quantized per call or on a calibrated step, a folded
BatchNorm's affine, a fused residual and ReLU, bytes handed to the next layer, 8-bit layers), loaded by
PyTorch itself, against a float reference of the same arithmetic on many shapes, on every kernel path
this CPU runs.
"""
import itertools
import os
import unittest

import torch
import torch.nn.functional as F

from ops_testing import KernelPathCase, cpu_paths, ternary


class OnEveryPath(KernelPathCase):
    def test_linear_int8_matches_the_reference_on_its_quantized_inputs(self):
        # Each input row is rounded to int8 with the scale max|x| / 127, the two weight scales to one
        # int8 grid (step max(|wp|, |wn|) / 127); the integer sums are exact, so the result is the
        # float linear layer on those rounded values.
        shapes = [(1, 1, (1,)), (5, 7, (1,)), (33, 100, (3,)), (64, 32, (8,)), (17, 31, (9,)), (10, 65, (2, 5)),
                  (128, 257, (4,)), (3, 64, (40,)), (96, 1000, (1,)), (40, 96, (70,)), (20, 64, (13,)),
                  (24, 40, (11,)), (9, 33, (15,))]  # blocks of 8 inputs, then 4, leave 1, 2, 3 and 7
        scales = [(0.3, 0.2), (0.2, 0.3), (0.25, 0.25), (-0.05, 0.4)]  # TTQ may keep a scale that turned negative
        for path in cpu_paths():
            os.environ["TTQ_KERNEL"] = path
            for n, (out_features, in_features, batch) in enumerate(shapes):
                wp, wn = scales[n % len(scales)]
                w = ternary((out_features, in_features), wp=wp, wn=wn, seed=out_features)
                codes, packed_scales = torch.ops.ttq.pack(w, wp, wn)
                bias = torch.randn(out_features)
                x = torch.randn(*batch, in_features)
                x.view(-1, in_features)[0] = 0  # an all-zero row has no scale to divide by
                step = (x.abs().amax(-1, keepdim=True) / 127).clamp_min(torch.finfo(torch.float32).tiny)
                grid = max(abs(wp), abs(wn)) / 127
                w8 = torch.where(w == wp, round(wp / grid), torch.where(w == -wn, round(-wn / grid), 0)) * grid
                want = F.linear(torch.round(x / step) * step, w8, bias)
                got = torch.ops.ttq.linear_int8(x, codes, packed_scales, [out_features, in_features], bias)
                self.assertEqual(got.shape, want.shape)
                self.assertTrue(torch.allclose(got, want, rtol=1e-4, atol=1e-4),
                                (path, out_features, in_features, batch, (got - want).abs().max()))
                # Against the float layer: within the rounding of 8-bit inputs.
                exact = F.linear(x, w, bias)
                self.assertLess((got - exact).abs().max(), 0.05 * exact.abs().max() + 1e-6)
            x = torch.randn(48, 6).t()
            w = ternary((20, 48), wp=0.3, wn=0.3)
            codes, packed_scales = torch.ops.ttq.pack(w, 0.3, 0.3)
            step = x.abs().amax(-1, keepdim=True) / 127
            self.assertTrue(torch.allclose(torch.ops.ttq.linear_int8(x, codes, packed_scales, [20, 48], None),
                                           F.linear(torch.round(x / step) * step, w), rtol=1e-4, atol=1e-4))

    def test_conv2d_int8_matches_the_reference_on_its_quantized_inputs(self):
        # Each sample rounded to int8 with the scale max|x| / 127, the weight's two scales put on one
        # int8 grid; the integer sums are exact, so the result is the float convolution on those
        # values. The codes are tap-major ([out, kh, kw, in]). Layers of one group whose in-channels
        # are not a multiple of 64 (3, 24, 32; a kernel larger than 1x1, strided, dilated) run int8 on
        # the dense kernels, depthwise layers on their own, grouped layers on the dense kernels a block
        # of groups at a time (ResNeXt's groups of 4 and 8 channels, of 24 in a last block short of
        # groups, two output channels per input channel); the one grouped layer whose last block would
        # read past an image's bytes (5 groups of 40 in-channels and 4 out) runs the exact float path.
        # (in, out, kernel, stride, padding, dilation, groups, batch, size)
        cases = [(64, 64, 3, 1, 1, 1, 1, 2, 9), (128, 32, 3, 2, 1, 1, 1, 1, 11), (64, 16, 1, 1, 0, 1, 1, 3, 7),
                 (40, 24, 1, 2, 0, 1, 1, 1, 8), (64, 8, 3, 1, 2, 2, 1, 1, 13), (128, 20, (3, 1), (2, 1), (1, 0), 1, 1, 2, 8),
                 (64, 5, 5, 1, 2, 1, 1, 1, 3),  # fewer output pixels than a block of inputs
                 (3, 8, 3, 1, 1, 1, 1, 1, 9), (32, 16, 3, 1, 1, 1, 1, 1, 6), (64, 64, 3, 1, 1, 1, 64, 1, 6),
                 (144, 144, 3, 2, 1, 1, 144, 2, 9), (24, 24, 5, 1, 2, 2, 24, 1, 10),  # depthwise
                 (20, 20, 3, 1, 1, 1, 20, 1, 1),  # one pixel: threads split the channels
                 (24, 40, 3, 2, 2, 2, 1, 2, 11), (16, 16, (1, 3), 1, (0, 1), 1, 1, 1, 5),  # dense kernels
                 (32, 16, 3, 1, 1, 1, 2, 1, 6), (128, 128, 3, 1, 1, 1, 32, 2, 7), (64, 64, 3, 2, 1, 1, 8, 1, 9),
                 (128, 128, 3, 1, 1, 1, 32, 1, 3), (72, 72, 3, 1, 1, 1, 3, 1, 6), (16, 32, 3, 1, 1, 1, 16, 2, 8),
                 (48, 48, 3, 1, 2, 2, 6, 1, 9), (96, 192, 1, 1, 0, 1, 2, 2, 5),  # grouped
                 (200, 20, 3, 1, 1, 1, 5, 1, 5)]  # grouped: float
        float_path = {(200, 20, 5)}
        for path in cpu_paths():
            os.environ["TTQ_KERNEL"] = path
            for n, (cin, cout, k, stride, padding, dilation, groups, batch, size) in enumerate(cases):
                ks = (k, k) if isinstance(k, int) else k
                shape = [cout, cin // groups, *ks]
                wp, wn = (0.5, 0.7) if n % 2 else (-0.05, 0.4)  # TTQ may keep a scale that turned negative
                w = ternary(shape, wp=wp, wn=wn, seed=cin + cout)
                codes, scales = torch.ops.ttq.pack(w.permute(0, 2, 3, 1).contiguous(), wp, wn)
                bias = torch.randn(cout)
                x = torch.randn(batch, cin, size, size + 1)[..., 1:]  # not contiguous
                x[0] = 0  # an all-zero sample has no scale to divide by
                pair = lambda v: [v, v] if isinstance(v, int) else list(v)  # noqa: E731
                got = torch.ops.ttq.conv2d_int8(x, codes, scales, shape, bias, pair(stride), pair(padding),
                                                pair(dilation), groups)
                exact = F.conv2d(x, w, bias, stride, padding, dilation, groups)
                if (cin, cout, groups) in float_path:
                    want = exact
                else:
                    step = (x.abs().amax((1, 2, 3), keepdim=True) / 127).clamp_min(torch.finfo(torch.float32).tiny)
                    grid = max(abs(wp), abs(wn)) / 127
                    w8 = torch.where(w == wp, round(wp / grid), torch.where(w == -wn, round(-wn / grid), 0)) * grid
                    want = F.conv2d(torch.round(x / step) * step, w8, bias, stride, padding, dilation, groups)
                    self.assertLess((got - exact).abs().max(), 0.05 * exact.abs().max())
                self.assertEqual(got.shape, want.shape)
                self.assertTrue(torch.allclose(got, want, rtol=1e-4, atol=1e-4),
                                (path, cin, cout, k, groups, (got - want).abs().max()))

    def test_int8_ops_with_a_calibrated_step_quantize_every_input_with_it(self):
        # input_step > 0: every row (linear) or sample (conv2d) is rounded on that one grid, clamped to
        # ±127 steps; 0 means each call's own step, as without it.
        tiny = torch.finfo(torch.float32).tiny
        for path in cpu_paths():
            os.environ["TTQ_KERNEL"] = path
            for n, (out_features, in_features, batch) in enumerate([(5, 7, 1), (33, 100, 3), (40, 96, 70), (9, 33, 15)]):
                w = ternary((out_features, in_features), wp=0.3, wn=0.2, seed=n)
                codes, scales = torch.ops.ttq.pack(w, 0.3, 0.2)
                x = torch.randn(batch, in_features)
                step = x.abs().max().item() / 127 * 0.8  # the largest inputs lie past the grid: clamped
                grid = 0.3 / 127
                w8 = torch.where(w == 0.3, round(0.3 / grid), torch.where(w == -0.2, round(-0.2 / grid), 0)) * grid
                want = F.linear(torch.clamp(torch.round(x / step), -127, 127) * step, w8)
                got = torch.ops.ttq.linear_int8(x, codes, scales, [out_features, in_features], None,
                                                torch.tensor([step]))
                self.assertTrue(torch.allclose(got, want, rtol=1e-4, atol=1e-4), (path, n, (got - want).abs().max()))
                dynamic = torch.ops.ttq.linear_int8(x, codes, scales, [out_features, in_features], None)
                self.assertTrue(torch.equal(torch.ops.ttq.linear_int8(x, codes, scales, [out_features, in_features],
                                                                      None, torch.zeros(1)), dynamic))
            for cin, cout, k, stride, padding, batch, size in [(64, 16, 3, 1, 1, 2, 9), (128, 20, 3, 2, 1, 3, 8),
                                                               (40, 24, 1, 2, 0, 1, 8)]:
                shape = [cout, cin, k, k]
                w = ternary(shape, wp=0.5, wn=0.7, seed=cin)
                codes, scales = torch.ops.ttq.pack(w.permute(0, 2, 3, 1).contiguous(), 0.5, 0.7)
                x = torch.randn(batch, cin, size, size)
                step = max(x.abs().max().item() / 127 * 0.9, tiny)
                grid = 0.7 / 127
                w8 = torch.where(w == 0.5, round(0.5 / grid), torch.where(w == -0.7, round(-0.7 / grid), 0)) * grid
                want = F.conv2d(torch.clamp(torch.round(x / step), -127, 127) * step, w8, None, stride, padding)
                got = torch.ops.ttq.conv2d_int8(x, codes, scales, shape, None, [stride] * 2, [padding] * 2, [1, 1], 1,
                                                torch.tensor([step]))
                self.assertTrue(torch.allclose(got, want, rtol=1e-4, atol=1e-4), (path, cin, (got - want).abs().max()))

    def test_conv2d_int8_keeps_a_channels_last_input_channels_last(self):
        # The same values in the input's memory format, as aten::conv2d gives them.
        for path in cpu_paths():
            os.environ["TTQ_KERNEL"] = path
            for cin, cout, k, stride, padding, batch, size in [(64, 64, 3, 1, 1, 2, 9), (128, 20, 3, 2, 1, 3, 8),
                                                               (40, 24, 1, 1, 0, 2, 7), (3, 8, 3, 1, 1, 1, 9)]:
                shape = [cout, cin, k, k]
                w = ternary(shape, wp=0.5, wn=0.7, seed=cin)
                codes, scales = torch.ops.ttq.pack(w.permute(0, 2, 3, 1).contiguous(), 0.5, 0.7)
                x = torch.randn(batch, cin, size, size)
                bias = torch.randn(cout)
                args = (codes, scales, shape, bias, [stride] * 2, [padding] * 2, [1, 1], 1)
                want = torch.ops.ttq.conv2d_int8(x, *args)
                got = torch.ops.ttq.conv2d_int8(x.contiguous(memory_format=torch.channels_last), *args)
                self.assertTrue(want.is_contiguous())
                self.assertTrue(got.is_contiguous(memory_format=torch.channels_last), (path, cin))
                self.assertTrue(torch.allclose(got, want, rtol=1e-5, atol=1e-5), (path, cin, (got - want).abs().max()))

    def test_conv2d_int8_applies_out_affine_to_each_channel(self):
        # out_affine [2, out] and clamp [floor, ceiling]: min(max(scale · (conv + bias) + shift,
        # floor), ceiling) per channel, as stored; the dense kernels (3 in-channels) and the depthwise
        # ones apply it too. Files written before the clamp give [3 or 4, out],
        # a floor (and ceiling) per channel: floors 0 and -inf mixed, or a ceiling of 0.5 and +inf
        # mixed; where every channel has the same, the clamp computes the same bits.
        inf = float("inf")
        clamps = {"relu": (0.0, inf), "none": (-inf, inf), "relu6": (0.0, 6.0)}
        floors = {"mixed": lambda n: [torch.where(torch.arange(n) % 2 == 0, 0.0, -inf)],
                  "ceilings": lambda n: [torch.where(torch.arange(n) % 2 == 0, 0.0, -inf),
                                         torch.where(torch.arange(n) % 3 == 0, 0.5, inf)],
                  **{name: (lambda c: lambda n: [torch.full((n,), c[0]), torch.full((n,), c[1])])(c)
                     for name, c in clamps.items()}}
        for path in cpu_paths():
            os.environ["TTQ_KERNEL"] = path
            for cin, cout, k, stride, padding, groups, batch, size, last, floor in [
                    (64, 16, 3, 1, 1, 1, 2, 9, False, "mixed"), (128, 20, 3, 2, 1, 1, 3, 8, True, "mixed"),
                    (40, 24, 1, 1, 0, 1, 9, 3, False, "mixed"), (3, 8, 3, 1, 1, 1, 1, 9, True, "mixed"),
                    (3, 8, 3, 1, 1, 1, 2, 7, False, "relu"), (3, 8, 3, 2, 1, 1, 2, 7, True, "none"),
                    (16, 16, 3, 1, 1, 16, 2, 10, True, "relu"), (16, 16, 3, 2, 1, 16, 1, 9, False, "mixed"),
                    (64, 16, 3, 1, 1, 1, 2, 9, True, "relu6"), (40, 24, 1, 1, 0, 1, 9, 3, False, "ceilings"),
                    (16, 16, 3, 1, 1, 16, 2, 10, True, "relu6"), (64, 16, 3, 1, 1, 1, 2, 9, False, "relu"),
                    (128, 20, 3, 2, 1, 1, 3, 8, True, "none"), (3, 8, 3, 1, 1, 1, 1, 9, False, "ceilings")]:
                shape = [cout, cin // groups, k, k]
                w = ternary(shape, wp=0.5, wn=0.7, seed=cin)
                codes, scales = torch.ops.ttq.pack(w.permute(0, 2, 3, 1).contiguous(), 0.5, 0.7)
                x = torch.randn(batch, cin, size, size)
                if last:
                    x = x.contiguous(memory_format=torch.channels_last)
                bias = torch.randn(cout)
                affine = torch.stack([torch.rand(cout) + 0.5, torch.randn(cout), *floors[floor](cout)])
                args = (codes, scales, shape, bias, [stride] * 2, [padding] * 2, [1, 1], groups)
                plain = torch.ops.ttq.conv2d_int8(x, *args)
                got = torch.ops.ttq.conv2d_int8(x, *args, None, affine)
                c = lambda t: t.view(1, -1, 1, 1)  # noqa: E731
                want = torch.maximum(plain * c(affine[0]) + c(affine[1]), c(affine[2]))
                if len(affine) == 4:
                    want = torch.minimum(want, c(affine[3]))
                self.assertTrue(torch.allclose(got, want, rtol=1e-5, atol=1e-5),
                                (path, cin, groups, floor, (got - want).abs().max()))
                self.assertEqual(got.is_contiguous(memory_format=torch.channels_last), last, (cin, groups, floor, got.stride()))
                if floor in clamps:
                    clamp = torch.tensor(clamps[floor])
                    self.assertTrue(torch.equal(torch.ops.ttq.conv2d_int8(x, *args, None, affine[:2], clamp=clamp), got))
                    if floor != "none":  # a clamp alone: the identity affine
                        alone = torch.ops.ttq.conv2d_int8(x, *args, clamp=clamp)
                        self.assertTrue(torch.equal(alone, plain.clamp(*clamps[floor])), (path, floor))
                else:  # the first three rows: no ceiling
                    three = torch.ops.ttq.conv2d_int8(x, *args, None, affine[:3])
                    self.assertTrue(torch.equal(three, torch.maximum(got, three)))
        with self.assertRaisesRegex(RuntimeError, r"ttq::conv2d_int8: out_affine must be a float32 CPU tensor \[2, 8\] "
                                                  r"\(or, without a clamp, \[3, 8\] or \[4, 8\]\)"):
            torch.ops.ttq.conv2d_int8(x, *args, None, torch.zeros(5, 8))
        with self.assertRaisesRegex(RuntimeError, r"ttq::conv2d_int8: out_affine must be a float32 CPU tensor \[2, 8\]"):
            torch.ops.ttq.conv2d_int8(x, *args, None, affine, clamp=torch.zeros(2))
        with self.assertRaisesRegex(RuntimeError, r"ttq::conv2d_int8: clamp must be a float32 CPU tensor of two values"):
            torch.ops.ttq.conv2d_int8(x, *args, None, affine[:2], clamp=torch.zeros(3))

    def test_conv2d_affine_is_a_float_convolution_with_its_batch_norm_folded(self):
        # A float layer (one the packing keeps, as ResNet's first) with [2, out] and a clamp folded
        # in (files written before: [3 or 4, out]), in the input's memory format; its weight stays as
        # it was. Given in 8 bits (int8 and its weight_step) it is that weight, q · step.
        for last, rows in ((False, 3), (True, 4), (True, 3), (False, 2), (True, 2)):
            w, bias = torch.randn(16, 3, 7, 7), torch.randn(16)
            kept = w.clone()
            x = torch.randn(2, 3, 20, 20)
            if last:
                x = x.contiguous(memory_format=torch.channels_last)
            affine = torch.stack([torch.rand(16) + 0.5, torch.randn(16), torch.zeros(16), torch.full((16,), 0.7)][:rows])
            clamp = torch.tensor([0.0, 0.7]) if rows == 2 else None
            got = torch.ops.ttq.conv2d_affine(x, w, bias, [2, 2], [3, 3], [1, 1], 1, affine, clamp=clamp)
            c = lambda t: t.view(1, -1, 1, 1)  # noqa: E731
            want = torch.clamp_min(F.conv2d(x, w, bias, 2, 3) * c(affine[0]) + c(affine[1]), 0)
            if rows != 3:
                want = torch.clamp_max(want, 0.7)
            self.assertTrue(torch.allclose(got, want, rtol=1e-4, atol=1e-4), (last, rows, (got - want).abs().max()))
            self.assertEqual(got.is_contiguous(memory_format=torch.channels_last), last)
            self.assertTrue(torch.equal(w, kept))
            step = w.abs().amax((1, 2, 3)) / 127
            q = torch.round(w / step.view(-1, 1, 1, 1)).to(torch.int8)
            eight_bit = torch.ops.ttq.conv2d_affine(x, q, bias, [2, 2], [3, 3], [1, 1], 1, affine, clamp=clamp,
                                                    weight_step=step)
            rounded = torch.ops.ttq.conv2d_affine(x, q.float() * step.view(-1, 1, 1, 1), bias, [2, 2], [3, 3], [1, 1], 1,
                                                  affine, clamp=clamp)
            self.assertTrue(torch.equal(eight_bit, rounded), (last, rows))
        with self.assertRaisesRegex(RuntimeError, r"ttq::conv2d_affine: out_affine must be a float32 CPU tensor"):
            torch.ops.ttq.conv2d_affine(x, w, bias, [2, 2], [3, 3], [1, 1], 1, torch.zeros(3, 15))
        with self.assertRaisesRegex(RuntimeError, r"ttq::conv2d_affine: the weight must be a float32 or int8 CPU tensor"):
            torch.ops.ttq.conv2d_affine(x, w[0], bias, [2, 2], [3, 3], [1, 1], 1, affine)
        with self.assertRaisesRegex(RuntimeError, r"ttq::conv2d_affine: an int8 weight needs its weight_step, a float32 "
                                                  r"tensor \[16\]"):
            torch.ops.ttq.conv2d_affine(x, q, bias, [2, 2], [3, 3], [1, 1], 1, affine, clamp=clamp)

    def test_dense_layers_follow_their_weights_changed_in_place(self):
        # A layer's bytes for the dense kernels are laid out on its first call and kept: a weight
        # changed in place afterwards (a grouped ternary layer's codes and scales, a float layer's
        # weight) gives what a fresh layer of the new weight gives, not the old one's results.
        g = torch.Generator().manual_seed(3)
        for path in cpu_paths():
            os.environ["TTQ_KERNEL"] = path
            x = torch.randn(2, 32, 9, 9, generator=g)
            codes, scales = torch.ops.ttq.pack(ternary([32, 3, 3, 8], seed=1), 0.3, 0.2)
            new_codes, new_scales = torch.ops.ttq.pack(ternary([32, 3, 3, 8], wp=0.5, wn=0.1, seed=2), 0.5, 0.1)
            conv = lambda c, s: torch.ops.ttq.conv2d_int8(  # noqa: E731
                x, c, s, [32, 8, 3, 3], None, [1, 1], [1, 1], [1, 1], 4)
            before = conv(codes, scales)
            codes.copy_(new_codes)
            self.assertTrue(torch.equal(conv(codes, scales), conv(new_codes, scales)), path)
            scales.copy_(new_scales)
            after = conv(codes, scales)
            self.assertTrue(torch.equal(after, conv(new_codes.clone(), new_scales.clone())), path)
            self.assertFalse(torch.equal(after, before))
            w, identity = torch.randn(16, 32, 3, 3, generator=g), torch.stack([torch.ones(16), torch.zeros(16)])
            affine = lambda weight: torch.ops.ttq.conv2d_affine(  # noqa: E731
                x, weight, None, [1, 1], [1, 1], [1, 1], 1, identity, torch.tensor([0.05]))
            before = affine(w)
            w[:8].neg_()
            self.assertTrue(torch.equal(affine(w), affine(w.clone())), path)
            self.assertTrue(torch.equal(affine(w)[:, 8:], before[:, 8:]))
            self.assertFalse(torch.equal(affine(w), before))

    def test_conv2d_affine_with_an_input_step_runs_int8_with_8_bit_weights(self):
        # A float layer of an int8 model (ResNet's first): its inputs on the int8 grid of the step
        # (calibrated, or each sample's own where it is 0), its weight rounded to 8 bits per output
        # channel (max |w| / 127); the integer sums are exact, so the result is the float
        # convolution of those values with the affine after it, the same floats on every path.
        # (in, out, kernel, stride, padding, dilation, batch, size, channels-last, step)
        cases = [(3, 64, 7, 2, 3, 1, 2, 20, True, 0.0), (3, 64, 7, 2, 3, 1, 1, 17, False, 0.045),
                 (3, 8, 3, 1, 2, 2, 1, 9, True, 0.0),  # dilated: a tap a segment
                 (16, 40, 3, 1, 0, 1, 1, 3, True, 0.04),  # one pixel: threads split the 40 channels
                 (24, 16, 1, 1, 0, 1, 3, 6, False, 0.0), (5, 20, (3, 1), (2, 1), (1, 0), 1, 2, 8, True, 0.05)]
        first = {}
        for path in cpu_paths():
            os.environ["TTQ_KERNEL"] = path
            for n, (cin, cout, k, stride, padding, dilation, batch, size, last, step) in enumerate(cases):
                g = torch.Generator().manual_seed(n)
                ks = (k, k) if isinstance(k, int) else k
                w, bias = torch.randn(cout, cin, *ks, generator=g), torch.randn(cout, generator=g)
                w[1] = 0  # an all-zero channel has no scale to divide by
                x = torch.randn(batch, cin, size, size, generator=g)
                x = x.contiguous(memory_format=torch.channels_last) if last else x
                affine = torch.stack([torch.rand(cout, generator=g) + 0.5, torch.randn(cout, generator=g),
                                      torch.zeros(cout), torch.full((cout,), 1.5)])
                pair = lambda v: [v, v] if isinstance(v, int) else list(v)  # noqa: E731
                got = torch.ops.ttq.conv2d_affine(x, w, bias, pair(stride), pair(padding), pair(dilation), 1, affine,
                                                  torch.tensor([step]))
                x_step = torch.tensor(step) if step else x.abs().amax((1, 2, 3), keepdim=True) / 127
                w_step = (w.abs().amax((1, 2, 3), keepdim=True) / 127).clamp_min(torch.finfo(torch.float32).tiny)
                x8 = torch.round(x / x_step).clamp(-127, 127) * x_step
                w8 = torch.round(w / w_step).clamp(-127, 127) * w_step
                c = lambda t: t.view(1, -1, 1, 1)  # noqa: E731
                affined = lambda y: torch.clamp(y * c(affine[0]) + c(affine[1]), 0, 1.5)  # noqa: E731
                want = affined(F.conv2d(x8, w8, bias, stride, padding, dilation))
                conv = F.conv2d(x, w, bias, stride, padding, dilation)
                self.assertEqual(got.shape, want.shape)
                self.assertTrue(torch.allclose(got, want, rtol=1e-4, atol=1e-4), (path, n, (got - want).abs().max()))
                # Within a few percent of the float layer's range: 8 bits of inputs and weights.
                self.assertLess((got - affined(conv)).abs().max(), 0.05 * (conv * c(affine[0])).abs().max(), (path, n))
                self.assertEqual(got.is_contiguous(memory_format=torch.channels_last), last)
                self.assertTrue(torch.equal(got, first.setdefault(n, got)), (path, n))
                # Its weight stored in 8 bits (as export stores it), the affine's floor and ceiling
                # as its clamp: the same bits.
                stored = torch.ops.ttq.conv2d_affine(
                    x, torch.round(w / w_step).to(torch.int8), bias, pair(stride), pair(padding), pair(dilation), 1,
                    affine[:2], torch.tensor([step]), clamp=torch.tensor([0.0, 1.5]), weight_step=w_step.view(-1))
                self.assertTrue(torch.equal(stored, got), (path, n))

    def test_conv2d_affine_returns_the_max_pool_of_its_output(self):
        # max_pool [kernel, stride, padding]: exactly the max-pool of what it returns without, on the
        # int8 path (which pools bands of the output as it computes them, on any count of threads,
        # keeping the rows two bands share, 16 channels at a time and the last 4 apart) and the float
        # one, in both memory formats.
        w, bias = torch.randn(20, 3, 7, 7), torch.randn(20)
        affine = torch.stack([torch.rand(20) + 0.5, torch.randn(20), torch.zeros(20)])
        threads = torch.get_num_threads()
        for path in cpu_paths():
            os.environ["TTQ_KERNEL"] = path
            for step, last, size, batch, pool, count in (
                    (torch.tensor([0.04]), True, 30, 2, [3, 2, 1], 2), (torch.tensor([0.0]), False, 17, 1, [3, 2, 1], 3),
                    (torch.tensor([0.04]), False, 41, 3, [2, 2, 0], 1), (torch.tensor([0.04]), True, 37, 1, [3, 1, 1], 5),
                    (torch.tensor([0.04]), True, 75, 2, [5, 3, 2], 2), (None, True, 20, 2, [3, 2, 1], 2)):
                torch.set_num_threads(count)
                x = torch.randn(batch, 3, size, size)
                x = x.contiguous(memory_format=torch.channels_last) if last else x
                conv = lambda pool: torch.ops.ttq.conv2d_affine(  # noqa: E731
                    x, w, bias, [2, 2], [3, 3], [1, 1], 1, affine, step, pool)
                want = F.max_pool2d(conv([]), pool[0], pool[1], pool[2])
                got = conv(pool)
                self.assertTrue(torch.equal(got, want), (path, size, pool))
                self.assertEqual(got.is_contiguous(memory_format=torch.channels_last), last)
        torch.set_num_threads(threads)
        with self.assertRaisesRegex(RuntimeError, r"ttq::conv2d_affine: max_pool must be \[kernel, stride, padding\]"):
            torch.ops.ttq.conv2d_affine(x, w, bias, [2, 2], [3, 3], [1, 1], 1, affine, None, [3, 2])

    def test_conv2d_affine_hands_the_next_layer_its_int8_input(self):
        # With an output_step (on the int8 path: an input step and one group), the bytes conv2d_int8's
        # output_step stores: its float output on that step, q + 128 (values past the grid clamped),
        # pooled or not, in both memory formats, on any count of threads. Without the int8 path an
        # output_step is one clear error.
        g = torch.Generator().manual_seed(6)
        w, bias = torch.randn(20, 3, 7, 7, generator=g), torch.randn(20, generator=g)
        affine = torch.stack([torch.rand(20, generator=g) + 0.5, torch.randn(20, generator=g), torch.zeros(20)])
        threads = torch.get_num_threads()
        for path in cpu_paths():
            os.environ["TTQ_KERNEL"] = path
            for last, pool, count, size in ((True, [3, 2, 1], 2, 30), (False, [3, 2, 1], 3, 17), (True, [], 1, 20),
                                            (False, [], 2, 15), (False, [2, 2, 0], 1, 41), (True, [5, 3, 2], 2, 75)):
                torch.set_num_threads(count)
                x = torch.randn(2, 3, size, size, generator=g)
                x = x.contiguous(memory_format=torch.channels_last) if last else x
                conv = lambda output_step: torch.ops.ttq.conv2d_affine(  # noqa: E731
                    x, w, bias, [2, 2], [3, 3], [1, 1], 1, affine, torch.tensor([0.04]), pool, None, None, output_step)
                floats = conv(None)
                step = floats.abs().max().item() / 127 * 0.7
                got = conv(torch.tensor([step]))
                want = (torch.round(floats / step).clamp(-127, 127) + 128).to(torch.uint8)
                self.assertEqual(got.dtype, torch.uint8)
                self.assertTrue(torch.equal(got, want), (path, last, pool, count))
                self.assertEqual(got.is_contiguous(memory_format=torch.channels_last), last)
        torch.set_num_threads(threads)
        with self.assertRaisesRegex(RuntimeError, r"ttq::conv2d_affine: an output_step needs the int8 path: an "
                                                  r"input_step and one group \(got 1\)"):
            torch.ops.ttq.conv2d_affine(x, w, bias, [2, 2], [3, 3], [1, 1], 1, affine, None, [], None, None,
                                        torch.tensor([0.1]))

    def test_conv2d_int8_hands_the_next_layer_its_int8_input(self):
        # With an output_step, the output is the next layer's input as its own quantization would
        # make it (uint8, q + 128 on every path), and that layer, given the bytes, computes exactly
        # what it computes from the float output. With a clamp whose floor and ceiling fall between two
        # steps (-18.5 and 41.5 of them), clamping the float output first gives the same bytes.
        first = {}
        for path in cpu_paths():
            os.environ["TTQ_KERNEL"] = path
            for last, clamp in itertools.product((False, True), (None, torch.tensor([-0.37, 0.83]))):
                g = torch.Generator().manual_seed(5)
                w1, w2 = ternary((64, 3, 3, 64), seed=1), ternary((24, 1, 1, 64), seed=2)
                codes1, scales1 = torch.ops.ttq.pack(w1, 0.3, 0.2)
                codes2, scales2 = torch.ops.ttq.pack(w2, 0.3, 0.2)
                x = torch.randn(2, 64, 9, 7, generator=g)
                x = x.contiguous(memory_format=torch.channels_last) if last else x
                affine = torch.stack([torch.rand(64, generator=g) + 0.5, torch.randn(64, generator=g), torch.zeros(64)])
                bias, step, next_step = torch.randn(64, generator=g), torch.tensor([0.05]), torch.tensor([0.02])
                first_layer = lambda out: torch.ops.ttq.conv2d_int8(  # noqa: E731
                    x, codes1, scales1, [64, 64, 3, 3], bias, [1, 1], [1, 1], [1, 1], 1, step,
                    affine if clamp is None else affine[:2], out, clamp=clamp)
                y, q = first_layer(None), first_layer(next_step)
                self.assertEqual(q.dtype, torch.uint8)
                want = (torch.round(y / next_step).clamp(-127, 127) + 128).to(torch.uint8)
                self.assertTrue(torch.equal(q, want), (path, last, clamp))
                if clamp is not None:  # both bounds reached, and a byte for each
                    self.assertEqual([(q == b).any().item() for b in (110, 170)], [True, True])
                self.assertEqual(q.is_contiguous(memory_format=torch.channels_last), last)
                second = lambda t: torch.ops.ttq.conv2d_int8(  # noqa: E731
                    t, codes2, scales2, [24, 64, 1, 1], None, [1, 1], [0, 0], [1, 1], 1, next_step)
                self.assertTrue(torch.equal(second(q), second(y)), (path, last))
                self.assertTrue(torch.equal(q, first.setdefault((last, clamp is None), q)), (path, last))
        with self.assertRaisesRegex(RuntimeError, r"ttq::conv2d_int8: a uint8 input \(the int8 output of the layer "
                                                  r"before\) needs the layer's calibrated input_step"):
            torch.ops.ttq.conv2d_int8(q, codes2, scales2, [24, 64, 1, 1], None, [1, 1], [0, 0], [1, 1], 1)

    def test_depthwise_layers_read_the_bytes_before_them_where_they_lie(self):
        # A depthwise layer given the layer before's bytes channels-last reads its inside pixels from
        # them and only its edge pixels from a padded copy: exactly what it computes from the same
        # bytes in NCHW (copied whole into a padded image), for paddings 0 to 2, strides 1 and 2,
        # dilation 2, channels off a register's 16, a kernel wider than the image's inside, any count
        # of threads, floats or bytes out.
        g = torch.Generator().manual_seed(12)
        threads = torch.get_num_threads()
        # (channels, size, kernel, stride, padding, dilation, batch)
        for c, size, k, stride, padding, dilation, batch in ((32, 12, 3, 1, 1, 1, 2), (48, 13, 3, 2, 1, 1, 2),
                                                             (20, 9, 5, 1, 2, 2, 1), (16, 7, 3, 2, 2, 1, 3),
                                                             (64, 6, 3, 1, 0, 1, 2), (4, 5, 5, 1, 1, 1, 2)):
            codes, scales = torch.ops.ttq.pack(ternary([c, k, k, 1], seed=c + k), 0.3, 0.2)
            bytes_ = torch.randint(0, 256, (batch, c, size, size), dtype=torch.uint8, generator=g)
            affine = torch.stack([torch.rand(c, generator=g) + 0.5, torch.randn(c, generator=g), torch.zeros(c),
                                  torch.full((c,), 6.0)])
            for path in cpu_paths():
                os.environ["TTQ_KERNEL"] = path
                for count in (1, 2):
                    torch.set_num_threads(count)
                    for out_affine, output_step in ((None, None), (affine, torch.tensor([0.04]))):
                        conv = lambda x: torch.ops.ttq.conv2d_int8(  # noqa: E731
                            x, codes, scales, [c, 1, k, k], None, [stride] * 2, [padding] * 2, [dilation] * 2, c,
                            torch.tensor([0.05]), out_affine, output_step)
                        got = conv(bytes_.contiguous(memory_format=torch.channels_last))
                        self.assertTrue(torch.equal(got, conv(bytes_)), (c, size, k, stride, padding, path, count))
                        self.assertTrue(got.is_contiguous(memory_format=torch.channels_last))
        torch.set_num_threads(threads)

    def test_conv2d_int8_adds_a_residual_before_its_floor_and_ceiling(self):
        # residual: exactly clamp(conv + residual) as the graph computed it (the add, then the ReLU
        # or ReLU6), whatever the path, layer shape (1x1, 3x3 strided, depthwise, grouped on the dense
        # kernels, a grouped layer on the float path), memory format, and a residual that broadcasts (added after the layer). A
        # residual of bytes (a block's output stored as the next block's input, q + 128 on its step)
        # adds exactly the floats it stands for, q · step.
        g = torch.Generator().manual_seed(9)
        for shape, groups, stride, padding, res_batch in (([48, 64, 1, 1], 1, 1, 0, 2), ([64, 64, 3, 3], 1, 2, 1, 2),
                                                         ([32, 1, 3, 3], 32, 1, 1, 2), ([16, 8, 3, 3], 2, 1, 1, 2),
                                                         ([64, 4, 3, 3], 16, 1, 1, 2), ([20, 40, 3, 3], 5, 1, 1, 2),
                                                         ([24, 64, 1, 1], 1, 1, 0, 1)):
            rows, cin = shape[0], shape[1] * groups
            codes, scales = torch.ops.ttq.pack(ternary([shape[0], shape[2], shape[3], shape[1]], seed=rows), 0.3, 0.2)
            x, bias = torch.randn(2, cin, 9, 7, generator=g), torch.randn(rows, generator=g)
            scale, shift = torch.rand(rows, generator=g) + 0.5, torch.randn(rows, generator=g)
            inf = torch.full((rows,), float("inf"))
            for path in cpu_paths():
                os.environ["TTQ_KERNEL"] = path
                for last in (False, True):
                    xl = x.contiguous(memory_format=torch.channels_last) if last else x
                    conv = lambda affine, residual=None, step=None: torch.ops.ttq.conv2d_int8(  # noqa: E731
                        xl, codes, scales, shape, bias, [stride] * 2, [padding] * 2, [1, 1], groups,
                        torch.tensor([0.05]), affine, None, residual, step)
                    open_ = conv(torch.stack([scale, shift, -inf, inf]))
                    residual = torch.randn(res_batch, *open_.shape[1:], generator=g)
                    q = torch.randint(0, 256, residual.shape, dtype=torch.uint8, generator=g)
                    if last:
                        residual = residual.contiguous(memory_format=torch.channels_last)
                        q = q.contiguous(memory_format=torch.channels_last)
                    q_step = torch.tensor([0.03])
                    for floor, ceiling in ((-inf, inf), (torch.zeros(rows), inf), (torch.zeros(rows), torch.full((rows,), 6.0))):
                        affine = torch.stack([scale, shift, floor, ceiling])
                        got = conv(affine, residual)
                        want = torch.minimum(torch.maximum(open_ + residual, floor.view(1, -1, 1, 1)),
                                             ceiling.view(1, -1, 1, 1))
                        self.assertTrue(torch.equal(got, want), (shape, path, last))
                        got = conv(affine, q, q_step)
                        self.assertTrue(torch.equal(got, conv(affine, (q.float() - 128) * q_step)), (shape, path, last))
                    self.assertTrue(torch.equal(conv(None, residual), conv(None) + residual), (shape, path))
        with self.assertRaisesRegex(RuntimeError, "ttq::conv2d_int8: the residual must be a float32 CPU tensor"):
            conv(None, residual.double())
        with self.assertRaisesRegex(RuntimeError, r"ttq::conv2d_int8: a uint8 residual \(the int8 output of a layer "
                                                  r"before\) needs its residual_step"):
            conv(None, q)

    def test_linear_8bit_computes_the_exact_int32_sums_on_every_path(self):
        # A float layer an int8 model keeps in 8 bits: each input row on its own int8 grid (or the
        # calibrated step), the exact int32 sums, then the two steps and the bias, as
        # step_w · (step_x · Σ) + bias, bit for bit on every path; rows 64-byte multiples apart.
        g = torch.Generator().manual_seed(4)
        for rows, k, n in ((1000, 1280, 1), (10, 512, 16), (37, 70, 3), (5, 64, 9), (16, 1, 4), (3, 63, 5)):
            w, bias, x = torch.randn(rows, k, generator=g), torch.randn(rows, generator=g), torch.randn(n, k, generator=g)
            w_step = w.abs().amax(1) / 127
            q = torch.round(w / w_step[:, None]).clamp(-127, 127)
            padded = torch.zeros(rows, (k + 63) // 64 * 64, dtype=torch.int8)
            padded[:, :k] = q.to(torch.int8)
            weight = padded[:, :k]
            for input_step in (None, torch.tensor([0.02])):
                x_step = x.abs().amax(1, keepdim=True) / 127 if input_step is None else input_step
                dot = (torch.round(x / x_step).clamp(-127, 127).double() @ q.double().T).float()
                want = w_step * (x_step * dot) + bias
                for path in cpu_paths():
                    os.environ["TTQ_KERNEL"] = path
                    got = torch.ops.ttq.linear_8bit(x.view(1, n, k), weight, w_step, bias, input_step)
                    self.assertTrue(torch.equal(got, want.view(1, n, rows)), (rows, k, n, path))
        with self.assertRaisesRegex(RuntimeError, r"ttq::linear_8bit: the weight's rows must lie 64 bytes apart"):
            torch.ops.ttq.linear_8bit(x, weight.contiguous(), w_step, bias)
        with self.assertRaisesRegex(RuntimeError, r"ttq::linear_8bit: the input has 5 features; the weight takes 63"):
            torch.ops.ttq.linear_8bit(torch.randn(2, 5), weight, w_step, bias)

    def test_a_bad_input_step_is_one_clear_error(self):
        w = ternary((4, 64))
        codes, scales = torch.ops.ttq.pack(w, 0.3, 0.2)
        for step, message in ((torch.tensor([-1.0]), "must be finite and not negative"),
                              (torch.tensor([float("nan")]), "must be finite and not negative"),
                              (torch.zeros(2), "must hold one float32 value"),
                              (torch.zeros(1, dtype=torch.float64), "must hold one float32 value")):
            with self.assertRaisesRegex(RuntimeError, "ttq::linear_int8: input_step " + message):
                torch.ops.ttq.linear_int8(torch.randn(2, 64), codes, scales, [4, 64], None, step)

if __name__ == "__main__":
    unittest.main()
