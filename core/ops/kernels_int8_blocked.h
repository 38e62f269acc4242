// Between the int8 kernels' files (kernels.h is the interface): the driver of the kernels for many
// inputs that keep, in each register, one input's sums for a register's lanes of rows (output
// channels), as oneDNN's int8 convolutions do (kernels_int8_blocked.cpp for AVX-512,
// kernels_int8_blocked_avx2.cpp for AVX2), the weight bytes from the bit planes that
// kernels_int8.cpp's kernels for few inputs make too, and the scalar store of one value.
#pragma once
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "core/ops/kernels.h"

namespace ttq::ops {

// Rows that stay in cache while inputs stream past them (when the inputs outweigh them) are at most
// this many bytes decoded: a thread's share of ResNet-18's 512x3x3 layers (1.2 MB decoded) met each
// block of inputs from beyond L2; blocks of 128 KiB made ResNet-18 about 10% faster at batch 1
// (bench_packed.sh).
constexpr int64_t kCachedRowBytes = 128 << 10;

// quantize_int8 of the AVX-512 path for contiguous values, and ternary_rows_int8's for many inputs
// (kernels_int8_blocked.cpp); ternary_rows_int8's AVX2 path for many inputs
// (kernels_int8_blocked_avx2.cpp).
void quantize_int8_avx512(const float* x, int64_t count, float scale, bool offset, uint8_t* dst);
void ternary_rows_int8_blocked(const uint32_t* planes, int64_t groups, Int8Weights w, const Int8Inputs& in,
                               int64_t i0, int64_t i1, int64_t r0, int64_t r1, const Int8Output& out);
void ternary_rows_int8_blocked_avx2(const uint32_t* planes, int64_t groups, Int8Weights w, const Int8Inputs& in,
                                    int64_t i0, int64_t i1, int64_t r0, int64_t r1, const Int8Output& out);
// depthwise_rows_int8 on AVX-512 and AVX2, `weights` its tap-major [taps, r1 − r0]
// (kernels_int8_depthwise.cpp).
void depthwise_avx512(const float* weights, const int64_t* tap, int64_t taps, const Int8Inputs& in, Int8Weights w,
                      int64_t i0, int64_t i1, int64_t r0, int64_t r1, const Int8Output& out);
void depthwise_avx2(const float* weights, const int64_t* tap, int64_t taps, const Int8Inputs& in, Int8Weights w,
                    int64_t i0, int64_t i1, int64_t r0, int64_t r1, const Int8Output& out);
// The depthwise kernels' order: inputs [i0, i1) in tiles of 64 pixels, and in each tile every
// register of `lanes` channels of `rows`, `run(ib, ie, c)`: every register of channels meets a tile
// while its image rows are in cache (a thread's half of a batch-16 image, a register's channels at
// a time, would read it from memory once for each register).
template <class Run>
void depthwise_tiles(int64_t lanes, int64_t i0, int64_t i1, int64_t rows, Run run) {
  constexpr int64_t kTile = 64;
  for (int64_t ib = i0; ib < i1; ib += kTile)
    for (int64_t c = 0; c < rows; c += lanes) run(ib, std::min(ib + kTile, i1), c);
}
// dense_rows_int8 on those two paths.
void dense_rows_int8_avx512(const DenseInt8Rows& rows, const Int8Inputs& in, int64_t i0, int64_t i1, int64_t r0,
                            int64_t r1, const Int8Output& out);
void dense_rows_int8_avx2(const DenseInt8Rows& rows, const Int8Inputs& in, int64_t i0, int64_t i1, int64_t r0,
                          int64_t r1, const Int8Output& out);

// 64 weights as bytes (w.pos, 0, w.neg) from their two 64-bit planes.
__attribute__((target("avx512f,avx512bw"), always_inline)) inline __m512i weight_bytes_avx512(uint64_t pos,
                                                                                               uint64_t neg,
                                                                                               __m512i vp, __m512i vn) {
  return _mm512_mask_mov_epi8(_mm512_maskz_mov_epi8(pos, vp), neg, vn);
}

// The 32 bits of a plane as 32 byte lanes, 0xff where the bit is set.
__attribute__((target("avx2"), always_inline)) inline __m256i bytes32(uint32_t bits) {
  const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,  //
                                          2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
  const __m256i select = _mm256_set1_epi64x(static_cast<int64_t>(0x8040201008040201ull));
  const __m256i b = _mm256_and_si256(_mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(bits)), spread), select);
  return _mm256_cmpeq_epi8(b, select);
}

