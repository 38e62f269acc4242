// The TorchScript operators of libttq_ops.so (namespace ttq): ternary layers that keep their weights
// packed (packed.h) between calls. PyTorch: torch.ops.load_library("libttq_ops.so"), then
// torch.ops.ttq.linear(...) or a packed model from `ttq export --format packed`.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "core/ops/kernels.h"
#include "core/ops/packed.h"

namespace ttq::ops {
namespace {

// Up to this many input rows a call runs the bit-plane kernels (no weight is decoded, the work
// follows the packed bits); beyond, the layer is decoded into a scratch of one layer and
// multiplied by BLAS, whose blocking then wins.
constexpr int64_t kKernelRows = 8;

std::vector<int64_t> to_vector(c10::IntArrayRef a) { return a.vec(); }

void check_input(const at::Tensor& input, const char* op) {
  TORCH_CHECK(input.device().is_cpu() && input.scalar_type() == at::kFloat, "ttq::", op,
              ": the input must be a float32 CPU tensor (got ", input.scalar_type(), " on ", input.device(), ")");
}

float scale(const at::Tensor& scales, int i) { return scales.data_ptr<float>()[i]; }

// This thread's scratch for decoded weights, at least `numel` floats: one buffer the size of the
// largest it has held, reused by every call (fresh allocations of that size would cost page faults
// on every call). Valid until the thread's next use.
at::Tensor scratch(int64_t numel) {
  thread_local at::Tensor buffer;
  if (!buffer.defined() || buffer.numel() < numel) buffer = at::empty({numel}, at::kFloat);
  return buffer.narrow(0, 0, numel);
}

// This thread's scratch for an int8 operator's quantized inputs, at least `bytes` long: as
// `scratch`, one buffer reused by every call. Valid until the thread's next int8 call.
uint8_t* input_scratch(int64_t bytes) {
  thread_local std::vector<uint8_t> buffer;
  if (buffer.size() < static_cast<size_t>(bytes)) buffer.resize(static_cast<size_t>(bytes));
  return buffer.data();
}

// The [rows, k] weight as float32 in this thread's scratch, decoded by all threads.
at::Tensor decoded(const at::Tensor& codes, const at::Tensor& scales, int64_t k, int64_t rows) {
  auto w = scratch(rows * k).view({rows, k});
  float* dst = w.data_ptr<float>();
  at::parallel_for(0, rows, std::max<int64_t>(1, 65536 / std::max<int64_t>(k, 1)), [&](int64_t a, int64_t b) {
    decode_rows(codes, k, scale(scales, 0), scale(scales, 1), a, b, dst + a * k);
  });
  return w;
}

// Rows r0 <= r < r0 + count as float32 in this thread's scratch, decoded by this thread.
at::Tensor decoded_block(const at::Tensor& codes, const at::Tensor& scales, int64_t k, int64_t r0, int64_t count) {
  auto w = scratch(count * k).view({count, k});
  decode_rows(codes, k, scale(scales, 0), scale(scales, 1), r0, r0 + count, w.data_ptr<float>());
  return w;
}

// The checks of a linear op: its input as [n, k] rows (a view where it can be).
at::Tensor linear_rows(const at::Tensor& input, const at::Tensor& codes, const at::Tensor& scales,
                       c10::IntArrayRef shape, const char* op) {
  TORCH_CHECK(shape.size() == 2, "ttq::", op, ": the weight shape must be [out, in]");
  check_packed(codes, scales, to_vector(shape));
  check_input(input, op);
  TORCH_CHECK(input.dim() >= 1 && input.size(-1) == shape[1], "ttq::", op, ": the input has ", input.size(-1),
              " features; the weight takes ", shape[1]);
  return input.reshape({-1, shape[1]});
}

// out [n, rows] plus the bias, in the input's shape with its last dimension `rows`.
at::Tensor linear_output(at::Tensor out, const c10::optional<at::Tensor>& bias, const at::Tensor& input) {
  if (bias && bias->defined()) out.add_(*bias);
  auto sizes = input.sizes().vec();
  sizes.back() = out.size(1);
  return out.view(sizes);
}

at::Tensor linear(const at::Tensor& input, const at::Tensor& codes, const at::Tensor& scales, c10::IntArrayRef shape,
                  const c10::optional<at::Tensor>& bias) {
  const auto x = linear_rows(input, codes, scales, shape, "linear").contiguous();
  // Inference operators: no gradient flows through them, also with grad mode on (PyTorch users
  // without torch.no_grad(), whose float biases require grad).
  at::NoGradGuard no_grad;
  const int64_t rows = shape[0], k = shape[1], n = x.size(0);
  auto out = at::empty({n, rows}, at::kFloat);
  if (n <= kKernelRows) {
    const int64_t groups = packed_groups(k);
    auto padded = at::zeros({n, groups * kGroup}, at::kFloat);
    padded.narrow(1, 0, k).copy_(x);
    const KernelPath path = selected_path();
    const auto* planes = reinterpret_cast<const uint32_t*>(codes.data_ptr<uint8_t>());
    const float wp = scale(scales, 0), wn = scale(scales, 1);
    at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
      ternary_rows(path, planes, groups, padded.data_ptr<float>(), n, wp, wn, out.data_ptr<float>(), rows, r0, r1);
    });
  } else {
    // Blocks of rows (at most 4 MiB of float32 weights, at least two blocks a thread), each decoded
    // into its thread's scratch and multiplied by BLAS (single-threaded inside the parallel region)
    // while it is still in cache: the decode then costs about what BLAS saves on reading weights.
    const int64_t share = (rows + 2 * at::get_num_threads() - 1) / (2 * at::get_num_threads());
    const int64_t block = (std::max<int64_t>(16, std::min((1 << 20) / std::max<int64_t>(k, 1), share)) + 15) / 16 * 16;
    at::parallel_for(0, (rows + block - 1) / block, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t r0 = b * block, count = std::min(block, rows - r0);
        out.narrow(1, r0, count).copy_(at::mm(x, decoded_block(codes, scales, k, r0, count).t()));
      }
    });
  }
  return linear_output(out, bias, input);
}

