// The convolution operators of libttq_ops.so: a ternary convolution on its decoded float weight
// (conv2d) or on int8 inputs (conv2d_int8), and a float convolution the packing keeps with a
// BatchNorm folded into it (conv2d_affine), on int8 inputs with 8-bit weights in an int8 model.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "core/ops/conv_affine.h"
#include "core/ops/kernels.h"
#include "core/ops/ops_internal.h"
#include "core/ops/packed.h"

namespace ttq::ops {
namespace {

// aten::conv2d with an affine folded in (checked_affine's): `w`, the call's own float weight, scaled
// per output channel and the shift put into the bias, then clamped.
at::Tensor conv2d_folded(const at::Tensor& input, at::Tensor& w, const c10::optional<at::Tensor>& bias,
                         c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                         Affine& affine) {
  const int64_t rows = w.size(0);
  const auto a = affine_tensor(affine);
  const auto scale = a[0], shift = a[1], floor = a[2], ceiling = a[3];
  w.mul_(scale.view({rows, 1, 1, 1}));
  const auto folded_bias = bias && bias->defined() ? *bias * scale + shift : shift;
  return clamped(at::conv2d(input, w, folded_bias, stride, padding, dilation, groups), floor, ceiling);
}

// The float path's convolution, for layers the int8 kernels do not take (depthwise, grouped); an
// affine (checked_affine's, or empty) goes into the weight the call decodes anyway.
at::Tensor conv2d_float(const at::Tensor& input, const at::Tensor& codes, const at::Tensor& scales,
                        c10::IntArrayRef shape, const c10::optional<at::Tensor>& bias, c10::IntArrayRef stride,
                        c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups, Affine& affine) {
  const int64_t rows = shape[0], cin = shape[1], kh = shape[2], kw = shape[3];
  // The weight in the input's memory format: aten::conv2d gives a channels-last output when either is.
  // Made with that format's strides (contiguous() keeps a depthwise [out, 1, kh, kw] permuted view's
  // channels-last strides, as its one in-channel makes them contiguous too).
  auto w = at::empty({rows, cin, kh, kw}, at::TensorOptions(at::kFloat).memory_format(input.suggest_memory_format()));
  w.copy_(decoded(codes, scales, cin * kh * kw, rows).view({rows, kh, kw, cin}).permute({0, 3, 1, 2}));
  if (affine.empty()) return at::conv2d(input, w, bias, stride, padding, dilation, groups);
  return conv2d_folded(input, w, bias, stride, padding, dilation, groups, affine);
}

// The bytes a chained layer stores (output_step) are followed by this many more, so that a 1x1 layer
// after it can read them where they are (kernels may read 64 bytes past the last pixel's).
constexpr int64_t kByteSlack = 64;

// Whether the kernels can read x's bytes where they lie: the layer before's output (uint8) in the
// order and signedness the kernels take (channels-last, whole, offset bytes), no padding to add, and
// kByteSlack bytes after it. Then the copy into the scratch is left out (MobileNetV2's projections
// read their depthwise layer's bytes so).
bool bytes_in_place(const at::Tensor& x, c10::IntArrayRef padding, KernelPath path) {
  const auto xs = x.strides();
  const int64_t cin = x.size(1), height = x.size(2), width = x.size(3);
  return x.scalar_type() == at::kByte && padding[0] == 0 && padding[1] == 0 && int8_offset(path) && xs[1] == 1 &&
         xs[3] == cin && xs[2] == width * cin && xs[0] == height * width * cin &&
         static_cast<int64_t>(x.storage().nbytes()) >= x.storage_offset() + x.numel() + kByteSlack;
}

// Each sample of x ([batch, cin, height, width], any strides) quantized with its step into a
// zero-padded NHWC image of `image` bytes in this thread's input scratch, and 64 bytes more that a
// last 1x1 step may read; zero is 128 where the kernels take offset bytes. A uint8 x is the layer
// before's output on this layer's step (q + 128): its bytes are copied, made signed where the
// kernels take no offset, or read where they are (bytes_in_place).
const uint8_t* quantized_images(const at::Tensor& x, c10::IntArrayRef padding, const float* sample_step, KernelPath path,
                                int64_t image) {
  if (bytes_in_place(x, padding, path)) return x.data_ptr<uint8_t>();
  const int64_t batch = x.size(0), cin = x.size(1), height = x.size(2), width = x.size(3);
  const int64_t row_bytes = (width + 2 * padding[1]) * cin, side = padding[1] * cin;
  uint8_t* qd = input_scratch(batch * image + 64);
  const bool offset = int8_offset(path);
  const int zero = offset ? 128 : 0;
  // Only the padding is zeroed: each sample's rows above and below, each row's sides (below), and
  // the 64 bytes past the last.
  at::parallel_for(0, batch, 1, [&](int64_t a, int64_t b) {
    for (int64_t n = a; n < b; ++n) {
      std::memset(qd + n * image, zero, static_cast<size_t>(padding[0] * row_bytes));
      std::memset(qd + n * image + (padding[0] + height) * row_bytes, zero, static_cast<size_t>(padding[0] * row_bytes));
    }
  });
  std::memset(qd + batch * image, zero, 64);
  const bool bytes = x.scalar_type() == at::kByte;
  const float* xd = bytes ? nullptr : x.data_ptr<float>();
  const uint8_t* xb = bytes ? x.data_ptr<uint8_t>() : nullptr;
  const uint8_t flip = offset ? 0 : 0x80;  // q + 128 -> q where the kernels take signed bytes
  const auto xs = x.strides();
  // A channels-last image row is width · cin values in a row, as its place in the padded image.
  const bool rows_whole = xs[1] == 1 && xs[3] == cin;
  at::parallel_for(0, batch * height, 1, [&](int64_t a, int64_t b) {
    for (int64_t nh = a; nh < b; ++nh) {
      const int64_t n = nh / height, h = nh % height;
      uint8_t* dst = qd + n * image + (h + padding[0]) * row_bytes + side;
      std::memset(dst - side, zero, static_cast<size_t>(side));
      std::memset(dst + width * cin, zero, static_cast<size_t>(side));
      if (bytes) {
        const uint8_t* src = xb + n * xs[0] + h * xs[2];
        // Locals: a byte store could alias the captured ones, which the loop would then reload.
        const int64_t count = width * cin;
        const uint8_t mask = flip;
        if (rows_whole)
          for (int64_t j = 0; j < count; ++j) dst[j] = src[j] ^ mask;
        else
          for (int64_t w = 0; w < width; ++w)
            for (int64_t c = 0; c < cin; ++c) dst[w * cin + c] = src[w * xs[3] + c * xs[1]] ^ mask;
        continue;
      }
      const float* src = xd + n * xs[0] + h * xs[2];
      if (rows_whole) {
        quantize_int8(path, src, width * cin, 1, sample_step[n], offset, dst);
        continue;
      }
      for (int64_t w = 0; w < width; ++w)
        quantize_int8(path, src + w * xs[3], cin, xs[1], sample_step[n], offset, dst + w * cin);
    }
  });
  return qd;
}

// An int8 convolution's geometry: each sample a zero-padded NHWC image of `image` bytes, each
// output pixel a row of the int8 kernels.
struct Int8Conv {
  int64_t batch, cin, padded_w, out_h, out_w, image;
};

Int8Conv int8_conv(const at::Tensor& input, int64_t cin, int64_t kh, int64_t kw, c10::IntArrayRef stride,
                   c10::IntArrayRef padding, c10::IntArrayRef dilation, const char* op) {
  TORCH_CHECK(input.dim() == 4 && input.size(1) == cin, "ttq::", op, ": the input must be [batch, ", cin,
              ", height, width] (got ", input.sizes(), ")");
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2, "ttq::", op,
              ": stride, padding and dilation must have two values each");
  const int64_t padded_h = input.size(2) + 2 * padding[0], padded_w = input.size(3) + 2 * padding[1];
  const int64_t out_h = (padded_h - dilation[0] * (kh - 1) - 1) / stride[0] + 1;
  const int64_t out_w = (padded_w - dilation[1] * (kw - 1) - 1) / stride[1] + 1;
  TORCH_CHECK(out_h > 0 && out_w > 0, "ttq::", op, ": the input (", input.sizes(), ") is smaller than the kernel");
  return {input.size(0), cin, padded_w, out_h, out_w, padded_h * padded_w * cin};
}

// A chained layer's output bytes [batch, rows, out_h, out_w], channels-last or not, kByteSlack more
// bytes after them (bytes_in_place).
at::Tensor byte_output(const Int8Conv& g, int64_t rows, bool channels_last) {
  const int64_t count = g.batch * rows * g.out_h * g.out_w;
  const auto flat = at::empty({count + kByteSlack}, at::TensorOptions(at::kByte)).narrow(0, 0, count);
  if (!channels_last) return flat.view({g.batch, rows, g.out_h, g.out_w});
  return flat.view({g.batch, g.out_h, g.out_w, rows}).permute({0, 3, 1, 2});
}

// A residual the stores add (Int8Output's): floats, or bytes with their step.
struct Int8Residual {
  const float* floats = nullptr;
  const uint8_t* bytes = nullptr;
  float step = 0;
};

// The floats uint8 residual bytes (q + 128 on `step`) stand for: q · step, as the stores compute them.
at::Tensor floats_of(const at::Tensor& bytes, float step) { return bytes.to(at::kFloat).sub_(128).mul_(step); }

// The int8 convolution of `input` (g) into `rows` output channels: each sample quantized with one
// scale (max |x| / 127, or the calibrated input_step) into a zero-padded NHWC image, then every
// output pixel is a row of the int8 kernels, `rows_int8(in, i0, i1, r0, r1, out)` (ternary_rows_int8
// or dense_rows_int8 with their weights), whose steps (`step`, or `four`) walk the taps from the
// pixel's first (implicit GEMM: no im2col copy). The output is channels-last when the input is, as
// aten::conv2d's: then a pixel's channels are written together, and the pooling and normalization
// after it run their channels-last kernels. With a max_pool, its pooling (pooled_int8_output); a
// residual (float32, the output's sizes and layout) is added as each value is stored.
template <class RowsInt8>
at::Tensor int8_conv_output(const at::Tensor& input, const Int8Conv& g, int64_t rows, c10::IntArrayRef stride,
                            c10::IntArrayRef padding, const c10::optional<at::Tensor>& input_step,
                            const int64_t* step, const int64_t* four, int64_t k, const float* affine,
                            float output_step, RowsInt8 rows_int8, const char* op, c10::IntArrayRef max_pool = {},
                            Int8Residual residual = {}) {
  const auto step_of = input_steps(input, {1, 2, 3}, g.batch, input_step, op);
  const float* sample_step = step_of.data_ptr<float>();
  const uint8_t* qd = quantized_images(input, padding, sample_step, selected_path(), g.image);
  const int64_t pixels = g.out_h * g.out_w, inputs = g.batch * pixels;
  std::vector<int64_t> row(inputs);
  std::vector<float> row_step(inputs);
  for (int64_t n = 0, i = 0; n < g.batch; ++n)
    for (int64_t oh = 0; oh < g.out_h; ++oh)
      for (int64_t ow = 0; ow < g.out_w; ++ow, ++i) {
        row[i] = n * g.image + (oh * stride[0] * g.padded_w + ow * stride[1]) * g.cin;
        row_step[i] = sample_step[n];
      }
  const Int8Inputs in{qd, row.data(), step, row_step.data(), k, four};
  const bool channels_last = input.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
  const auto format = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  if (!max_pool.empty())
    return pooled_int8_output(in, {g.batch, g.out_h, g.out_w}, rows, affine, max_pool, format, rows_int8, op);
  const bool bytes = output_step > 0;
  auto out = bytes ? byte_output(g, rows, channels_last)
                   : at::empty({g.batch, rows, g.out_h, g.out_w}, at::TensorOptions(at::kFloat).memory_format(format));
  // Input i = n · pixels + p; row r lands at i · rows + r (channels-last), or at out[n][r][p]:
  // n · rows · pixels + r · pixels + p, one sample at a time.
  auto run = [&](int64_t i0, int64_t i1, int64_t r0, int64_t r1) {
    auto output = [&](int64_t at, int64_t input_stride, int64_t row_stride) {
      Int8Output o = affine_output(affine, rows, input_stride, row_stride);
      if (residual.floats) o.residual = residual.floats + at;
      if (residual.bytes) o.residual_bytes = residual.bytes + at, o.residual_step = residual.step;
      if (bytes) o.bytes = out.data_ptr<uint8_t>() + at, o.byte_step = output_step;
      else o.y = out.data_ptr<float>() + at;
      return o;
    };
    if (channels_last) return rows_int8(in, i0, i1, r0, r1, output(0, rows, 1));
    for (int64_t n = i0 / pixels; n * pixels < i1; ++n)
      rows_int8(in, std::max(i0, n * pixels), std::min(i1, (n + 1) * pixels), r0, r1,
                output(n * rows * pixels - n * pixels, 1, pixels));
  };
  // Threads split the larger side: the pixels where they outnumber the output channels (MobileNetV2's
  // layers of 16 to 32 channels at 112x112; each thread then decodes every row), else the channels,
  // 16 at a time (a multiple of the blocked kernels' rows a register).
  if (inputs > rows)
    at::parallel_for(0, inputs, 48, [&](int64_t i0, int64_t i1) { run(i0, i1, 0, rows); });
  else
    at::parallel_for(0, (rows + 15) / 16, 1, [&](int64_t b0, int64_t b1) {
      run(0, inputs, 16 * b0, std::min(16 * b1, rows));
    });
  return out;
}

// A weight [rows, cin, kh, kw] in 8 bits a row (`q`, [rows, cin · kh · kw], on `steps`, [rows]:
// eight_bit_rows): weight (r, c, y, x) is byte (y · kw + x) · cin + c of row r's taps, which lie in
// segments of `segment` bytes (a kernel row, or a tap), each padded to `fours` fours.
struct DenseWeight {
  std::vector<int8_t> bytes;  // [rows, k]
  std::vector<float> step;    // [rows]
  int64_t k;
};
DenseWeight dense_weight(const at::Tensor& q, const at::Tensor& steps, int64_t cin, int64_t segment, int64_t fours) {
  const int64_t rows = q.size(0), taps = q.size(1) / cin;
  const int64_t k = cin * taps / segment * 4 * fours;
  const int8_t* qd = q.data_ptr<int8_t>();
  DenseWeight d{std::vector<int8_t>(static_cast<size_t>(rows * k), 0),
                std::vector<float>(steps.data_ptr<float>(), steps.data_ptr<float>() + rows), k};
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cin; ++c)
      for (int64_t t = 0; t < taps; ++t) {
        const int64_t at = t * cin + c;
        d.bytes[r * k + at / segment * 4 * fours + at % segment] = qd[(r * cin + c) * taps + t];
      }
  return d;
}

