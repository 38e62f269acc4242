"""The float operators of libttq_ops.so and its packing, loaded by PyTorch itself, against
torch.nn.functional on many shapes, on every kernel path this CPU runs (TTQ_KERNEL=portable|avx2|avx512).
The int8 operators are test_ops_int8's, packed models test_packed's.
"""
import os
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
        # (in, out, kernel, stride, padding, dilation, groups, batch, size)
        cases = [(3, 8, 3, 1, 1, 1, 1, 1, 9), (16, 16, 3, 2, 1, 1, 16, 2, 10), (8, 12, 1, 1, 0, 1, 1, 3, 7),
                 (6, 9, 5, 1, 2, 2, 3, 1, 13), (4, 5, (3, 1), (2, 1), (1, 0), 1, 1, 2, 8)]
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