// The step of the int8 grid of each slice of x over `dims`: its largest magnitude maps to 127 (one
// for an all-zero slice, which has no scale to divide by). Largest and smallest, not |x|: no
// temporary the size of x.
at::Tensor int8_steps(const at::Tensor& x, c10::IntArrayRef dims) {
  const auto largest = at::maximum(x.amax(dims, true), x.amin(dims, true).neg());
  return (largest / 127.0f).clamp_min(std::numeric_limits<float>::min()).contiguous();
}

// ttq export --calibrate: set by set_calibrating (packed.h).
std::atomic<bool> calibrating{false};

// The int8 step of each of the `count` slices of x over `dims`: the layer's calibrated step for all
// (input_step > 0: static), else each slice's own (dynamic, int8_steps). While calibrating, the
// dynamic steps are taken and input_step is raised to the largest of them.
at::Tensor input_steps(const at::Tensor& x, c10::IntArrayRef dims, int64_t count,
                       const c10::optional<at::Tensor>& input_step, const char* op) {
  if (!input_step || !input_step->defined()) return int8_steps(x, dims);
  TORCH_CHECK(input_step->scalar_type() == at::kFloat && input_step->numel() == 1 && input_step->is_cpu(), "ttq::",
              op, ": input_step must hold one float32 value on the CPU");
  float* stored = input_step->data_ptr<float>();
  TORCH_CHECK(std::isfinite(*stored) && *stored >= 0, "ttq::", op, ": input_step must be finite and not negative (got ",
              *stored, ")");
  if (calibrating) {
    const auto steps = int8_steps(x, dims);
    *stored = std::max(*stored, steps.max().item<float>());
    return steps;
  }
  return *stored > 0 ? at::full({count}, *stored, at::kFloat) : int8_steps(x, dims);
}