// A convolution weight in 8 bits a row, [rows, cin · kh · kw] and its steps [rows]: a float32 weight
// rounded for the call (eight_bit_rows), or an int8 one as stored (with its weight_step).
std::pair<at::Tensor, at::Tensor> eight_bit_weight(const at::Tensor& weight,
                                                   const c10::optional<at::Tensor>& weight_step) {
  if (weight.scalar_type() == at::kFloat) return eight_bit_rows(weight);
  return {weight.reshape({weight.size(0), -1}).contiguous(), weight_step->contiguous()};
}

// A ternary weight's bytes as the int8 kernels multiply them (int8_weights: w.pos, 0, w.neg, each
// row on w.step), in eight_bit_weight's form: [rows, cin · kh · kw] in (c, y, x) order, and the steps.
// The codes are tap-major, [rows, kh, kw, cin].
std::pair<at::Tensor, at::Tensor> ternary_eight_bit(const at::Tensor& codes, const at::Tensor& scales,
                                                    c10::IntArrayRef shape) {
  const int64_t rows = shape[0], cin = shape[1], kh = shape[2], kw = shape[3], k = cin * kh * kw;
  const Int8Weights w = int8_weights(scale(scales, 0), scale(scales, 1));
  auto values = at::empty({rows, kh, kw, cin}, at::kFloat);
  ternary_decode(selected_path(), reinterpret_cast<const uint32_t*>(codes.data_ptr<uint8_t>()), packed_groups(k), k,
                 static_cast<float>(w.pos), -static_cast<float>(w.neg), 0, rows, values.data_ptr<float>());
  return {values.permute({0, 3, 1, 2}).to(at::kChar).reshape({rows, k}), at::full({rows}, w.step, at::kFloat)};
}

