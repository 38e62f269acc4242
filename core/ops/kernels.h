// The ternary kernels behind ttq::linear, ttq::linear_int8 and ttq::conv2d_int8, one per instruction
// set, chosen at run time by the CPU's features (or TTQ_KERNEL=portable|avx2|avx512, for tests and
// benchmarks). avx512 means AVX-512 F, BW and VNNI (vpdpbusd); a CPU with less takes avx2.
#pragma once
#include <cstdint>
#include <vector>
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

// Int8 inputs for ternary_rows_int8: n rows of int8 values whose bytes for step s (weights 64s to
// 64s + 63 of a row, two groups) lie at data + row[i] + step[s] (a linear layer: row i · stride and
// 64 s; a convolution reads a pixel's channels tap by tap from an NHWC image). Bytes past K are
// read and multiplied by zero weights: any value will do, but they must be readable. The bytes are
// q, or q + 128 (unsigned) where int8_offset(path) says so: what that kernel multiplies.
// dense_rows_int8 reads four bytes at a time instead, from data + row[i] + four[q] for weights 4q to
// 4q + 3 (a convolution of 3 in-channels: a kernel row's 21 bytes, a pad, the next kernel row).
struct Int8Inputs {
  const uint8_t* data;
  const int64_t* row;    // n
  const int64_t* step;   // (groups + 1) / 2 (ternary_rows_int8)
  const float* scale;    // n: the value of one step of each row's int8 grid
  int64_t k;             // values an input holds (K), of which a kernel may skip the bytes past
  const int64_t* four = nullptr;  // (k + 3) / 4 (dense_rows_int8)
};
bool int8_offset(KernelPath path);

// dst[j] = round(x[j * x_stride] / scale) for j < count, halves to even as torch.round, clamped to
// ±127, + 128 where `offset`: an int8 kernel's input bytes. The same bytes on every path; the
// AVX-512 one has its own loop for contiguous values.
void quantize_int8(KernelPath path, const float* x, int64_t count, int64_t x_stride, float scale, bool offset,
                   uint8_t* dst);

// Where ternary_rows_int8 stores row r of input i, y[i * input_stride + r * row_stride], and what
// becomes of its value v first: with `scale`, min(max(scale[r] · v + shift[r] (+ residual[at], at
// the same place, where given), floor[r]), ceiling[r]) (a BatchNorm folded into the layer, a residual
// add and a ReLU or ReLU6 fused: ttq::conv2d_int8's out_affine and residual), else v as it is. A
// residual given as bytes (the block before's output, q + 128 on residual_step) adds
// float(q) · residual_step, the float the bytes stand for.
// With `bytes` (y unused), the next layer's int8 input instead, at the same places: round(v /
// byte_step) clamped to ±127, + 128 (whatever the path: a uint8 tensor between two layers), the
// bytes quantize_int8 makes of the float.
struct Int8Output {
  float* y;
  int64_t input_stride, row_stride;
  const float* scale = nullptr;
  const float* shift = nullptr;
  const float* floor = nullptr;
  const float* ceiling = nullptr;
  const float* residual = nullptr;  // with scale only
  const uint8_t* residual_bytes = nullptr;  // with scale only, where residual is not given
  float residual_step = 0;
  uint8_t* bytes = nullptr;
  float byte_step = 0;
};

// v = scale[i] · w.step · Σ_k w[r, k] · q[i, k] for rows r0 <= r < r1 and inputs i0 <= i < i1 into
// `out`, w[r, k] the byte of the weight's sign (w.pos, 0, w.neg), the sum exact in int32.
void ternary_rows_int8(KernelPath path, const uint32_t* planes, int64_t groups, Int8Weights w, const Int8Inputs& in,
                       int64_t i0, int64_t i1, int64_t r0, int64_t r1, const Int8Output& out);

// Int8 weights of a layer the packing keeps float, quantized per output channel for the call (its
// step goes into Int8Output's scale), in the blocked kernels' layout: blocks of `lanes` rows (16 for
// AVX-512, else 8), `lanes` · 4 bytes for each four of K (the four bytes of each row), and each row's
// share of the inputs' offset (128 · Σ w, where int8_offset).
struct DenseInt8Rows {
  std::vector<int8_t> blocked;
  std::vector<int32_t> offset;
  int64_t fours = 0, lanes = 0;
};
// w: [rows, k] bytes, each in [-127, 127].
DenseInt8Rows dense_int8_rows(KernelPath path, const int8_t* w, int64_t rows, int64_t k);
// As ternary_rows_int8, for dense rows with step 1 (in.four gives the inputs' bytes); r0 a multiple
// of rows.lanes.
void dense_rows_int8(KernelPath path, const DenseInt8Rows& rows, const Int8Inputs& in, int64_t i0, int64_t i1,
                     int64_t r0, int64_t r1, const Int8Output& out);

// As dense_rows_int8, for 8-bit rows stored row-major: `stride` bytes a row (a multiple of 64, zero
// past the layer's K), input i's `stride` bytes at in.data + in.row[i]; for a linear layer an int8
// model keeps in 8 bits (ttq::linear_8bit).
void eight_bit_rows_int8(KernelPath path, const int8_t* w, int64_t stride, const Int8Inputs& in, int64_t i0,
                         int64_t i1, int64_t r0, int64_t r1, const Int8Output& out);

// A depthwise convolution's rows (channels) r0 <= r < r1 for inputs (pixels) i0 <= i < i1:
// Σ_t w[r, t] · q[i, t, r], the bytes of tap t at in.data + in.row[i] + tap[t] + r (an NHWC image),
// w the packed [rows, taps] codes; stored as ternary_rows_int8 stores.
void depthwise_rows_int8(KernelPath path, const uint32_t* planes, int64_t groups, Int8Weights w, const int64_t* tap,
                         int64_t taps, const Int8Inputs& in, int64_t i0, int64_t i1, int64_t r0, int64_t r1,
                         const Int8Output& out);
// Rows [r0, r1) of the packed [rows, taps] codes as the depthwise kernels take them: the weights
// (w.pos, 0, w.neg) tap-major, [taps, r1 − r0].
std::vector<float> depthwise_weights(const uint32_t* planes, int64_t groups, Int8Weights w, int64_t taps, int64_t r0,
                                     int64_t r1);
// depthwise_rows_int8 with those weights made already (for rows [r0, r1)): for a caller that runs
// the kernel on many ranges of inputs.
void depthwise_rows_int8(KernelPath path, const float* weights, Int8Weights w, const int64_t* tap, int64_t taps,
                         const Int8Inputs& in, int64_t i0, int64_t i1, int64_t r0, int64_t r1, const Int8Output& out);

// Rows r0 <= r < r1 of the packed [rows, k] matrix as float32 (+wp, 0, -wn) into dst, k floats a row.
void ternary_decode(KernelPath path, const uint32_t* planes, int64_t groups, int64_t k, float wp, float wn,
                    int64_t r0, int64_t r1, float* dst);

// As ternary_decode, value (r, j) stored at dst[row_at[r] + k_at[j]]: a blocked layout whose offset
// is a sum of one term for the row and one for the place in it (oneDNN's weights, conv_onednn.cpp).
// Where 16 (AVX-512) or 8 (AVX2) rows lie side by side, one vector store writes a value of each.
void ternary_decode_scattered(KernelPath path, const uint32_t* planes, int64_t groups, int64_t k, float wp, float wn,
                              int64_t r0, int64_t r1, const int64_t* row_at, const int64_t* k_at, float* dst);

}  // namespace ttq::ops
