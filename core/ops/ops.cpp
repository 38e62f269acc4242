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
#include "core/ops/ops_internal.h"
#include "core/ops/packed.h"

namespace ttq::ops {
namespace {

// ttq export --calibrate: set by set_calibrating (packed.h).
std::atomic<bool> calibrating{false};

// Up to this many input rows a call runs the bit-plane kernels (no weight is decoded, the work
// follows the packed bits); beyond, the layer is decoded into a scratch of one layer and
// multiplied by BLAS, whose blocking then wins.
constexpr int64_t kKernelRows = 8;

}  // namespace

at::Tensor weight_scratch(int64_t numel) {
  thread_local at::Tensor buffer;
  if (!buffer.defined() || buffer.numel() < numel) buffer = at::empty({numel}, at::kFloat);
  return buffer.narrow(0, 0, numel);
}

std::vector<int64_t> to_vector(c10::IntArrayRef a) { return a.vec(); }

void check_input(const at::Tensor& input, const char* op, bool bytes_too) {
  const bool bytes = bytes_too && input.scalar_type() == at::kByte;
  TORCH_CHECK(input.device().is_cpu() && (input.scalar_type() == at::kFloat || bytes), "ttq::", op,
              ": the input must be a float32 CPU tensor (got ", input.scalar_type(), " on ", input.device(), ")");
}

float scale(const at::Tensor& scales, int i) { return scales.data_ptr<float>()[i]; }

// As `scratch`, for bytes (ops_internal.h).
uint8_t* input_scratch(int64_t bytes) {
  thread_local std::vector<uint8_t> buffer;
  if (buffer.size() < static_cast<size_t>(bytes)) buffer.resize(static_cast<size_t>(bytes));
  return buffer.data();
}

at::Tensor decoded(const at::Tensor& codes, const at::Tensor& scales, int64_t k, int64_t rows) {
  auto w = weight_scratch(rows * k).view({rows, k});
  float* dst = w.data_ptr<float>();
  at::parallel_for(0, rows, std::max<int64_t>(1, 65536 / std::max<int64_t>(k, 1)), [&](int64_t a, int64_t b) {
    decode_rows(codes, k, scale(scales, 0), scale(scales, 1), a, b, dst + a * k);
  });
  return w;
}

namespace {

// Rows r0 <= r < r0 + count as float32 in this thread's scratch, decoded by this thread.
at::Tensor decoded_block(const at::Tensor& codes, const at::Tensor& scales, int64_t k, int64_t r0, int64_t count) {
  auto w = weight_scratch(count * k).view({count, k});
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

}  // namespace

float* step_value(const at::Tensor& step, const char* name, const char* op) {
  TORCH_CHECK(step.scalar_type() == at::kFloat && step.numel() == 1 && step.is_cpu(), "ttq::", op, ": ", name,
              " must hold one float32 value on the CPU");
  float* value = step.data_ptr<float>();
  TORCH_CHECK(std::isfinite(*value) && *value >= 0, "ttq::", op, ": ", name, " must be finite and not negative (got ",
              *value, ")");
  return value;
}

// ops_internal.h; each slice's own steps: int8_steps.
at::Tensor input_steps(const at::Tensor& x, c10::IntArrayRef dims, int64_t count,
                       const c10::optional<at::Tensor>& input_step, const char* op) {
  const bool bytes = x.scalar_type() == at::kByte;  // the int8 output of the layer before, on this layer's step
  const char* unstepped = ": a uint8 input (the int8 output of the layer before) needs the layer's calibrated input_step";
  TORCH_CHECK(!bytes || (input_step && input_step->defined()), "ttq::", op, unstepped);
  if (!input_step || !input_step->defined()) return int8_steps(x, dims);
  float* stored = step_value(*input_step, "input_step", op);
  TORCH_CHECK(!bytes || (*stored > 0 && !calibrating), "ttq::", op, unstepped);
  if (calibrating) {
    const auto steps = int8_steps(x, dims);
    *stored = std::max(*stored, steps.max().item<float>());
    return steps;
  }
  return *stored > 0 ? at::full({count}, *stored, at::kFloat) : int8_steps(x, dims);
}

namespace {

// The rows of x [n, k] quantized with their steps into this thread's input scratch, `stride` bytes
// a row, zero past k.
uint8_t* quantized_rows(const at::Tensor& x, const float* row_step, int64_t stride, KernelPath path) {
  const int64_t n = x.size(0), k = x.size(1);
  const bool offset = int8_offset(path);
  uint8_t* q = input_scratch(n * stride);
  const float* xd = x.data_ptr<float>();
  const auto xs = x.strides();
  at::parallel_for(0, n, 1, [&](int64_t a, int64_t b) {
    for (int64_t i = a; i < b; ++i) {
      quantize_int8(path, xd + i * xs[0], k, xs[1], row_step[i], offset, q + i * stride);
      std::memset(q + i * stride + k, offset ? 128 : 0, static_cast<size_t>(stride - k));  // zero past k
    }
  });
  return q;
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
  const auto q_scale = input_steps(x, 1, n, input_step, "linear_int8");
  const float* row_step = q_scale.data_ptr<float>();
  uint8_t* q = quantized_rows(x, row_step, stride, path);
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

// A linear layer an int8 model keeps in 8 bits (packed_model.h): weight [out, in] int8, its float
// weight rounded per output channel at export, each row `stride(0)` bytes apart (a multiple of 64,
// zero past in: the kernels' steps); weight_step [out] the rows' steps. The input is quantized as
// linear_int8's; the bias goes into the stores.
at::Tensor linear_8bit(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& weight_step,
                       const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& input_step) {
  TORCH_CHECK(weight.scalar_type() == at::kChar && weight.is_cpu() && weight.dim() == 2,
              "ttq::linear_8bit: the weight must be int8 [out, in] (got ", weight.sizes(), " ", weight.scalar_type(), ")");
  const int64_t rows = weight.size(0), k = weight.size(1), stride = (k + 63) / 64 * 64;
  TORCH_CHECK(weight.stride(0) == stride && weight.stride(1) == 1 &&
                  static_cast<int64_t>(weight.storage().nbytes()) >= weight.storage_offset() + rows * stride,
              "ttq::linear_8bit: the weight's rows must lie ", stride, " bytes apart (got strides ", weight.strides(), ")");
  TORCH_CHECK(weight_step.scalar_type() == at::kFloat && weight_step.is_cpu() && weight_step.numel() == rows,
              "ttq::linear_8bit: weight_step must be ", rows, " float32 values");
  TORCH_CHECK(!bias || !bias->defined() || (bias->scalar_type() == at::kFloat && bias->numel() == rows),
              "ttq::linear_8bit: the bias must be ", rows, " float32 values");
  check_input(input, "linear_8bit");
  TORCH_CHECK(input.dim() >= 1 && input.size(-1) == k, "ttq::linear_8bit: the input has ", input.size(-1),
              " features; the weight takes ", k);
  const auto x = input.reshape({-1, k});
  at::NoGradGuard no_grad;
  const int64_t n = x.size(0);
  const KernelPath path = selected_path();
  const auto q_scale = input_steps(x, 1, n, input_step, "linear_8bit");
  const uint8_t* q = quantized_rows(x, q_scale.data_ptr<float>(), stride, path);
  std::vector<int64_t> row(n);
  for (int64_t i = 0; i < n; ++i) row[i] = i * stride;
  const Int8Inputs in{q, row.data(), nullptr, q_scale.data_ptr<float>(), stride};
  // [scale; shift; floor; ceiling]: the rows' steps, the bias, no clamp.
  const auto shift = bias && bias->defined() ? bias->reshape({rows}) : at::zeros({rows});
  const auto affine =
      at::stack({weight_step.reshape({rows}), shift, at::full({rows}, -INFINITY), at::full({rows}, INFINITY)});
  auto out = at::empty({n, rows}, at::kFloat);
  at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
    Int8Output o = affine_output(affine.data_ptr<float>(), rows, rows, 1);
    o.y = out.data_ptr<float>();
    eight_bit_rows_int8(path, weight.data_ptr<int8_t>(), stride, in, 0, n, r0, r1, o);
  });
  return linear_output(out, c10::nullopt, input);
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
  m.def("linear_int8(Tensor input, Tensor codes, Tensor scales, int[] shape, Tensor? bias, "
        "Tensor? input_step=None) -> Tensor",
        &ttq::ops::linear_int8);
  // A float linear layer an int8 model keeps in 8 bits: weight int8 [out, in], rows 64-byte
  // multiples apart, weight_step [out].
  m.def("linear_8bit(Tensor input, Tensor weight, Tensor weight_step, Tensor? bias, Tensor? input_step=None) "
        "-> Tensor",
        &ttq::ops::linear_8bit);
  m.def("conv2d(Tensor input, Tensor codes, Tensor scales, int[] shape, Tensor? bias, int[] stride, int[] padding, "
        "int[] dilation, int groups) -> Tensor",
        &ttq::ops::conv2d);
  // out_affine: [2, out] scale and shift of each output channel (a folded BatchNorm), and clamp: [2],
  // the floor and ceiling of every channel (a ReLU: 0 and inf, a ReLU6: 0 and 6; a file ttq wrote
  // before gives [3, out] or [4, out] floors and ceilings per channel instead).
  // output_step > 0: the output as the next layer's int8 input, uint8 (q + 128) on its input_step,
  // which takes it as it is (ttq export --calibrate, between two int8 convolutions). residual:
  // added to the output before the floor and ceiling (a residual block's add and ReLU): float32, or
  // uint8 (q + 128) as a layer before stored it, on residual_step (its output_step).
  m.def("conv2d_int8(Tensor input, Tensor codes, Tensor scales, int[] shape, Tensor? bias, int[] stride, "
        "int[] padding, int[] dilation, int groups, Tensor? input_step=None, Tensor? out_affine=None, "
        "Tensor? output_step=None, Tensor? residual=None, Tensor? residual_step=None, Tensor? clamp=None) -> Tensor",
        &ttq::ops::conv2d_int8);
  // A float convolution with out_affine and clamp (as conv2d_int8's) folded in. With input_step (a
  // model with int8 activations) on int8 inputs and 8-bit weights, as conv2d_int8: the weight
  // float32, rounded per call, or int8 on weight_step [out] (as export stores it); max_pool: [kernel,
  // stride, padding] of a max-pool of its output (the one it returns); output_step: on int8 inputs,
  // the next layer's input bytes as conv2d_int8's output_step stores them.
  m.def("conv2d_affine(Tensor input, Tensor weight, Tensor? bias, int[] stride, int[] padding, int[] dilation, "
        "int groups, Tensor out_affine, Tensor? input_step=None, int[] max_pool=[], Tensor? clamp=None, "
        "Tensor? weight_step=None, Tensor? output_step=None) -> Tensor",
        &ttq::ops::conv2d_affine);
  m.def("kernel() -> str", &ttq::ops::kernel_op);
}