// An int8 convolution with 8-bit weights (`q`, [rows, cin · kh · kw] on `steps`: eight_bit_weight's
// or ternary_eight_bit's), its steps joining the affine's scale (checked_affine's, or an identity).
// Each kernel row's taps are one segment of the image (each tap where dilated), read four bytes at a
// time: a first layer of 3 channels is 7 segments of 21 weights and 3 zeros, not 64-byte steps.
// output_step and residual as int8_conv_output takes them.
at::Tensor conv2d_dense_int8(const at::Tensor& input, const at::Tensor& q, const at::Tensor& steps,
                             c10::IntArrayRef shape, const c10::optional<at::Tensor>& bias, c10::IntArrayRef stride,
                             c10::IntArrayRef padding, c10::IntArrayRef dilation, Affine affine,
                             const c10::optional<at::Tensor>& input_step, c10::IntArrayRef max_pool, const char* op,
                             float output_step = 0, Int8Residual residual = {}) {
  const int64_t rows = shape[0], cin = shape[1], kh = shape[2], kw = shape[3];
  const Int8Conv g = int8_conv(input, cin, kh, kw, stride, padding, dilation, op);
  const bool rows_whole = dilation[1] == 1;  // a kernel row's taps lie side by side in the image
  const int64_t segments = rows_whole ? kh : kh * kw, segment = rows_whole ? kw * cin : cin;
  const int64_t fours = (segment + 3) / 4;
  const DenseWeight w = dense_weight(q, steps, cin, segment, fours);
  const KernelPath path = selected_path();
  const DenseInt8Rows dense = dense_int8_rows(path, w.bytes.data(), rows, w.k);
  std::vector<int64_t> four(static_cast<size_t>(segments * fours));
  for (int64_t s = 0; s < segments; ++s) {
    const int64_t tap_h = rows_whole ? s : s / kw, tap_w = rows_whole ? 0 : s % kw;
    for (int64_t f = 0; f < fours; ++f)
      four[s * fours + f] = (tap_h * dilation[0] * g.padded_w + tap_w * dilation[1]) * cin + 4 * f;
  }
  if (affine.empty()) affine = identity_affine(rows);
  add_bias(affine, bias);
  for (int64_t r = 0; r < rows; ++r) affine[r] *= w.step[r];
  return int8_conv_output(
      input, g, rows, stride, padding, input_step, nullptr, four.data(), w.k, affine.data(), output_step,
      [&](const Int8Inputs& in, int64_t i0, int64_t i1, int64_t r0, int64_t r1, const Int8Output& o) {
        dense_rows_int8(path, dense, in, i0, i1, r0, r1, o);
      },
      op, max_pool, residual);
}

}  // namespace

