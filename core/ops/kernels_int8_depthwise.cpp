// The int8 kernel of depthwise convolutions (MobileNet's 3x3 layers: a group per channel, each
// output channel the taps of its own input channel). Nine products an output leave no matrix to
// block: the work is reading the image, so a pixel's channels go side by side through the taps (a
// register of them on AVX-512 and AVX2, kernels_int8_blocked*.cpp; here the portable loop, which
// the compiler vectorizes). The portable and AVX2 kernels sum the products in float32: integers
// below 2^24 (at most 127 · 127 · 1040 taps), so the sums are exact in any order and equal the int32
// ones the AVX-512 kernel adds; the stores are the other kernels'.
#include <algorithm>
#include <vector>

#include "core/ops/kernels_int8_blocked.h"

namespace ttq::ops {
namespace {

// acc[c] = Σ_t q(x + tap[t])[c] · w[t · rows + c] for the `rows` channels of one pixel, q the byte
// as signed (`offset`: less 128).
__attribute__((target_clones("avx512f", "avx2", "default"))) void pixel_sums(const uint8_t* x, const int64_t* tap,
                                                                             int64_t taps, const float* w,
                                                                             int64_t rows, bool offset, float* acc) {
  for (int64_t c = 0; c < rows; ++c) acc[c] = 0;
  for (int64_t t = 0; t < taps; ++t) {
    const uint8_t* xt = x + tap[t];
    const float* wt = w + t * rows;
    if (offset)
      for (int64_t c = 0; c < rows; ++c) acc[c] += (static_cast<float>(xt[c]) - 128.0f) * wt[c];
    else
      for (int64_t c = 0; c < rows; ++c) acc[c] += static_cast<float>(static_cast<int8_t>(xt[c])) * wt[c];
  }
}

}  // namespace

// weights[t · (r1 − r0) + r − r0] from row r's bit t of the planes.
std::vector<float> depthwise_weights(const uint32_t* planes, int64_t groups, Int8Weights w, int64_t taps, int64_t r0,
                                     int64_t r1) {
  std::vector<float> weights(static_cast<size_t>(taps * (r1 - r0)));
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t t = 0; t < taps; ++t) {
      const uint32_t* g = planes + (r * groups + t / 32) * 2;
      const uint32_t bit = 1u << (t % 32);
      weights[t * (r1 - r0) + r - r0] = (g[0] & bit) ? w.pos : (g[1] & bit) ? w.neg : 0;
    }
  return weights;
}

void depthwise_rows_int8(KernelPath path, const float* weights, Int8Weights w, const int64_t* tap, int64_t taps,
                         const Int8Inputs& in, int64_t i0, int64_t i1, int64_t r0, int64_t r1, const Int8Output& out) {
  if (path == KernelPath::Avx512) return depthwise_avx512(weights, tap, taps, in, w, i0, i1, r0, r1, out);
  if (path == KernelPath::Avx2) return depthwise_avx2(weights, tap, taps, in, w, i0, i1, r0, r1, out);
  const int64_t rows = r1 - r0;
  std::vector<float> acc(static_cast<size_t>(rows));
  for (int64_t i = i0; i < i1; ++i) {
    pixel_sums(in.data + in.row[i] + r0, tap, taps, weights, rows, int8_offset(path), acc.data());
    for (int64_t r = 0; r < rows; ++r) store_value(static_cast<int32_t>(acc[r]), in, w, i, r0 + r, out);
  }
}

void depthwise_rows_int8(KernelPath path, const uint32_t* planes, int64_t groups, Int8Weights w, const int64_t* tap,
                         int64_t taps, const Int8Inputs& in, int64_t i0, int64_t i1, int64_t r0, int64_t r1,
                         const Int8Output& out) {
  const std::vector<float> weights = depthwise_weights(planes, groups, w, taps, r0, r1);
  depthwise_rows_int8(path, weights.data(), w, tap, taps, in, i0, i1, r0, r1, out);
}

}  // namespace ttq::ops
