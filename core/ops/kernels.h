// The ternary matrix-vector kernels behind ttq::linear and ttq::linear_int8, one per instruction
// set, chosen at run time by the CPU's features (or TTQ_KERNEL=portable|avx2|avx512, for tests and
// benchmarks). avx512 means AVX-512 F, BW and VNNI (vpdpbusd); a CPU with less takes avx2.
#pragma once
#include <cstdint>
#include <string>

namespace ttq::ops {

enum class KernelPath { Portable, Avx2, Avx512 };
const char* path_name(KernelPath path);
bool cpu_supports(KernelPath path);
// TTQ_KERNEL when set (c10::Error when this CPU lacks it), else the fastest this CPU runs.
KernelPath selected_path();

// y[i * rows + r] = wp · Σ x[i, k] over the positive bits of row r − wn · Σ x[i, k] over its
// negative bits, for rows r0 <= r < r1 and inputs i < n. `planes`: the packed codes (packed.h),
// `groups` per row; `x`: n rows of groups · 32 floats, zero past K.
void ternary_rows(KernelPath path, const uint32_t* planes, int64_t groups, const float* x, int64_t n, float wp,
                  float wn, float* y, int64_t rows, int64_t r0, int64_t r1);

// A layer's weights for the int8 kernels: +Wp ≈ step · pos and −Wn ≈ step · neg with pos and neg
// int8, step = max(|Wp|, |Wn|) / 127; the larger scale is exact, the other within step / 2.
struct Int8Weights {
  int8_t pos, neg;
  float step;
};
Int8Weights int8_weights(float wp, float wn);

// The same with int8 inputs: y[i * rows + r] = q_scale[i] · w.step · Σ_k w[r, k] · q[i, k], w[r, k]
// the byte of the weight's sign (w.pos, 0, w.neg), the sum exact in int32. `q`: n rows of `stride`
// bytes, stride >= groups · 32 rounded up to 64, zero past K.
void ternary_rows_int8(KernelPath path, const uint32_t* planes, int64_t groups, Int8Weights w, const int8_t* q,
                       int64_t stride, const float* q_scale, int64_t n, float* y, int64_t rows, int64_t r0,
                       int64_t r1);

// Rows r0 <= r < r1 of the packed [rows, k] matrix as float32 (+wp, 0, -wn) into dst, k floats a row.
void ternary_decode(KernelPath path, const uint32_t* planes, int64_t groups, int64_t k, float wp, float wn,
                    int64_t r0, int64_t r1, float* dst);

}  // namespace ttq::ops