// Values stored with `affine` (rows [scale; shift; floor; ceiling], or none), input i's row r at
// i · input_stride + r · row_stride of the output y or bytes the caller sets.
Int8Output affine_output(const float* affine, int64_t rows, int64_t input_stride, int64_t row_stride) {
  Int8Output o{nullptr, input_stride, row_stride};
  if (affine) o.scale = affine, o.shift = affine + rows, o.floor = affine + 2 * rows, o.ceiling = affine + 3 * rows;
  return o;
}

namespace {

// Whether the ternary kernels take the layer on their 64-byte steps, each at one tap of a pixel's
// image: in-channels a multiple of 64, or a 1x1 kernel (then the step runs past a pixel's channels
// onto zero weights); a depthwise layer (a group per channel, one output channel each) runs its own
// kernel on taps.
bool on_int8_steps(const std::vector<int64_t>& shape, int64_t groups) {
  if (groups > 1) return shape[1] == 1 && shape[0] == groups;
  return shape[1] % 64 == 0 || shape[2] * shape[3] == 1;
}

}  // namespace

// Every layer of one group runs int8: off the 64-byte steps (in-channels 3, 16, 32, 96...) its
// ternary weight as bytes on the dense kernels, four bytes at a time; and depthwise layers.
// Other grouped layers run the float path.
bool conv_runs_int8(const std::vector<int64_t>& shape, int64_t groups) {
  return groups == 1 || on_int8_steps(shape, groups);
}