// A group's 32 weights as bytes (w.pos, 0, w.neg) from its two planes.
__attribute__((target("avx2"), always_inline)) inline __m256i weight_bytes_avx2(const uint32_t* planes, __m256i vp,
                                                                                 __m256i vn) {
  return _mm256_or_si256(_mm256_and_si256(bytes32(planes[0]), vp), _mm256_and_si256(bytes32(planes[1]), vn));
}

// x on the int8 grid of `scale`, + add (quantize_int8's bytes).
inline uint8_t quantized(float x, float scale, int add) {
  return static_cast<uint8_t>(static_cast<int>(std::clamp(std::nearbyint(x / scale), -127.0f, 127.0f)) + add);
}

// Row r of input i, its int32 sum `dot`, into `out` as Int8Output says: the same float operations,
// in the same order, as the blocked kernels' stores (built without FMA contraction, as they are).
inline void store_value(int32_t dot, const Int8Inputs& in, Int8Weights w, int64_t i, int64_t r, const Int8Output& out) {
  float v = in.scale[i] * w.step * static_cast<float>(dot);
  const int64_t at = i * out.input_stride + r * out.row_stride;
  if (out.scale) {
    v = out.scale[r] * v + out.shift[r];
    if (out.residual) v += out.residual[at];
    if (out.residual_bytes) v += static_cast<float>(out.residual_bytes[at] - 128) * out.residual_step;
    v = std::min(std::max(v, out.floor[r]), out.ceiling[r]);
  }
  if (out.bytes)
    out.bytes[at] = quantized(v, out.byte_step, 128);
  else
    out.y[at] = v;
}

// What dense rows (DenseInt8Rows) store with: a step of 1, their own steps being in the output's scale.
constexpr Int8Weights kDenseStep{0, 0, 1.0f};

// The driver of the blocked kernels, by `Isa`, which gives
//   kLanes (rows a register holds), kBlockRows (registers of rows a block meets), kBlockInputs;
//   decode(planes, groups, w, count, blocked, offset): `count` packed rows into blocks of kLanes
//     rows, four bytes of each row a four (kLanes · 4 bytes), and each row's share of the inputs'
//     offset;
//   products(blocks, n, rows, block_bytes, fours, x, four, offset, dot): `blocks` blocks of rows
//     against n inputs, dot[(b · n + i) · kLanes + c], four bytes of input i at x[i] + four[q] for
//     four q, less the rows' offsets where the kernel offsets its inputs;
//   store(dot, blocks, n, in, w, r, here, ib, out): rows [r, r + here) of inputs from ib.
// Rows [rb, re) of blocked weights (`block_bytes` a block of kLanes rows, from row rb) against
// inputs [i0, i1), in blocks of equal size, at most kBlockInputs: a block of few inputs loads the
// rows' weights for little arithmetic (49 pixels by 12: 10, 10, 10, 10, 9 rather than 12, 12, 12,
// 12, 1).
template <class Isa>
void multiply_blocked(const int8_t* blocked, const int32_t* offset, int64_t block_bytes, const int64_t* four,
                      int64_t fours, Int8Weights w, const Int8Inputs& in, int64_t i0, int64_t i1, int64_t rb,
                      int64_t re, const Int8Output& out) {
  constexpr int64_t kLanes = Isa::kLanes, kRows = Isa::kBlockRows * Isa::kLanes;
  int32_t dot[Isa::kBlockRows * Isa::kBlockInputs * kLanes];
  const uint8_t* x[Isa::kBlockInputs];
  const int64_t blocks = (i1 - i0 + Isa::kBlockInputs - 1) / Isa::kBlockInputs;
  const int64_t block = (i1 - i0 + blocks - 1) / blocks;
  for (int64_t ib = i0; ib < i1; ib += block) {
    const int n = static_cast<int>(std::min(block, i1 - ib));
    for (int i = 0; i < n; ++i) x[i] = in.data + in.row[ib + i];
    for (int64_t r = rb; r < re; r += kRows) {
      const int64_t here = std::min(kRows, re - r);
      const int registers = static_cast<int>((here + kLanes - 1) / kLanes);
      Isa::products(registers, n, blocked + (r - rb) / kLanes * block_bytes, block_bytes, fours, x, four,
                    offset + (r - rb), dot);
      Isa::store(dot, registers, n, in, w, r, here, ib, out);
    }
  }
}