// Input rows quantized to int8 with one scale each (dynamic, symmetric: the row's largest magnitude
// maps to 127), as PyTorch's dynamic quantization and bitnet.cpp's W1.58A8 kernels do, or with the
// calibrated input_step (static), and the layer's two scales put on one int8 grid (int8_weights);
// every batch size runs the int8 kernels, which block rows and inputs.
at::Tensor linear_int8(const at::Tensor& input, const at::Tensor& codes, const at::Tensor& scales,
                       c10::IntArrayRef shape, const c10::optional<at::Tensor>& bias,
                       const c10::optional<at::Tensor>& input_step) {
  const auto x = linear_rows(input, codes, scales, shape, "linear_int8");
  at::NoGradGuard no_grad;
  const int64_t rows = shape[0], k = shape[1];
  const int64_t n = x.size(0), groups = packed_groups(k), stride = (groups * kGroup + 63) / 64 * 64;
  const KernelPath path = selected_path();
  const bool offset = int8_offset(path);
  const auto q_scale = input_steps(x, 1, n, input_step, "linear_int8");
  const float* row_step = q_scale.data_ptr<float>();
  uint8_t* q = input_scratch(n * stride);
  const float* xd = x.data_ptr<float>();
  const auto xs = x.strides();
  at::parallel_for(0, n, 1, [&](int64_t a, int64_t b) {
    for (int64_t i = a; i < b; ++i) {
      quantize_int8(path, xd + i * xs[0], k, xs[1], row_step[i], offset, q + i * stride);
      std::memset(q + i * stride + k, offset ? 128 : 0, static_cast<size_t>(stride - k));  // zero past k
    }
  });
  std::vector<int64_t> row(n), step((groups + 1) / 2);
  for (int64_t i = 0; i < n; ++i) row[i] = i * stride;
  for (size_t s = 0; s < step.size(); ++s) step[s] = 64 * static_cast<int64_t>(s);
  const Int8Inputs in{q, row.data(), step.data(), row_step, k};
  auto out = at::empty({n, rows}, at::kFloat);
  const auto* planes = reinterpret_cast<const uint32_t*>(codes.data_ptr<uint8_t>());
  const Int8Weights w = int8_weights(scale(scales, 0), scale(scales, 1));
  at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
    ternary_rows_int8(path, planes, groups, w, in, 0, n, r0, r1, {out.data_ptr<float>(), rows, 1});
  });
  return linear_output(out, bias, input);
}

// The weight is decoded for the call into the scratch (one layer): a convolution's cost is its
// arithmetic, which LibTorch's own kernels do best.
at::Tensor conv2d(const at::Tensor& input, const at::Tensor& codes, const at::Tensor& scales, c10::IntArrayRef shape,
                  const c10::optional<at::Tensor>& bias, c10::IntArrayRef stride, c10::IntArrayRef padding,
                  c10::IntArrayRef dilation, int64_t groups) {
  TORCH_CHECK(shape.size() == 4, "ttq::conv2d: the weight shape must be [out, in/groups, kh, kw]");
  check_packed(codes, scales, to_vector(shape));
  check_input(input, "conv2d");
  at::NoGradGuard no_grad;
  const int64_t rows = shape[0], k = shape[1] * shape[2] * shape[3];
  const auto w = decoded(codes, scales, k, rows).view(shape);
  return at::conv2d(input, w, bias, stride, padding, dilation, groups);
}

// The int8 convolution reads a pixel's channels for one tap at a time, 64 bytes a step: a layer
// runs int8 when it has one group and its in-channels are a multiple of 64, or its kernel is 1x1
// (then the step runs past a pixel's channels onto zero weights).
bool runs_int8(c10::IntArrayRef shape, int64_t groups) {
  return groups == 1 && (shape[1] % 64 == 0 || shape[2] * shape[3] == 1);
}