// The weight is decoded for the call into the scratch (one layer): a convolution's cost is its
// arithmetic, which oneDNN's kernels do best. One group: decoded into the layout oneDNN's kernel
// reads, which then runs without reordering it (conv_onednn.cpp); else, or without oneDNN, a plain
// weight for aten::conv2d (decoding it in a channels-last input's order instead was measured
// 1.00-1.07x faster on LibTorch 1.13 and 0.8x on 2.6, ResNet-18 at batch 1).
at::Tensor conv2d(const at::Tensor& input, const at::Tensor& codes, const at::Tensor& scales, c10::IntArrayRef shape,
                  const c10::optional<at::Tensor>& bias, c10::IntArrayRef stride, c10::IntArrayRef padding,
                  c10::IntArrayRef dilation, int64_t groups) {
  TORCH_CHECK(shape.size() == 4, "ttq::conv2d: the weight shape must be [out, in/groups, kh, kw]");
  check_packed(codes, scales, to_vector(shape));
  check_input(input, "conv2d");
  at::NoGradGuard no_grad;
  if (groups == 1) {
    auto y = conv2d_onednn(input, codes, scales, shape, bias, stride, padding, dilation);
    if (y.defined()) return y;
  }
  const int64_t rows = shape[0], k = shape[1] * shape[2] * shape[3];
  const auto w = decoded(codes, scales, k, rows).view(shape);
  return at::conv2d(input, w, bias, stride, padding, dilation, groups);
}

