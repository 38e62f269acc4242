"""The float operators of libttq_ops.so and its packing, loaded by PyTorch itself, against
torch.nn.functional on many shapes, on every kernel path this CPU runs (TTQ_KERNEL=portable|avx2|avx512).
The int8 operators are test_ops_int8's, packed models test_packed's.
"""
import os
import subprocess
import sys
import unittest

import torch
import torch.nn.functional as F

from ops_testing import KernelPathCase, cpu_paths, ternary


class OnEveryPath(KernelPathCase):
    def test_linear_matches_the_reference_on_many_shapes(self):
        # (out, in, batch): sizes off the 32-weight groups, single rows and columns, batches on both
        # sides of the kernel/BLAS switch (8), a 3-D input.
        shapes = [(1, 1, (1,)), (5, 7, (1,)), (33, 100, (3,)), (64, 32, (8,)), (17, 31, (9,)), (10, 65, (2, 5)),
                  (128, 257, (4,)), (3, 64, (40,)), (96, 1000, (1,))]
        for path in cpu_paths():
            os.environ["TTQ_KERNEL"] = path
            self.assertEqual(torch.ops.ttq.kernel(), path)
            for out_features, in_features, batch in shapes:
                w = ternary((out_features, in_features), seed=out_features)
                codes, scales = torch.ops.ttq.pack(w, 0.3, 0.2)
                for bias in (None, torch.randn(out_features)):
                    x = torch.randn(*batch, in_features)
                    got = torch.ops.ttq.linear(x, codes, scales, [out_features, in_features], bias)
                    want = F.linear(x, w, bias)
                    self.assertEqual(got.shape, want.shape)
                    self.assertTrue(torch.allclose(got, want, rtol=1e-4, atol=1e-4),
                                    (path, out_features, in_features, batch, (got - want).abs().max()))
            # A non-contiguous input (a transposed view).
            w = ternary((20, 48))
            codes, scales = torch.ops.ttq.pack(w, 0.3, 0.2)
            x = torch.randn(48, 6).t()
            self.assertFalse(x.is_contiguous())
            self.assertTrue(torch.allclose(torch.ops.ttq.linear(x, codes, scales, [20, 48], None), F.linear(x, w),
                                           rtol=1e-4, atol=1e-4))

    def test_conv2d_matches_the_reference(self):
        # (in, out, kernel, stride, padding, dilation, groups, batch, size). Groups 1 run on oneDNN with
        # the weight decoded into its blocked layout where ttq is built with it: channel counts on and
        # off its blocks of 8, 16 and 32 (the layout padded with zeros past 24, 40, 144), rows the
        # decoder takes 32 and 16 at a time and one by one, 1x1, stride 2, dilation.
        cases = [(3, 8, 3, 1, 1, 1, 1, 1, 9), (16, 16, 3, 2, 1, 1, 16, 2, 10), (8, 12, 1, 1, 0, 1, 1, 3, 7),
                 (6, 9, 5, 1, 2, 2, 3, 1, 13), (4, 5, (3, 1), (2, 1), (1, 0), 1, 1, 2, 8),
                 (64, 64, 3, 1, 1, 1, 1, 2, 8), (32, 24, 1, 1, 0, 1, 1, 1, 9), (24, 40, 3, 2, 1, 1, 1, 2, 11),
                 (144, 144, 3, 1, 1, 1, 1, 1, 6), (128, 96, 3, 1, 2, 2, 1, 1, 9), (256, 48, 1, 2, 0, 1, 1, 3, 7),
                 (17, 80, 5, 1, 2, 1, 1, 1, 8)]
        for path in cpu_paths():
            os.environ["TTQ_KERNEL"] = path
            for cin, cout, k, stride, padding, dilation, groups, batch, size in cases:
                ks = (k, k) if isinstance(k, int) else k
                shape = [cout, cin // groups, *ks]
                w = ternary(shape, wp=0.5, wn=0.7, seed=cin)
                codes, scales = torch.ops.ttq.pack(w, 0.5, 0.7)
                bias = torch.randn(cout)
                x = torch.randn(batch, cin, size, size + 1)[..., 1:]  # not contiguous
                pair = lambda v: [v, v] if isinstance(v, int) else list(v)  # noqa: E731
                # A strided input and a channels-last one.
                for x in (x, x.contiguous(memory_format=torch.channels_last)):
                    got = torch.ops.ttq.conv2d(x, codes, scales, shape, bias, pair(stride), pair(padding),
                                               pair(dilation), groups)
                    want = F.conv2d(x, w, bias, stride, padding, dilation, groups)
                    self.assertTrue(torch.allclose(got, want, rtol=1e-4, atol=1e-4), (path, cin, cout, k, groups))
                    for layout in (torch.contiguous_format, torch.channels_last):  # aten's layout
                        self.assertEqual(got.is_contiguous(memory_format=layout),
                                         want.is_contiguous(memory_format=layout), (cin, cout, layout))

    def test_conv2d_on_avx2_onednn_and_without_a_weight_reorder(self):
        # A process whose oneDNN runs its AVX2 kernels (their weights in blocks of 8 output channels,
        # as on an AVX2-only machine) against torch.nn.functional, on both ttq kernel paths that
        # decode into them; and oneDNN's own log of the calls: where ttq decodes the weight into
        # the layout oneDNN's kernel reads, oneDNN reorders no weight, as it does for aten::conv2d.
        script = (
            "import os, sys, torch, torch.nn.functional as F\n"
            "sys.path.insert(0, %r)\n"
            "from ops_testing import cpu_paths, ternary\n"
            "calls = []\n"
            "for path in [p for p in cpu_paths() if p != 'portable']:\n"
            "    for cin, cout, size, cl in ((64, 64, 7, False), (40, 24, 9, True), (128, 136, 5, False)):\n"
            "        w = ternary((cout, cin, 3, 3), 0.4, 0.6, seed=cout)\n"
            "        x = torch.randn(2, cin, size, size)\n"
            "        calls.append((path, w, x.contiguous(memory_format=torch.channels_last) if cl else x))\n"
            "print('ttq calls', flush=True)\n"
            "got = []\n"
            "for path, w, x in calls:\n"
            "    os.environ['TTQ_KERNEL'] = path\n"
            "    codes, scales = torch.ops.ttq.pack(w, 0.4, 0.6)\n"
            "    got.append(torch.ops.ttq.conv2d(x, codes, scales, list(w.shape), None, [1, 1], [1, 1], [1, 1], 1))\n"
            "print('reference calls', flush=True)\n"
            "for (path, w, x), y in zip(calls, got):\n"
            "    assert torch.allclose(y, F.conv2d(x, w, None, 1, 1), rtol=1e-4, atol=1e-4), (path, w.shape)\n"
            "print('ok', flush=True)\n" % os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ, ONEDNN_MAX_CPU_ISA="AVX2", DNNL_MAX_CPU_ISA="AVX2", ONEDNN_VERBOSE="1",
                   DNNL_VERBOSE="1")
        run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
        self.assertEqual(run.returncode, 0, run.stderr[-2000:])
        ttq_calls = run.stdout.split("ttq calls")[-1].split("reference calls")[0]
        log = [line for line in ttq_calls.splitlines() if ",exec," in line]
        if os.environ.get("TTQ_ONEDNN") != "1":
            self.skipTest("ttq built without oneDNN (TTQ_ONEDNN=OFF): aten::conv2d runs the float path")
        convolutions = [line for line in log if ",convolution," in line]
        self.assertTrue(convolutions and all("avx2" in line for line in convolutions), convolutions[:3])
        self.assertTrue(any("8a" in line for line in convolutions), convolutions[:3])  # blocks of 8 channels
        self.assertFalse([line for line in log if ",reorder," in line and "x3x3" in line])  # no weight reordered
        self.assertIn("ok", run.stdout)




class Packing(unittest.TestCase):
    def test_round_trip_is_bit_exact_with_any_scales(self):
        for wp, wn in ((0.3, 0.2), (1.0, 1.0), (-0.05, 0.4)):  # TTQ keeps scales that turned negative
            w = ternary((7, 3, 3, 3), wp=wp, wn=wn)
            codes, scales = torch.ops.ttq.pack(w, wp, wn)
            self.assertEqual(codes.dtype, torch.uint8)
            self.assertEqual(codes.numel(), 7 * 8)  # 27 weights a row: one group of 32 weights, 8 bytes
            self.assertTrue(torch.equal(torch.ops.ttq.unpack(codes, scales, [7, 3, 3, 3]), w))

    def test_bad_codes_and_weights_are_one_clear_error(self):
        w = ternary((4, 40))
        codes, scales = torch.ops.ttq.pack(w, 0.3, 0.2)
        with self.assertRaisesRegex(RuntimeError, r"packed codes hold 64 bytes; a weight of this shape needs 96"):
            torch.ops.ttq.linear(torch.randn(1, 70), codes, scales, [4, 70], None)
        with self.assertRaisesRegex(RuntimeError, r"the input has 39 features; the weight takes 40"):
            torch.ops.ttq.linear(torch.randn(1, 39), codes, scales, [4, 40], None)
        with self.assertRaisesRegex(RuntimeError, r"not a ternary weight of these scales"):
            torch.ops.ttq.pack(torch.randn(3, 3), 0.3, 0.2)
        broken = codes.clone()
        broken[0, 11] = 0x80  # the positive bit of weight 63 of row 0, past its 40 weights
        with self.assertRaisesRegex(RuntimeError, r"set bits past the weight's end"):
            torch.ops.ttq.unpack(broken, scales, [4, 40])
        os.environ["TTQ_KERNEL"] = "sse9"
        try:
            with self.assertRaisesRegex(RuntimeError, r"TTQ_KERNEL=sse9 is not one of portable, avx2, avx512"):
                torch.ops.ttq.linear(torch.randn(1, 40), codes, scales, [4, 40], None)
        finally:
            del os.environ["TTQ_KERNEL"]

if __name__ == "__main__":
    unittest.main()