// out_affine, [3, out] or [4, out]: per output channel c, min(max(scale[c] · (conv + bias) +
// shift[c], floor[c]), ceiling[c]) (a BatchNorm folded into the layer, and a ReLU fused: floor 0,
// else -inf; a ReLU6: ceiling 6, else +inf or no fourth row; packed_model.h). Checked, as a
// contiguous [4, out] copy.
at::Tensor checked_affine(const at::Tensor& affine, int64_t rows, const char* op) {
  TORCH_CHECK(affine.scalar_type() == at::kFloat && affine.is_cpu() && affine.dim() == 2 &&
                  (affine.size(0) == 3 || affine.size(0) == 4) && affine.size(1) == rows,
              "ttq::", op, ": out_affine must be a float32 CPU tensor [3, ", rows, "] or [4, ", rows, "] (got ",
              affine.sizes(), ")");
  if (affine.size(0) == 4) return affine.contiguous().clone();
  return at::cat({affine, at::full({1, rows}, std::numeric_limits<float>::infinity())});
}

// aten::conv2d with an out_affine folded in: `w`, the call's own float weight, scaled per output
// channel and the shift put into the bias, then the floor and ceiling as one clamp_ where every
// channel has the same (a ReLU, a ReLU6), or none where they are infinite: one pass over the
// output, or none, rather than three.
at::Tensor conv2d_folded(const at::Tensor& input, at::Tensor& w, const c10::optional<at::Tensor>& bias,
                         c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                         const at::Tensor& out_affine, const char* op) {
  const int64_t rows = w.size(0);
  const auto a = checked_affine(out_affine, rows, op);
  const auto scale = a[0], shift = a[1], floor = a[2], ceiling = a[3];
  w.mul_(scale.view({rows, 1, 1, 1}));
  const auto folded_bias = bias && bias->defined() ? *bias * scale + shift : shift;
  auto out = at::conv2d(input, w, folded_bias, stride, padding, dilation, groups);
  const float lowest = floor.min().item<float>(), highest = ceiling.max().item<float>();
  if (lowest == floor.max().item<float>() && highest == ceiling.min().item<float>()) {
    const float inf = std::numeric_limits<float>::infinity();
    if (lowest == -inf && highest == inf) return out;
    return out.clamp_(lowest == -inf ? c10::optional<at::Scalar>() : lowest,
                      highest == inf ? c10::optional<at::Scalar>() : highest);
  }
  return at::minimum(at::maximum(out, floor.view({1, rows, 1, 1})), ceiling.view({1, rows, 1, 1}));
}

// The float path's convolution, for layers the int8 kernels do not take (depthwise, grouped); an
// out_affine goes into the weight the call decodes anyway.
at::Tensor conv2d_float(const at::Tensor& input, const at::Tensor& codes, const at::Tensor& scales,
                        c10::IntArrayRef shape, const c10::optional<at::Tensor>& bias, c10::IntArrayRef stride,
                        c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                        const c10::optional<at::Tensor>& out_affine) {
  const int64_t rows = shape[0], cin = shape[1], kh = shape[2], kw = shape[3];
  // The weight in the input's memory format: aten::conv2d gives a channels-last output when either is.
  // Made with that format's strides (contiguous() keeps a depthwise [out, 1, kh, kw] permuted view's
  // channels-last strides, as its one in-channel makes them contiguous too).
  auto w = at::empty({rows, cin, kh, kw}, at::TensorOptions(at::kFloat).memory_format(input.suggest_memory_format()));
  w.copy_(decoded(codes, scales, cin * kh * kw, rows).view({rows, kh, kw, cin}).permute({0, 3, 1, 2}));
  if (!out_affine || !out_affine->defined()) return at::conv2d(input, w, bias, stride, padding, dilation, groups);
  return conv2d_folded(input, w, bias, stride, padding, dilation, groups, *out_affine, "conv2d_int8");
}