// conv2d on int8 inputs (int8_conv_output), the ternary rows on their packed planes. The codes are
// tap-major, [out, kh, kw, in] (packed_model.h), so that a tap's channels are contiguous in both:
// step s of a row, its weights 64 s to 64 s + 63, lies at one tap and channel of the pixel's image.
// out_affine and clamp (checked_affine), the bias and a residual (a fused `y + residual`, before the affine's
// floor and ceiling: a ResNet block's add and ReLU; float32, or the bytes a layer before stored, on
// residual_step) are applied as each value is stored, and with an output_step the value is stored as
// the next layer's int8 input. Depthwise layers run their own kernel on the same images; other layers
// (groups, odd channel counts) run the float path.
at::Tensor conv2d_int8(const at::Tensor& input, const at::Tensor& codes, const at::Tensor& scales,
                       c10::IntArrayRef shape, const c10::optional<at::Tensor>& bias, c10::IntArrayRef stride,
                       c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                       const c10::optional<at::Tensor>& input_step, const c10::optional<at::Tensor>& out_affine,
                       const c10::optional<at::Tensor>& output_step, const c10::optional<at::Tensor>& residual,
                       const c10::optional<at::Tensor>& residual_step, const c10::optional<at::Tensor>& clamp) {
  TORCH_CHECK(shape.size() == 4, "ttq::conv2d_int8: the weight shape must be [out, in/groups, kh, kw]");
  const int64_t rows = shape[0], cin = shape[1], kh = shape[2], kw = shape[3];
  check_packed(codes, scales, {rows, kh, kw, cin});
  check_input(input, "conv2d_int8", true);
  at::NoGradGuard no_grad;
  const float next_step =
      output_step && output_step->defined() ? *step_value(*output_step, "output_step", "conv2d_int8") : 0;
  const bool added = residual && residual->defined();
  const bool byte_residual = added && residual->scalar_type() == at::kByte;
  TORCH_CHECK(!added || ((byte_residual || residual->scalar_type() == at::kFloat) && residual->is_cpu()),
              "ttq::conv2d_int8: the residual must be a float32 CPU tensor, or uint8 with its residual_step");
  const float byte_step = byte_residual && residual_step && residual_step->defined()
                              ? *step_value(*residual_step, "residual_step", "conv2d_int8") : 0;
  TORCH_CHECK(!byte_residual || byte_step > 0, "ttq::conv2d_int8: a uint8 residual (the int8 output of a layer "
              "before) needs its residual_step");
  Affine affine = checked_affine(out_affine, clamp, rows, "conv2d_int8");  // or empty
  const bool runs_int8 = conv_runs_int8(shape.vec(), groups);
  const Int8Conv g = int8_conv(input, cin * groups, kh, kw, stride, padding, dilation, "conv2d_int8");
  if (added && (!runs_int8 || residual->sizes() != at::IntArrayRef({g.batch, rows, g.out_h, g.out_w}))) {
    // A residual the stores do not take (the float path; one that broadcasts, as aten::add allows):
    // the convolution without its floor and ceiling, then the add and the clamp, as the graph had them.
    TORCH_CHECK(next_step == 0, "ttq::conv2d_int8: a residual of sizes ", residual->sizes(), " and an output_step");
    Affine no_clamp = affine.empty() ? identity_affine(rows) : affine;
    std::fill(no_clamp.begin() + 2 * rows, no_clamp.begin() + 3 * rows, -INFINITY);
    std::fill(no_clamp.begin() + 3 * rows, no_clamp.end(), INFINITY);
    const auto out = conv2d_int8(input, codes, scales, shape, bias, stride, padding, dilation, groups, input_step,
                                 affine_tensor(no_clamp), c10::nullopt, c10::nullopt, c10::nullopt, c10::nullopt);
    const auto sum = at::add(out, byte_residual ? floats_of(*residual, byte_step) : *residual);
    if (affine.empty()) return sum;
    const auto a = affine_tensor(affine);
    return clamped(sum, a[2], a[3]);
  }
  if (!runs_int8) {
    TORCH_CHECK(input.scalar_type() == at::kFloat && next_step == 0, "ttq::conv2d_int8: a layer of ", groups,
                " groups and ", cin, " in-channels a group runs in float: no uint8 input or output_step");
    return conv2d_float(input, codes, scales, shape, bias, stride, padding, dilation, groups, affine);
  }
  // The residual in the output's layout (int8_conv_output's: the input's).
  const auto laid_out = added ? residual->contiguous(input.suggest_memory_format()) : at::Tensor();
  Int8Residual added_residual;
  if (byte_residual) added_residual = {nullptr, laid_out.data_ptr<uint8_t>(), byte_step};
  else if (added) added_residual.floats = laid_out.data_ptr<float>();
  if (!on_int8_steps(shape.vec(), groups)) {
    const auto [q, steps] = ternary_eight_bit(codes, scales, shape);
    return conv2d_dense_int8(input, q, steps, shape, bias, stride, padding, dilation, affine, input_step, {},
                             "conv2d_int8", next_step, added_residual);
  }
  // The bias in the affine's shift (an identity affine where there is none): the kernels store the
  // final values.
  if (affine.empty() && ((bias && bias->defined()) || added)) affine = identity_affine(rows);
  if (!affine.empty()) add_bias(affine, bias);
  const int64_t groups32 = packed_groups(cin * kh * kw);
  // Where a step (64 weights of a row), or a depthwise layer's tap, starts in a pixel's image.
  std::vector<int64_t> step(groups > 1 ? kh * kw : (groups32 + 1) / 2);
  for (size_t s = 0; s < step.size(); ++s) {
    const int64_t at = groups > 1 ? static_cast<int64_t>(s) : 64 * static_cast<int64_t>(s);
    const int64_t tap = at / cin, channel = at % cin;
    step[s] = (tap / kw * dilation[0] * g.padded_w + tap % kw * dilation[1]) * g.cin + channel;
  }
  const auto* planes = reinterpret_cast<const uint32_t*>(codes.data_ptr<uint8_t>());
  const Int8Weights w = int8_weights(scale(scales, 0), scale(scales, 1));
  const KernelPath path = selected_path();
  return int8_conv_output(
      input, g, rows, stride, padding, input_step, step.data(), nullptr, cin * kh * kw,
      affine.empty() ? nullptr : affine.data(), next_step,
      [&](const Int8Inputs& in, int64_t i0, int64_t i1, int64_t r0, int64_t r1, const Int8Output& o) {
        if (groups > 1) return depthwise_rows_int8(path, planes, groups32, w, step.data(), kh * kw, in, i0, i1, r0, r1, o);
        ternary_rows_int8(path, planes, groups32, w, in, i0, i1, r0, r1, o);
      },
      "conv2d_int8", {}, added_residual);
}

