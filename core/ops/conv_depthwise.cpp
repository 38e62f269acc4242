// Depthwise layers that read the layer before's bytes where they lie (MobileNetV2's 3x3 layers after
// their expansions): a pixel whose taps all fall inside the image reads the input itself, and only
// the pixels at its edges read a zero-padded image in the scratch, of which only what they reach is
// written (the rows near the top and bottom, a few columns at each side). Copying the whole image
// into a padded one first, as other layers' inputs are, took 40% of the kernel's own time on
// MobileNetV2's stride-2 layer at 112x112 and 15% at 56x56 (perf, batch 16).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#include "core/ops/conv_int8.h"
#include "core/ops/kernels.h"
#include "core/ops/ops_internal.h"

namespace ttq::ops {
namespace {

// The output pixels [lo, hi] of one side whose taps all fall inside the image's `size` pixels
// (empty where lo > hi).
struct Inside {
  int64_t lo, hi;
};
Inside inside(int64_t size, int64_t out, int64_t kernel, int64_t stride, int64_t pad, int64_t dilation) {
  const int64_t lo = (pad + stride - 1) / stride;
  const int64_t last = size - 1 - (kernel - 1) * dilation + pad;
  return {lo, last < 0 ? -1 : std::min(out - 1, last / stride)};
}

// Padded row pr of sample n, padded columns [c0, c1), into the scratch image: the input's bytes
// where the row and columns are the image's, 128 (an offset zero) in the padding.
void fill_padded(uint8_t* image, const uint8_t* x, const Int8Conv& g, int64_t height, int64_t width,
                 c10::IntArrayRef padding, int64_t pr, int64_t c0, int64_t c1) {
  uint8_t* dst = image + pr * g.padded_w * g.cin;
  const int64_t h = pr - padding[0];
  const int64_t w0 = std::clamp<int64_t>(c0 - padding[1], 0, width), w1 = std::clamp<int64_t>(c1 - padding[1], 0, width);
  if (h < 0 || h >= height || w0 >= w1) {
    std::memset(dst + c0 * g.cin, 128, static_cast<size_t>((c1 - c0) * g.cin));
    return;
  }
  std::memset(dst + c0 * g.cin, 128, static_cast<size_t>((w0 + padding[1] - c0) * g.cin));
  std::memcpy(dst + (w0 + padding[1]) * g.cin, x + (h * width + w0) * g.cin, static_cast<size_t>((w1 - w0) * g.cin));
  std::memset(dst + (w1 + padding[1]) * g.cin, 128, static_cast<size_t>((c1 - w1 - padding[1]) * g.cin));
}

// The zero-padded images (int8_conv's layout, in the scratch) of what the edge pixels reach: the
// padded rows above `top` and from `bottom` whole, and of the others the columns before `left` and
// from `right`.
struct Reach {
  int64_t top, bottom, left, right;
};
const uint8_t* padded_edges(const at::Tensor& input, const Int8Conv& g, c10::IntArrayRef padding, Reach reach) {
  const int64_t height = input.size(2), width = input.size(3), padded_h = height + 2 * padding[0];
  const uint8_t* x = input.data_ptr<uint8_t>();
  uint8_t* scratch = input_scratch(g.batch * g.image + 64);
  at::parallel_for(0, g.batch * padded_h, 16, [&](int64_t a, int64_t b) {
    for (int64_t np = a; np < b; ++np) {
      const int64_t n = np / padded_h, pr = np % padded_h;
      uint8_t* image = scratch + n * g.image;
      const uint8_t* sample = x + n * height * width * g.cin;
      if (pr < reach.top || pr >= reach.bottom) {
        fill_padded(image, sample, g, height, width, padding, pr, 0, g.padded_w);
        continue;
      }
      fill_padded(image, sample, g, height, width, padding, pr, 0, std::min(reach.left, g.padded_w));
      fill_padded(image, sample, g, height, width, padding, pr, std::max(reach.right, reach.left), g.padded_w);
    }
  });
  return scratch;
}

}  // namespace

bool depthwise_reads_bytes(const at::Tensor& x, const Int8Conv& g, int64_t rows, KernelPath path) {
  const auto xs = x.strides();
  const int64_t cin = x.size(1), height = x.size(2), width = x.size(3);
  // Threads split the pixels (int8_conv_output's rule for more pixels than channels), so that each
  // runs the kernel on its pixels' rows of the image, the weights made once for all channels.
  return x.scalar_type() == at::kByte && int8_offset(path) && xs[1] == 1 && xs[3] == cin &&
         xs[2] == width * cin && xs[0] == height * width * cin && g.batch * g.out_h * g.out_w > rows;
}

at::Tensor depthwise_from_bytes(const at::Tensor& input, const Int8Conv& g, const DepthwiseLayer& layer,
                                c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation,
                                const c10::optional<at::Tensor>& input_step, const float* affine, float output_step,
                                Int8Residual residual) {
  const int64_t height = input.size(2), width = input.size(3), rows = g.cin, kh = layer.kh, kw = layer.kw;
  const Inside in_h = inside(height, g.out_h, kh, stride[0], padding[0], dilation[0]);
  const Inside in_w = inside(width, g.out_w, kw, stride[1], padding[1], dilation[1]);
  // The padded rows and columns the edge pixels reach.
  const int64_t padded_h = height + 2 * padding[0], reach_h = (kh - 1) * dilation[0] + 1;
  const int64_t reach_w = (kw - 1) * dilation[1] + 1;
  const bool rows_inside = in_h.lo <= in_h.hi && in_w.lo <= in_w.hi;
  const Reach reach{rows_inside ? (in_h.lo > 0 ? (in_h.lo - 1) * stride[0] + reach_h : 0) : padded_h,
                    rows_inside && in_h.hi < g.out_h - 1 ? (in_h.hi + 1) * stride[0] : padded_h,
                    in_w.lo > 0 ? (in_w.lo - 1) * stride[1] + reach_w : 0,
                    in_w.hi < g.out_w - 1 ? (in_w.hi + 1) * stride[1] : g.padded_w};
  const uint8_t* scratch = padded_edges(input, g, padding, reach);
  const uint8_t* x = input.data_ptr<uint8_t>();
  const auto step_of = input_steps(input, {1, 2, 3}, g.batch, input_step, "conv2d_int8");
  const int64_t pixels = g.out_h * g.out_w, inputs = g.batch * pixels;
  // Each pixel's first tap in the padded scratch (pixel_rows) and, for the pixels inside, in the
  // input.
  const PixelRows pixel = pixel_rows(g, stride, step_of.data_ptr<float>());
  const std::unique_ptr<int64_t[]> input_row(new int64_t[inputs]);
  at::parallel_for(0, g.batch * g.out_h, 64, [&](int64_t a, int64_t b) {
    for (int64_t nh = a; nh < b; ++nh) {
      const int64_t n = nh / g.out_h, oh = nh % g.out_h;
      for (int64_t ow = 0, i = nh * g.out_w; ow < g.out_w; ++ow, ++i)
        input_row[i] = ((n * height + oh * stride[0] - padding[0]) * width + ow * stride[1] - padding[1]) * rows;
    }
  });
  std::vector<int64_t> input_tap(static_cast<size_t>(kh * kw));
  for (int64_t t = 0; t < kh * kw; ++t) input_tap[t] = (t / kw * dilation[0] * width + t % kw * dilation[1]) * rows;
  const Int8Inputs padded{scratch, pixel.row.get(), nullptr, pixel.step.get(), kh * kw};
  const Int8Inputs direct{x, input_row.get(), nullptr, pixel.step.get(), kh * kw};
  const auto out = int8_output(g, rows, output_step, true);
  const Int8Output o = stored_at(out, affine, rows, output_step, residual, 0, rows, 1);
  const KernelPath path = selected_path();
  auto run = [&](bool inside_image, int64_t i0, int64_t i1) {
    if (i0 < i1)
      depthwise_rows_int8(path, layer.weights, layer.w, inside_image ? input_tap.data() : layer.padded_tap, kh * kw,
                          inside_image ? direct : padded, i0, i1, 0, rows, o);
  };
  // A thread's pixels in runs of one kind: the edge pixels of one row and the next together.
  at::parallel_for(0, inputs, 48, [&](int64_t i0, int64_t i1) {
    int64_t start = i0;
    for (int64_t i = i0; i < i1;) {
      const int64_t row_start = i - i % g.out_w, oh = i / g.out_w % g.out_h, end = std::min(i1, row_start + g.out_w);
      if (oh < in_h.lo || oh > in_h.hi || in_w.lo > in_w.hi) {
        i = end;
        continue;
      }
      const int64_t a = std::max(i, row_start + in_w.lo), b = std::min(end, row_start + in_w.hi + 1);
      if (a < b) {
        run(false, start, a);
        run(true, a, b);
        start = b;
      }
      i = end;
    }
    run(false, start, i1);
  });
  return out;
}

}  // namespace ttq::ops
