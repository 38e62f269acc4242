// The int8 convolutions of libttq_ops.so (conv_int8.h): each sample quantized into a zero-padded
// NHWC image, then every output pixel a row of the int8 kernels: a ternary layer on its packed
// planes (64-byte steps, or depthwise taps), or 8-bit rows four bytes at a time (dense: layers off
// those steps, grouped layers, and the float layers an int8 model keeps).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <vector>

#include "core/ops/conv_int8.h"
#include "core/ops/kernels.h"
#include "core/ops/ops_internal.h"
#include "core/ops/packed.h"

namespace ttq::ops {

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

// Values stored with `affine` (rows [scale; shift; floor; ceiling], or none), input i's row r at
// i · input_stride + r · row_stride of the output y or bytes the caller sets.
Int8Output affine_output(const float* affine, int64_t rows, int64_t input_stride, int64_t row_stride) {
  Int8Output o{nullptr, input_stride, row_stride};
  if (affine) o.scale = affine, o.shift = affine + rows, o.floor = affine + 2 * rows, o.ceiling = affine + 3 * rows;
  return o;
}

// The bytes a chained layer stores (output_step) are followed by this many more, so that a 1x1 layer
// after it can read them where they are (kernels may read 64 bytes past the last pixel's).
constexpr int64_t kByteSlack = 64;

at::Tensor byte_output(int64_t batch, int64_t rows, int64_t height, int64_t width, bool channels_last) {
  const int64_t count = batch * rows * height * width;
  const auto flat = at::empty({count + kByteSlack}, at::TensorOptions(at::kByte)).narrow(0, 0, count);
  if (!channels_last) return flat.view({batch, rows, height, width});
  return flat.view({batch, height, width, rows}).permute({0, 3, 1, 2});
}

namespace {

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


}  // namespace

// Made on the threads, left uninitialized until then (at batch 16, 200,000 pixels of a 112x112
// layer: a serial loop the other thread waited on).
PixelRows pixel_rows(const Int8Conv& g, c10::IntArrayRef stride, const float* sample_step) {
  const int64_t inputs = g.batch * g.out_h * g.out_w;
  PixelRows p{std::unique_ptr<int64_t[]>(new int64_t[inputs]), std::unique_ptr<float[]>(new float[inputs])};
  at::parallel_for(0, g.batch * g.out_h, 64, [&](int64_t a, int64_t b) {
    for (int64_t nh = a; nh < b; ++nh) {
      const int64_t n = nh / g.out_h, oh = nh % g.out_h;
      for (int64_t ow = 0, i = nh * g.out_w; ow < g.out_w; ++ow, ++i) {
        p.row[i] = n * g.image + (oh * stride[0] * g.padded_w + ow * stride[1]) * g.cin;
        p.step[i] = sample_step[n];
      }
    }
  });
  return p;
}

at::Tensor int8_output(const Int8Conv& g, int64_t rows, float output_step, bool channels_last) {
  if (output_step > 0) return byte_output(g.batch, rows, g.out_h, g.out_w, channels_last);
  const auto format = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  return at::empty({g.batch, rows, g.out_h, g.out_w}, at::TensorOptions(at::kFloat).memory_format(format));
}

Int8Output stored_at(const at::Tensor& out, const float* affine, int64_t rows, float output_step,
                     const Int8Residual& residual, int64_t at, int64_t input_stride, int64_t row_stride) {
  Int8Output o = affine_output(affine, rows, input_stride, row_stride);
  if (residual.floats) o.residual = residual.floats + at;
  if (residual.bytes) o.residual_bytes = residual.bytes + at, o.residual_step = residual.step;
  if (output_step > 0) o.bytes = out.data_ptr<uint8_t>() + at, o.byte_step = output_step;
  else o.y = out.data_ptr<float>() + at;
  return o;
}

namespace {

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
  const PixelRows pixel = pixel_rows(g, stride, sample_step);
  const Int8Inputs in{qd, pixel.row.get(), step, pixel.step.get(), k, four};
  const bool channels_last = input.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
  const auto format = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  if (!max_pool.empty())
    return pooled_int8_output(in, {g.batch, g.out_h, g.out_w}, rows, affine, max_pool, format, rows_int8, op,
                              output_step);
  const auto out = int8_output(g, rows, output_step, channels_last);
  // Input i = n · pixels + p; row r lands at i · rows + r (channels-last), or at out[n][r][p]:
  // n · rows · pixels + r · pixels + p, one sample at a time.
  auto run = [&](int64_t i0, int64_t i1, int64_t r0, int64_t r1) {
    auto output = [&](int64_t at, int64_t input_stride, int64_t row_stride) {
      return stored_at(out, affine, rows, output_step, residual, at, input_stride, row_stride);
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

// A ternary weight's bytes as the int8 kernels multiply them (int8_weights: w.pos, 0, w.neg, each
// row on w.step), as EightBitWeight gives them: [rows, cin · kh · kw] in (c, y, x) order, and the steps.
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

// Whether the ternary kernels take the layer on their 64-byte steps, each at one tap of a pixel's
// image: in-channels a multiple of 64, or a 1x1 kernel (then the step runs past a pixel's channels
// onto zero weights); a depthwise layer (a group per channel, one output channel each) runs its own
// kernel on taps.
bool on_int8_steps(const std::vector<int64_t>& shape, int64_t groups) {
  if (groups > 1) return shape[1] == 1 && shape[0] == groups;
  return shape[1] % 64 == 0 || shape[2] * shape[3] == 1;
}

// A grouped layer on the dense kernels: `groups` groups side by side make a block of `rows` rows,
// a multiple of 16 (the dense kernels' rows start at multiples of a register's 16 or 8), over the
// `span` in-channels of its groups, its weight zero off the groups' diagonal (ResNeXt's groups of 4
// channels: blocks of 4 groups, 16 rows over 16 channels, 4x the arithmetic of the groups alone, on
// kernels 4x as fast as float ones). One group: one block of every row and channel.
struct GroupBlocks {
  int64_t groups, rows, span;
};
GroupBlocks group_blocks(const std::vector<int64_t>& shape, int64_t groups) {
  const int64_t rows_a_group = shape[0] / groups;
  const int64_t together = std::min(groups, 16 / std::gcd<int64_t>(rows_a_group, 16));
  return {together, together * rows_a_group, together * shape[1]};
}

// The bytes q ([rows, cin/groups · taps], (c, y, x) order) of each group placed among its block's
// span of channels (group_blocks), zeros elsewhere: [rows, span · taps].
at::Tensor block_diagonal(const at::Tensor& q, const GroupBlocks& b, int64_t groups) {
  const int64_t rows = q.size(0), width = q.size(1), rows_a_group = rows / groups;
  auto placed = at::zeros({rows, b.groups * width}, at::kChar);
  const int8_t* from = q.data_ptr<int8_t>();
  int8_t* to = placed.data_ptr<int8_t>();
  for (int64_t r = 0; r < rows; ++r)
    std::memcpy(to + (r * b.groups + r / rows_a_group % b.groups) * width, from + r * width,
                static_cast<size_t>(width));
  return placed;
}

// A layer's weight on the dense kernels: its rows in their blocked layout, each row's step, and K
// (its segments' fours); and the tensors it was made of at their versions then, held so that no
// other layer's tensor takes their memory while it is kept.
struct DenseLayer {
  DenseInt8Rows rows;
  std::vector<float> step;
  int64_t k = 0;
  std::vector<at::Tensor> sources;
  std::vector<int64_t> versions;
};

// Weight (r, c, y, x) of q ([rows, span · kh · kw], on `steps`: a float layer's 8-bit rows, ternary_eight_bit's
// or block_diagonal's) is byte (y · kw + x) · span + c of row r's taps, which lie in segments of
// `segment` bytes (a kernel row, or a tap), each padded to whole fours.
DenseLayer make_dense_layer(const at::Tensor& q, const at::Tensor& steps, int64_t span, int64_t segment,
                            KernelPath path) {
  const int64_t rows = q.size(0), taps = q.size(1) / span, fours = (segment + 3) / 4;
  const int64_t k = span * taps / segment * 4 * fours;
  const int8_t* qd = q.data_ptr<int8_t>();
  std::vector<int8_t> bytes(static_cast<size_t>(rows * k), 0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < span; ++c)
      for (int64_t t = 0; t < taps; ++t) {
        const int64_t at = t * span + c;
        bytes[r * k + at / segment * 4 * fours + at % segment] = qd[(r * span + c) * taps + t];
      }
  const auto s = steps.contiguous();
  return {dense_int8_rows(path, bytes.data(), rows, k),
          std::vector<float>(s.data_ptr<float>(), s.data_ptr<float>() + rows), k, {}, {}};
}

// The dense layer made of `sources` (a ternary layer's codes and scales, or a float layer's weight
// and steps; `eight_bit` gives their bytes), made on the layer's first call and kept: made per call,
// ResNeXt-50's grouped layers spent 1 ms of a 1.2 ms call laying their bytes out. Made again where a
// source changed in place; all are dropped past kMaxDenseLayers layers or kMaxDenseBytes bytes.
constexpr size_t kMaxDenseLayers = 1024;
constexpr size_t kMaxDenseBytes = size_t{512} << 20;

std::shared_ptr<const DenseLayer> dense_layer(const std::vector<at::Tensor>& sources, const EightBitWeight& eight_bit,
                                              const GroupBlocks& block, int64_t groups, int64_t segment,
                                              KernelPath path) {
  static std::mutex mutex;
  static std::map<std::vector<int64_t>, std::shared_ptr<const DenseLayer>> layers;
  static size_t held_bytes = 0;
  std::vector<int64_t> key{static_cast<int64_t>(path), groups, block.span, segment};
  std::vector<int64_t> versions;
  for (const auto& s : sources) {
    key.push_back(reinterpret_cast<int64_t>(s.data_ptr()));
    key.insert(key.end(), s.sizes().begin(), s.sizes().end());
    versions.push_back(s._version());
  }
  const std::lock_guard<std::mutex> lock(mutex);
  if (const auto found = layers.find(key); found != layers.end()) {
    if (found->second->versions == versions) return found->second;
    held_bytes -= found->second->rows.blocked.size();  // made again below, of the changed sources
  }
  const auto [q, steps] = eight_bit();
  auto made = std::make_shared<DenseLayer>(
      make_dense_layer(groups > 1 ? block_diagonal(q, block, groups) : q, steps, block.span, segment, path));
  made->sources = sources;
  made->versions = versions;
  if (layers.size() >= kMaxDenseLayers || held_bytes > kMaxDenseBytes) layers.clear(), held_bytes = 0;
  held_bytes += made->rows.blocked.size();  // the callers running one still hold it
  return layers[key] = made;
}

}  // namespace

// Each kernel row's taps are one segment of the image (each tap where dilated), read four bytes at a
// time: a first layer of 3 channels is 7 segments of 21 weights and 3 zeros, not 64-byte steps. A
// grouped layer runs a block of groups at a time (group_blocks), its inputs from the block's first
// channel, each tap a segment of the block's channels.
at::Tensor conv2d_dense_int8(const at::Tensor& input, const std::vector<at::Tensor>& sources,
                             const EightBitWeight& eight_bit, c10::IntArrayRef shape, int64_t groups,
                             const c10::optional<at::Tensor>& bias, c10::IntArrayRef stride, c10::IntArrayRef padding,
                             c10::IntArrayRef dilation, Affine affine, const c10::optional<at::Tensor>& input_step,
                             c10::IntArrayRef max_pool, const char* op, float output_step, Int8Residual residual) {
  const int64_t rows = shape[0], kh = shape[2], kw = shape[3];
  const GroupBlocks block = group_blocks(shape.vec(), groups);
  const Int8Conv g = int8_conv(input, shape[1] * groups, kh, kw, stride, padding, dilation, op);
  // A kernel row's taps lie side by side in the image: its block's channels are the pixel's.
  const bool rows_whole = dilation[1] == 1 && block.span == g.cin;
  const int64_t segments = rows_whole ? kh : kh * kw, segment = rows_whole ? kw * block.span : block.span;
  const int64_t fours = (segment + 3) / 4;
  const KernelPath path = selected_path();
  const auto layer = dense_layer(sources, eight_bit, block, groups, segment, path);
  std::vector<int64_t> four(static_cast<size_t>(segments * fours));
  for (int64_t s = 0; s < segments; ++s) {
    const int64_t tap_h = rows_whole ? s : s / kw, tap_w = rows_whole ? 0 : s % kw;
    for (int64_t f = 0; f < fours; ++f)
      four[s * fours + f] = (tap_h * dilation[0] * g.padded_w + tap_w * dilation[1]) * g.cin + 4 * f;
  }
  if (affine.empty()) affine = identity_affine(rows);
  add_bias(affine, bias);
  for (int64_t r = 0; r < rows; ++r) affine[r] *= layer->step[r];
  return int8_conv_output(
      input, g, rows, stride, padding, input_step, nullptr, four.data(), layer->k, affine.data(), output_step,
      [&](const Int8Inputs& in, int64_t i0, int64_t i1, int64_t r0, int64_t r1, const Int8Output& o) {
        for (int64_t b = r0 / block.rows; b * block.rows < r1; ++b) {
          Int8Inputs inputs = in;
          inputs.data += b * block.span;
          dense_rows_int8(path, layer->rows, inputs, i0, i1, std::max(r0, b * block.rows),
                          std::min(r1, (b + 1) * block.rows), o);
        }
      },
      op, max_pool, residual);
}

// Every layer runs int8 but a grouped one whose last block of groups (group_blocks), were it short of
// groups, would read past the bytes after an image (one 64-byte step).
bool conv_runs_int8(const std::vector<int64_t>& shape, int64_t groups) {
  if (groups == 1 || on_int8_steps(shape, groups)) return true;
  const GroupBlocks block = group_blocks(shape, groups);
  const int64_t missing = (block.groups - groups % block.groups) % block.groups;
  return missing * shape[1] + 3 < 64;
}

// The codes are tap-major, [out, kh, kw, in] (packed_model.h), so that a tap's channels are
// contiguous in both: step s of a row, its weights 64 s to 64 s + 63, lies at one tap and channel of
// the pixel's image. Depthwise layers run their own kernel on the same images; layers off the steps
// run their ternary weight as bytes on the dense kernels.
at::Tensor ternary_conv2d_int8(const at::Tensor& input, const at::Tensor& codes, const at::Tensor& scales,
                               c10::IntArrayRef shape, const c10::optional<at::Tensor>& bias, c10::IntArrayRef stride,
                               c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                               const c10::optional<at::Tensor>& input_step, Affine affine, float output_step,
                               Int8Residual residual) {
  if (!on_int8_steps(shape.vec(), groups)) {
    const auto eight_bit = [&] { return ternary_eight_bit(codes, scales, shape); };
    return conv2d_dense_int8(input, {codes, scales}, eight_bit, shape, groups, bias, stride, padding, dilation, affine,
                             input_step, {}, "conv2d_int8", output_step, residual);
  }
  const int64_t rows = shape[0], cin = shape[1], kh = shape[2], kw = shape[3];
  const Int8Conv g = int8_conv(input, cin * groups, kh, kw, stride, padding, dilation, "conv2d_int8");
  // The bias in the affine's shift (an identity affine where there is none): the kernels store the
  // final values.
  if (affine.empty() && ((bias && bias->defined()) || residual.floats || residual.bytes))
    affine = identity_affine(rows);
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
  if (groups > 1 && depthwise_reads_bytes(input, g, rows, path)) {
    const std::vector<float> weights = depthwise_weights(planes, groups32, w, kh * kw, 0, rows);
    return depthwise_from_bytes(input, g, {weights.data(), w, step.data(), kh, kw}, stride, padding, dilation,
                                input_step, affine.empty() ? nullptr : affine.data(), output_step, residual);
  }
  return int8_conv_output(
      input, g, rows, stride, padding, input_step, step.data(), nullptr, cin * kh * kw,
      affine.empty() ? nullptr : affine.data(), output_step,
      [&](const Int8Inputs& in, int64_t i0, int64_t i1, int64_t r0, int64_t r1, const Int8Output& o) {
        if (groups > 1) return depthwise_rows_int8(path, planes, groups32, w, step.data(), kh * kw, in, i0, i1, r0, r1, o);
        ternary_rows_int8(path, planes, groups32, w, in, i0, i1, r0, r1, o);
      },
      "conv2d_int8", {}, residual);
}

}  // namespace ttq::ops