// A float convolution (one the packing keeps float, as ResNet's first) with the BatchNorm and ReLU
// after it folded in (fold_batch_norms, checked_affine): its weight is copied for the call and
// scaled. With an input_step (a model with int8 activations) it runs on int8 inputs with 8-bit
// weights where it has one group (conv2d_dense_int8): the weight rounded for the call, or stored in
// 8 bits (int8, with its weight_step: export's). With max_pool ([kernel, stride, padding]: the
// max-pool that alone takes its output, ResNet's) it returns that pooling of its output, which the
// int8 path pools band by band as it computes it (pooled_int8_output).
at::Tensor conv2d_affine(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                         c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                         const at::Tensor& out_affine, const c10::optional<at::Tensor>& input_step,
                         c10::IntArrayRef max_pool, const c10::optional<at::Tensor>& clamp,
                         const c10::optional<at::Tensor>& weight_step) {
  check_input(input, "conv2d_affine");
  const bool eight_bit = weight.scalar_type() == at::kChar;
  TORCH_CHECK(weight.dim() == 4 && (weight.scalar_type() == at::kFloat || eight_bit) && weight.is_cpu(),
              "ttq::conv2d_affine: the weight must be a float32 or int8 CPU tensor [out, in/groups, kh, kw] (got ",
              weight.sizes(), " ", weight.scalar_type(), ")");
  const int64_t rows = weight.size(0);
  TORCH_CHECK(!eight_bit || (weight_step && weight_step->defined() && weight_step->scalar_type() == at::kFloat &&
                             weight_step->dim() == 1 && weight_step->size(0) == rows),
              "ttq::conv2d_affine: an int8 weight needs its weight_step, a float32 tensor [", rows, "]");
  TORCH_CHECK(max_pool.empty() || max_pool.size() == 3,
              "ttq::conv2d_affine: max_pool must be [kernel, stride, padding] or empty (got ", max_pool, ")");
  at::NoGradGuard no_grad;
  Affine affine = checked_affine(out_affine, clamp, rows, "conv2d_affine");
  if (input_step && input_step->defined() && groups == 1) {
    const auto [q, steps] = eight_bit_weight(weight, weight_step);
    return conv2d_dense_int8(input, q, steps, weight.sizes(), bias, stride, padding, dilation, affine, input_step,
                             max_pool, "conv2d_affine");
  }
  auto w = at::empty(weight.sizes(), at::TensorOptions(at::kFloat).memory_format(input.suggest_memory_format()));
  if (eight_bit) w.copy_(weight.to(at::kFloat) * weight_step->view({rows, 1, 1, 1}));
  else w.copy_(weight);
  const auto out = conv2d_folded(input, w, bias, stride, padding, dilation, groups, affine);
  if (max_pool.empty()) return out;
  return at::max_pool2d(out, {max_pool[0], max_pool[0]}, {max_pool[1], max_pool[1]}, {max_pool[2], max_pool[2]})
      .contiguous(out.suggest_memory_format());
}

}  // namespace ttq::ops