// Rows [r0, r1) in blocks that stay in cache while the inputs stream past them where the inputs
// outweigh them (at most kCachedRowBytes), else kBlockRows registers' rows at a time:
// `ready(rb, re)` makes a block's rows (blocked, offset) ready for multiply_blocked.
template <class Isa, class Ready>
void rows_in_blocks(Ready ready, int64_t row_bytes, int64_t i0, int64_t i1, int64_t r0, int64_t r1) {
  constexpr int64_t kRows = Isa::kBlockRows * Isa::kLanes;
  const int64_t cached = std::max<int64_t>(kRows, kCachedRowBytes / row_bytes / kRows * kRows);
  const int64_t row_block = 4 * (i1 - i0) > r1 - r0 ? std::min(r1 - r0, cached) : kRows;
  for (int64_t rb = r0; rb < r1; rb += row_block) ready(rb, std::min(rb + row_block, r1));
}

// Where each four of a row's weights lies in an input: a step's 16 fours, 64 bytes from step[s].
inline const int64_t* fours_of_steps(const int64_t* step, int64_t fours) {
  thread_local std::vector<int64_t> four;
  four.resize(static_cast<size_t>(fours));
  for (int64_t q = 0; q < fours; ++q) four[q] = step[q / 16] + 4 * (q % 16);
  return four.data();
}

// ternary_rows_int8 for many inputs: the packed rows decoded, a block at a time, into the thread's
// scratch.
template <class Isa>
void rows_blocked(const uint32_t* planes, int64_t groups, Int8Weights w, const Int8Inputs& in, int64_t i0, int64_t i1,
                  int64_t r0, int64_t r1, const Int8Output& out) {
  thread_local std::vector<int8_t> blocked;
  thread_local std::vector<int32_t> offset;
  constexpr int64_t kLanes = Isa::kLanes;
  const int64_t row_bytes = (groups + 1) / 2 * 64, block_bytes = kLanes * row_bytes, fours = (in.k + 3) / 4;
  const int64_t* four = fours_of_steps(in.step, fours);
  rows_in_blocks<Isa>(
      [&](int64_t rb, int64_t re) {
        const int64_t padded = (re - rb + kLanes - 1) / kLanes * kLanes;
        blocked.resize(static_cast<size_t>(padded * row_bytes));
        offset.resize(static_cast<size_t>(padded));
        Isa::decode(planes + rb * groups * 2, groups, w, re - rb, blocked.data(), offset.data());
        multiply_blocked<Isa>(blocked.data(), offset.data(), block_bytes, four, fours, w, in, i0, i1, rb, re, out);
      },
      row_bytes, i0, i1, r0, r1);
}

// dense_rows_int8 for the blocked kernels: rows from r0, a multiple of Isa::kLanes.
template <class Isa>
void dense_rows_blocked(const DenseInt8Rows& rows, const Int8Inputs& in, int64_t i0, int64_t i1, int64_t r0,
                        int64_t r1, const Int8Output& out) {
  const int64_t block_bytes = Isa::kLanes * 4 * rows.fours;
  rows_in_blocks<Isa>(
      [&](int64_t rb, int64_t re) {
        multiply_blocked<Isa>(rows.blocked.data() + rb / Isa::kLanes * block_bytes, rows.offset.data() + rb,
                              block_bytes, in.four, rows.fours, kDenseStep, in, i0, i1, rb, re, out);
      },
      4 * rows.fours, i0, i1, r0, r1);
}

}  // namespace ttq::ops
