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
#include "core/ops/conv_int8.h"
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

// The floats uint8 residual bytes (q + 128 on `step`) stand for: q · step, as the stores compute them.
at::Tensor floats_of(const at::Tensor& bytes, float step) { return bytes.to(at::kFloat).sub_(128).mul_(step); }

}  // namespace

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

// conv2d on int8 inputs (ternary_conv2d_int8, conv_int8.cpp), the ternary rows on their packed planes.
// out_affine and clamp (checked_affine), the bias and a residual (a fused `y + residual`, before the affine's
// floor and ceiling: a ResNet block's add and ReLU; float32, or the bytes a layer before stored, on
// residual_step) are applied as each value is stored, and with an output_step the value is stored as
// the next layer's int8 input. Layers conv_runs_int8 does not take run the float path.
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
  return ternary_conv2d_int8(input, codes, scales, shape, bias, stride, padding, dilation, groups, input_step, affine,
                             next_step, added_residual);
}

// A float convolution (one the packing keeps float, as ResNet's first) with the BatchNorm and ReLU
// after it folded in (fold_batch_norms, checked_affine): its weight is copied for the call and
// scaled. With an input_step (a model with int8 activations) it runs on int8 inputs with 8-bit
// weights where it has one group (conv2d_dense_int8): the weight rounded on its first call, or stored
// in 8 bits (int8, with its weight_step: export's). With max_pool ([kernel, stride, padding]: the
// max-pool that alone takes its output, ResNet's) it returns that pooling of its output, which the
// int8 path pools band by band as it computes it (pooled_int8_output). With an output_step (int8
// path only) it stores the next layer's input bytes, as conv2d_int8 does.
at::Tensor conv2d_affine(const at::Tensor& input, const at::Tensor& weight, const c10::optional<at::Tensor>& bias,
                         c10::IntArrayRef stride, c10::IntArrayRef padding, c10::IntArrayRef dilation, int64_t groups,
                         const at::Tensor& out_affine, const c10::optional<at::Tensor>& input_step,
                         c10::IntArrayRef max_pool, const c10::optional<at::Tensor>& clamp,
                         const c10::optional<at::Tensor>& weight_step, const c10::optional<at::Tensor>& output_step) {
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
  const bool runs_int8 = input_step && input_step->defined() && groups == 1;
  const float next_step =
      output_step && output_step->defined() ? *step_value(*output_step, "output_step", "conv2d_affine") : 0;
  TORCH_CHECK(runs_int8 || next_step == 0, "ttq::conv2d_affine: an output_step needs the int8 path: an input_step "
              "and one group (got ", groups, ")");
  if (runs_int8) {
    // Rounded to 8 bits a row, or stored so (with its weight_step).
    const auto eight_bit_bytes = [&]() -> std::pair<at::Tensor, at::Tensor> {
      if (!eight_bit) return eight_bit_rows(weight);
      return {weight.reshape({rows, -1}).contiguous(), weight_step->contiguous()};
    };
    std::vector<at::Tensor> sources{weight};
    if (eight_bit) sources.push_back(*weight_step);
    return conv2d_dense_int8(input, sources, eight_bit_bytes, weight.sizes(), 1, bias, stride, padding, dilation,
                             affine, input_step, max_pool, "conv2d_affine", next_step);
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
