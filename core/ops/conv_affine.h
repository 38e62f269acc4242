// A convolution's per-channel affine (a folded BatchNorm, the clamp of a ReLU or ReLU6, the bias) as
// ttq::conv2d_int8 and ttq::conv2d_affine check it and apply it (conv.cpp alone includes this).
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace ttq::ops {

// A convolution's affine as the kernels read it (Int8Output): rows of `rows` floats, scale, shift,
// floor and ceiling of each output channel; the call's own, in plain memory rather than a tensor, as
// a layer of a few hundred channels costs microseconds of tensor operations per call and no more.
using Affine = std::vector<float>;

// Scale 1, shift 0, and the floor and ceiling for every one of `rows` channels.
inline Affine identity_affine(int64_t rows, float floor = -INFINITY, float ceiling = INFINITY) {
  Affine a(static_cast<size_t>(4 * rows), 1.0f);
  std::fill(a.begin() + rows, a.begin() + 2 * rows, 0.0f);
  std::fill(a.begin() + 2 * rows, a.begin() + 3 * rows, floor);
  std::fill(a.begin() + 3 * rows, a.end(), ceiling);
  return a;
}

// The affine as a [4, rows] tensor over its memory (for the float paths' ATen operations).
inline at::Tensor affine_tensor(Affine& a) { return at::from_blob(a.data(), {4, static_cast<int64_t>(a.size()) / 4}); }

// out_affine, [2, out], and clamp, [2]: per output channel c, min(max(scale[c] · (conv + bias) +
// shift[c], floor), ceiling) (a BatchNorm folded into the layer, and a ReLU fused: floor 0, a ReLU6:
// ceiling 6, one pair for every channel; no clamp: -inf and +inf; packed_model.h). Files ttq wrote
// before the clamp give [3, out] or [4, out], a floor (and ceiling) per channel, and no clamp.
// Checked; empty where neither is given, the identity affine where only the clamp is.
inline Affine checked_affine(const c10::optional<at::Tensor>& out_affine, const c10::optional<at::Tensor>& clamp,
                             int64_t rows, const char* op) {
  const bool clamps = clamp && clamp->defined();
  TORCH_CHECK(!clamps || (clamp->scalar_type() == at::kFloat && clamp->is_cpu() && clamp->numel() == 2), "ttq::", op,
              ": clamp must be a float32 CPU tensor of two values, floor and ceiling (got ", clamp->sizes(), ")");
  const auto bounds = clamps ? clamp->contiguous() : at::Tensor();
  Affine a = identity_affine(rows, clamps ? bounds.data_ptr<float>()[0] : -INFINITY,
                             clamps ? bounds.data_ptr<float>()[1] : INFINITY);
  if (!out_affine || !out_affine->defined()) return clamps ? a : Affine();
  const int64_t given = out_affine->dim() == 2 ? out_affine->size(0) : 0;
  TORCH_CHECK(out_affine->scalar_type() == at::kFloat && out_affine->is_cpu() && given >= 2 && given <= 4 &&
                  out_affine->size(1) == rows && (given == 2 || !clamps),
              "ttq::", op, ": out_affine must be a float32 CPU tensor [2, ", rows, "] (or, without a clamp, [3, ", rows,
              "] or [4, ", rows, "]) (got ", out_affine->sizes(), ")");
  const auto rows_given = out_affine->contiguous();
  std::copy_n(rows_given.data_ptr<float>(), given * rows, a.begin());
  return a;
}

// The bias folded into the affine's shift: scale · (y + bias) + shift = scale · y + (shift + scale · bias).
inline void add_bias(Affine& a, const c10::optional<at::Tensor>& bias) {
  if (!bias || !bias->defined()) return;
  const size_t rows = a.size() / 4;
  TORCH_CHECK(bias->scalar_type() == at::kFloat && static_cast<size_t>(bias->numel()) == rows,
              "ttq: the bias must be a float32 tensor of ", rows, " values (got ", bias->sizes(), ")");
  const auto b = bias->contiguous();
  const float* bd = b.data_ptr<float>();
  for (size_t r = 0; r < rows; ++r) a[rows + r] += a[r] * bd[r];
}

// out clamped to floor and ceiling ([rows] each) per channel, in place where it can: one clamp_
// where every channel has the same (a ReLU, a ReLU6), or none where they are infinite: one pass
// over the output, or none, rather than two.
inline at::Tensor clamped(at::Tensor out, const at::Tensor& floor, const at::Tensor& ceiling) {
  const float lowest = floor.min().item<float>(), highest = ceiling.max().item<float>();
  if (lowest == floor.max().item<float>() && highest == ceiling.min().item<float>()) {
    const float inf = std::numeric_limits<float>::infinity();
    if (lowest == -inf && highest == inf) return out;
    return out.clamp_(lowest == -inf ? c10::optional<at::Scalar>() : lowest,
                      highest == inf ? c10::optional<at::Scalar>() : highest);
  }
  const int64_t rows = floor.size(0);
  return at::minimum(at::maximum(out, floor.view({1, rows, 1, 1})), ceiling.view({1, rows, 1, 1}));
}

}  // namespace ttq::ops