// A float convolution (one the packing keeps float, as ResNet's first) with the BatchNorm and ReLU
// after it folded in (fold_batch_norms): its weight is copied for the call and scaled.
at::Tensor conv2d_affine(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                         c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                         const at::Tensor& out_affine) {
  check_input(input, "conv2d_affine");
  TORCH_CHECK(weight.dim() == 4 && weight.scalar_type() == at::kFloat && weight.is_cpu(),
              "ttq::conv2d_affine: the weight must be a float32 CPU tensor [out, in/groups, kh, kw] (got ",
              weight.sizes(), ")");
  at::NoGradGuard no_grad;
  auto w = at::empty(weight.sizes(), at::TensorOptions(at::kFloat).memory_format(input.suggest_memory_format()));
  w.copy_(weight);
  return conv2d_folded(input, w, bias, stride, padding, dilation, groups, out_affine, "conv2d_affine");
}

// Each sample of x ([batch, cin, height, width], any strides) quantized with its step into a
// zero-padded NHWC image of `image` bytes in this thread's input scratch, and 64 bytes more that a
// last 1x1 step may read; zero is 128 where the kernels take offset bytes.
const uint8_t* quantized_images(const at::Tensor& x, c10::IntArrayRef padding, const float* sample_step, KernelPath path,
                                int64_t image) {
  const int64_t batch = x.size(0), cin = x.size(1), height = x.size(2), width = x.size(3);
  const int64_t padded_w = width + 2 * padding[1], q_bytes = batch * image + 64;
  uint8_t* qd = input_scratch(q_bytes);
  const bool offset = int8_offset(path);
  const bool padded = padding[0] > 0 || padding[1] > 0;  // else every byte but the last 64 is written below
  at::parallel_for(padded ? 0 : q_bytes - 64, q_bytes, 1 << 16, [&](int64_t a, int64_t b) {
    std::memset(qd + a, offset ? 128 : 0, static_cast<size_t>(b - a));
  });
  const float* xd = x.data_ptr<float>();
  const auto xs = x.strides();
  // A channels-last image row is width · cin values in a row, as its place in the padded image.
  const bool rows_whole = xs[1] == 1 && xs[3] == cin;
  at::parallel_for(0, batch * height, 1, [&](int64_t a, int64_t b) {
    for (int64_t nh = a; nh < b; ++nh) {
      const int64_t n = nh / height, h = nh % height;
      const float* src = xd + n * xs[0] + h * xs[2];
      uint8_t* dst = qd + n * image + ((h + padding[0]) * padded_w + padding[1]) * cin;
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

// conv2d on int8 inputs: each sample quantized with one scale (max |x| / 127, or the calibrated
// input_step) into a zero-padded NHWC image, then every output pixel is a row of the int8 kernels
// whose steps walk the taps (implicit GEMM: no im2col copy). The codes are tap-major, [out, kh, kw,
// in] (packed_model.h), so that a tap's channels are contiguous in both. Threads split the output
// channels. The output is channels-last when the input is, as aten::conv2d's: then a pixel's
// channels are written together, and the pooling and normalization after it run their
// channels-last kernels. out_affine (checked_affine) is applied as each value is stored. Other
// layers (groups, odd channel counts) run the float path.
at::Tensor conv2d_int8(const at::Tensor& input, const at::Tensor& codes, const at::Tensor& scales,
                       c10::IntArrayRef shape, const c10::optional<at::Tensor>& bias, c10::IntArrayRef stride,
                       c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                       const c10::optional<at::Tensor>& input_step, const c10::optional<at::Tensor>& out_affine) {
  TORCH_CHECK(shape.size() == 4, "ttq::conv2d_int8: the weight shape must be [out, in/groups, kh, kw]");
  const int64_t rows = shape[0], cin = shape[1], kh = shape[2], kw = shape[3];
  check_packed(codes, scales, {rows, kh, kw, cin});
  check_input(input, "conv2d_int8");
  at::NoGradGuard no_grad;
  if (!runs_int8(shape, groups))
    return conv2d_float(input, codes, scales, shape, bias, stride, padding, dilation, groups, out_affine);
  TORCH_CHECK(input.dim() == 4 && input.size(1) == cin, "ttq::conv2d_int8: the input must be [batch, ", cin,
              ", height, width] (got ", input.sizes(), ")");
  TORCH_CHECK(stride.size() == 2 && padding.size() == 2 && dilation.size() == 2,
              "ttq::conv2d_int8: stride, padding and dilation must have two values each");
  const int64_t batch = input.size(0), height = input.size(2), width = input.size(3);
  const int64_t padded_h = height + 2 * padding[0], padded_w = width + 2 * padding[1];
  const int64_t out_h = (padded_h - dilation[0] * (kh - 1) - 1) / stride[0] + 1;
  const int64_t out_w = (padded_w - dilation[1] * (kw - 1) - 1) / stride[1] + 1;
  TORCH_CHECK(out_h > 0 && out_w > 0, "ttq::conv2d_int8: the input (", input.sizes(), ") is smaller than the kernel");
  const int64_t image = padded_h * padded_w * cin, pixels = out_h * out_w, groups32 = packed_groups(cin * kh * kw);
  const KernelPath path = selected_path();
  const auto step_of = input_steps(input, {1, 2, 3}, batch, input_step, "conv2d_int8");
  const float* sample_step = step_of.data_ptr<float>();
  const uint8_t* qd = quantized_images(input, padding, sample_step, path, image);

  // Input row i: output pixel (n, oh, ow) at its first tap; step s: the tap and channel of weight
  // 64 s of a row (tap-major), as an offset from there.
  std::vector<int64_t> row(batch * pixels), step((groups32 + 1) / 2);
  std::vector<float> row_step(batch * pixels);
  for (int64_t i = 0; i < batch * pixels; ++i) {
    const int64_t n = i / pixels, oh = i % pixels / out_w, ow = i % out_w;
    row[i] = n * image + (oh * stride[0] * padded_w + ow * stride[1]) * cin;
    row_step[i] = sample_step[n];
  }
  for (size_t s = 0; s < step.size(); ++s) {
    const int64_t at = 64 * static_cast<int64_t>(s), tap = at / cin, channel = at % cin;
    step[s] = (tap / kw * dilation[0] * padded_w + tap % kw * dilation[1]) * cin + channel;
  }
  const Int8Inputs in{qd, row.data(), step.data(), row_step.data(), cin * kh * kw};
  const bool channels_last = input.suggest_memory_format() == at::MemoryFormat::ChannelsLast;
  auto out = at::empty({batch, rows, out_h, out_w},
                       at::TensorOptions(at::kFloat).memory_format(channels_last ? at::MemoryFormat::ChannelsLast
                                                                                 : at::MemoryFormat::Contiguous));
  const bool has_bias = bias && bias->defined();
  at::Tensor affine;  // with the bias folded into the shift: the kernels store the final values
  if (out_affine && out_affine->defined()) {
    affine = checked_affine(*out_affine, rows, "conv2d_int8");
    if (has_bias) affine[1].add_(affine[0] * *bias);
  }
  const float* a = affine.defined() ? affine.data_ptr<float>() : nullptr;
  const auto* planes = reinterpret_cast<const uint32_t*>(codes.data_ptr<uint8_t>());
  const Int8Weights w = int8_weights(scale(scales, 0), scale(scales, 1));
  // Input i = n · pixels + p; row r lands at i · rows + r (channels-last), or at out[n][r][p]:
  // n · rows · pixels + r · pixels + p, one sample at a time.
  float* y = out.data_ptr<float>();
  auto run = [&](int64_t i0, int64_t i1, int64_t r0, int64_t r1) {
    auto output = [&](float* at, int64_t input_stride, int64_t row_stride) {
      if (!a) return Int8Output{at, input_stride, row_stride};
      return Int8Output{at, input_stride, row_stride, a, a + rows, a + 2 * rows, a + 3 * rows};
    };
    if (channels_last) return ternary_rows_int8(path, planes, groups32, w, in, i0, i1, r0, r1, output(y, rows, 1));
    for (int64_t n = i0 / pixels; n * pixels < i1; ++n)
      ternary_rows_int8(path, planes, groups32, w, in, std::max(i0, n * pixels), std::min(i1, (n + 1) * pixels), r0,
                        r1, output(y + n * rows * pixels - n * pixels, 1, pixels));
  };
  // Threads split the larger side: the output channels, or the pixels where they outnumber them
  // (MobileNetV2's layers of 16 to 32 channels at 112x112; each thread then decodes every row).
  const int64_t inputs = batch * pixels;
  if (inputs > rows)
    at::parallel_for(0, inputs, 48, [&](int64_t i0, int64_t i1) { run(i0, i1, 0, rows); });
  else
    at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) { run(0, inputs, r0, r1); });
  if (has_bias && !a) out.add_(bias->view({1, rows, 1, 1}));
  return out;
}

std::tuple<at::Tensor, at::Tensor> pack_op(const at::Tensor& weight, double wp, double wn) {
  Packed p = pack(weight, static_cast<float>(wp), static_cast<float>(wn));
  return {p.codes, p.scales};
}

at::Tensor unpack_op(const at::Tensor& codes, const at::Tensor& scales, c10::IntArrayRef shape) {
  return unpack(codes, scales, to_vector(shape));
}

std::string kernel_op() { return path_name(selected_path()); }

}  // namespace

void set_calibrating(bool on) { calibrating = on; }
}  // namespace ttq::ops

TORCH_LIBRARY(ttq, m) {
  m.def("pack(Tensor weight, float wp, float wn) -> (Tensor codes, Tensor scales)", &ttq::ops::pack_op);
  m.def("unpack(Tensor codes, Tensor scales, int[] shape) -> Tensor", &ttq::ops::unpack_op);
  m.def("linear(Tensor input, Tensor codes, Tensor scales, int[] shape, Tensor? bias) -> Tensor", &ttq::ops::linear);
  // input_step: the calibrated int8 step of the input, one float; 0 or none: each call's own.
  // out_affine: [3, out] scale, shift and floor of each output channel (a folded BatchNorm and ReLU),
  // and [4, out] with a ceiling (a ReLU6).
  m.def("linear_int8(Tensor input, Tensor codes, Tensor scales, int[] shape, Tensor? bias, "
        "Tensor? input_step=None) -> Tensor",
        &ttq::ops::linear_int8);
  m.def("conv2d(Tensor input, Tensor codes, Tensor scales, int[] shape, Tensor? bias, int[] stride, int[] padding, "
        "int[] dilation, int groups) -> Tensor",
        &ttq::ops::conv2d);
  m.def("conv2d_int8(Tensor input, Tensor codes, Tensor scales, int[] shape, Tensor? bias, int[] stride, "
        "int[] padding, int[] dilation, int groups, Tensor? input_step=None, Tensor? out_affine=None) -> Tensor",
        &ttq::ops::conv2d_int8);
  // A float convolution with out_affine ([3, out] or [4, out], as conv2d_int8's) folded in.
  m.def("conv2d_affine(Tensor input, Tensor weight, Tensor? bias, int[] stride, int[] padding, int[] dilation, "
        "int groups, Tensor out_affine) -> Tensor",
        &ttq::ops::conv2d_affine);
  m.def("kernel() -> str", &ttq::ops::kernel_op);
}
