// The AVX-512 VNNI int8 kernel for many inputs (a convolution's pixels, a batch of rows), laid out as
// oneDNN's int8 convolutions are: a register holds 16 rows (output channels) of one input, and each
// vpdpbusd adds four of the input's bytes, broadcast, times those 16 rows' four weights. No register
// is ever summed across its lanes (a dot product a register costs one reduction per output, as many
// instructions as the products themselves at a 3x3 layer's 576 weights), and a pixel's channels are
// stored together. The rows' ternary codes are decoded for the call, a block of rows at a time, into
// the thread's scratch: 16 rows by 4 weights, 64 bytes, for each 4 weights of the row.
// GCC 12 warns about its own AVX-512 headers (_mm512_undefined_epi32 in the shuffles).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "core/ops/kernels_int8_blocked.h"

namespace ttq::ops {
namespace {

constexpr int kLanes = 16;  // rows a register holds
// A block meets 4 registers of rows (64) and 6 inputs: 24 accumulators, 4 rows' weights and a
// broadcast. 2 x 12 loads more broadcasts per product: 6-10% slower on Zen 4 (ResNet-18's layers).
constexpr int kRows = 4;
constexpr int kInputs = 6;

#define TTQ_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,fma,popcnt")))

// Sixteen registers of 16 dwords transposed: out[q] lane c = in[c] lane q. Unpacks within 128-bit
// lanes make u[4 g + m] hold, in lane L, rows 4g..4g+3 of dword 4L + m; two rounds of 128-bit
// shuffles gather each dword's four lanes.
TTQ_AVX512 void transpose16(__m512i* r) {
  __m512i t[16], u[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  for (int g = 0; g < 4; ++g) {
    u[4 * g] = _mm512_unpacklo_epi64(t[4 * g], t[4 * g + 2]);
    u[4 * g + 1] = _mm512_unpackhi_epi64(t[4 * g], t[4 * g + 2]);
    u[4 * g + 2] = _mm512_unpacklo_epi64(t[4 * g + 1], t[4 * g + 3]);
    u[4 * g + 3] = _mm512_unpackhi_epi64(t[4 * g + 1], t[4 * g + 3]);
  }
  for (int m = 0; m < 4; ++m) {
    const __m512i even_lo = _mm512_shuffle_i32x4(u[m], u[4 + m], 0x88);
    const __m512i odd_lo = _mm512_shuffle_i32x4(u[m], u[4 + m], 0xdd);
    const __m512i even_hi = _mm512_shuffle_i32x4(u[8 + m], u[12 + m], 0x88);
    const __m512i odd_hi = _mm512_shuffle_i32x4(u[8 + m], u[12 + m], 0xdd);
    r[m] = _mm512_shuffle_i32x4(even_lo, even_hi, 0x88);
    r[8 + m] = _mm512_shuffle_i32x4(even_lo, even_hi, 0xdd);
    r[4 + m] = _mm512_shuffle_i32x4(odd_lo, odd_hi, 0x88);
    r[12 + m] = _mm512_shuffle_i32x4(odd_lo, odd_hi, 0xdd);
  }
}

// `count` rows from p decoded to bytes (w.pos, 0, w.neg) into blocks of 16 rows: weight 4 q + t of
// the block's row c at blocked[(b · 16 · steps + q) · 64 + 4 c + t] for block b; rows past `count`
// are zero. offset[r]: the share of row r in the inputs' offset, 128 · Σ w (inputs are q + 128).
TTQ_AVX512 void decode_blocked(const uint32_t* p, int64_t groups, Int8Weights w, int64_t count, int8_t* blocked,
                               int32_t* offset) {
  const __m512i vp = _mm512_set1_epi8(w.pos), vn = _mm512_set1_epi8(w.neg);
  const int64_t steps = (groups + 1) / 2;
  for (int64_t b = 0; b * kLanes < count; ++b) {
    int64_t count_pos[kLanes] = {}, count_neg[kLanes] = {};
    for (int64_t j = 0; j < steps; ++j) {
      __m512i r[kLanes];
      for (int c = 0; c < kLanes; ++c) {
        const int64_t row = b * kLanes + c;
        if (row >= count) {
          r[c] = _mm512_setzero_si512();
          continue;
        }
        const uint32_t* g = p + row * groups * 2 + 4 * j;
        const bool pair = 2 * j + 1 < groups;
        const uint64_t pos = g[0] | (pair ? static_cast<uint64_t>(g[2]) << 32 : 0);
        const uint64_t neg = g[1] | (pair ? static_cast<uint64_t>(g[3]) << 32 : 0);
        count_pos[c] += __builtin_popcountll(pos), count_neg[c] += __builtin_popcountll(neg);
        r[c] = weight_bytes_avx512(pos, neg, vp, vn);
      }
      transpose16(r);
      int8_t* dst = blocked + (b * steps + j) * kLanes * 64;
      for (int q = 0; q < kLanes; ++q) _mm512_storeu_si512(dst + 64 * q, r[q]);
    }
    for (int c = 0; c < kLanes; ++c)
      offset[b * kLanes + c] = static_cast<int32_t>(128 * (w.pos * count_pos[c] + w.neg * count_neg[c]));
  }
}

// R blocks of 16 decoded rows (block_bytes apart) against N inputs into dot[(r · N + i) · 16 + c]:
// input i's four bytes at x[i] + four[q], broadcast, times each row's four weights q, summed from
// minus the row's offset (its share of the inputs' 128s: offset[r · 16 + c], padded to the block). Only the
// `fours` fours that hold the row's K are multiplied: a 1x1 layer of 24 channels is 6 of a step's 16.
template <int R, int N>
TTQ_AVX512 void block_products(const int8_t* rows, int64_t block_bytes, int64_t fours, const uint8_t* const* x,
                               const int64_t* four, const int32_t* offset, int32_t* dot) {
  __m512i acc[R][N];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
    const __m512i start = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_loadu_si512(offset + r * kLanes));
#pragma GCC unroll 12
    for (int i = 0; i < N; ++i) acc[r][i] = start;
  }
#pragma GCC unroll 4
  for (int64_t q = 0; q < fours; ++q) {
    __m512i wq[R];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) wq[r] = _mm512_loadu_si512(rows + r * block_bytes + 64 * q);
    const int64_t at = four[q];
#pragma GCC unroll 12
    for (int i = 0; i < N; ++i) {
      int32_t bytes;
      std::memcpy(&bytes, x[i] + at, 4);
      const __m512i b = _mm512_set1_epi32(bytes);
      // acc += b (unsigned) · wq (signed), in place (see kernels_int8.cpp: GCC 12 copies around
      // the intrinsic).
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r)
        asm("vpdpbusd %[w], %[b], %[acc]" : [acc] "+v"(acc[r][i]) : [b] "v"(b), [w] "v"(wq[r]));
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 12
    for (int i = 0; i < N; ++i) _mm512_storeu_si512(dot + (r * N + i) * kLanes, acc[r][i]);
}

template <int R>
void products_of(int n, const int8_t* rows, int64_t block_bytes, int64_t fours, const uint8_t* const* x,
                 const int64_t* four, const int32_t* offset, int32_t* dot) {
  switch (n) {
    case 12: return block_products<R, 12>(rows, block_bytes, fours, x, four, offset, dot);
    case 11: return block_products<R, 11>(rows, block_bytes, fours, x, four, offset, dot);
    case 10: return block_products<R, 10>(rows, block_bytes, fours, x, four, offset, dot);
    case 9: return block_products<R, 9>(rows, block_bytes, fours, x, four, offset, dot);
    case 8: return block_products<R, 8>(rows, block_bytes, fours, x, four, offset, dot);
    case 7: return block_products<R, 7>(rows, block_bytes, fours, x, four, offset, dot);
    case 6: return block_products<R, 6>(rows, block_bytes, fours, x, four, offset, dot);
    case 5: return block_products<R, 5>(rows, block_bytes, fours, x, four, offset, dot);
    case 4: return block_products<R, 4>(rows, block_bytes, fours, x, four, offset, dot);
    case 3: return block_products<R, 3>(rows, block_bytes, fours, x, four, offset, dot);
    case 2: return block_products<R, 2>(rows, block_bytes, fours, x, four, offset, dot);
    case 1: return block_products<R, 1>(rows, block_bytes, fours, x, four, offset, dot);
  }
}

// v / step clamped to [low, high] (±127, or tighter: Quotients) and rounded to the nearest integer,
// halves to even: rounded in the conversion, after the clamp, which gives the same integers as
// rounding first (the bounds are integers or nearer the quotients) for one instruction less than
// vrndscaleps before it (a NaN is `low` either way: vmaxps returns its second operand).
TTQ_AVX512 __attribute__((always_inline)) inline __m512i rounded_int8(__m512 v, float step, __m512 low, __m512 high) {
  const __m512 clamped = _mm512_min_ps(_mm512_max_ps(_mm512_div_ps(v, _mm512_set1_ps(step)), low), high);
  return _mm512_cvt_roundps_epi32(clamped, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}
TTQ_AVX512 __attribute__((always_inline)) inline __m512i rounded_int8(__m512 v, float step) {
  return rounded_int8(v, step, _mm512_set1_ps(-127.0f), _mm512_set1_ps(127.0f));
}

// A register's bounds on v / step for bytes out: the affine's floor and ceiling divided by step and
// held within ±127. Division by a positive step and rounding keep order, so clamping v / step to
// them gives the integers that clamping v to floor and ceiling first does, bit for bit: two
// instructions less per register of bytes stored.
struct Quotients {
  __m512 low, high;
};
TTQ_AVX512 Quotients quotients_of(__m512 floor, __m512 ceiling, float step) {
  const __m512 s = _mm512_set1_ps(step);
  return {_mm512_max_ps(_mm512_div_ps(floor, s), _mm512_set1_ps(-127.0f)),
          _mm512_min_ps(_mm512_div_ps(ceiling, s), _mm512_set1_ps(127.0f))};
}

// v quantized as quantize_int8_avx512 does (offset: the bytes between two layers), within `bounds`,
// into the valid lanes' places, `stride` apart.
TTQ_AVX512 void store_bytes(__m512 v, float step, const Quotients& bounds, __mmask16 mask, int64_t valid,
                            uint8_t* dst, int64_t stride) {
  const __m512i q = rounded_int8(v, step, bounds.low, bounds.high);
  if (stride == 1) {
    // Narrowed to signed bytes (within ±127: none saturates), + 128 by flipping their sign bits: an
    // operation on 16 bytes rather than on 16 dwords before narrowing. Narrowed in a register, then
    // stored: vpmovdb straight to memory is slow on Zen 4 and Intel alike.
    const __m128i narrow = _mm_xor_si128(_mm512_cvtsepi32_epi8(q), _mm_set1_epi8(static_cast<char>(0x80)));
    if (valid == kLanes) return _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), narrow);
    return _mm_mask_storeu_epi8(dst, mask, narrow);
  }
  const __m512i bytes = _mm512_add_epi32(q, _mm512_set1_epi32(128));
  alignas(64) int32_t lanes[kLanes];
  _mm512_store_si512(lanes, bytes);
  for (int64_t c = 0; c < valid; ++c) dst[c * stride] = static_cast<uint8_t>(lanes[c]);
}

// A register's rows' out_affine (kernels.h's Int8Output), `mask` its valid lanes, and the bounds
// its bytes are stored within (±127 without an affine).
struct Affine {
  __m512 scale, shift, floor, ceiling;
  Quotients bounds;
};
TTQ_AVX512 Affine affine_of(const Int8Output& out, int64_t r0, __mmask16 mask) {
  const __m512 none = _mm512_setzero_ps();
  const Quotients bytes{_mm512_set1_ps(-127.0f), _mm512_set1_ps(127.0f)};
  if (!out.scale) return {none, none, none, none, bytes};
  const __m512 floor = _mm512_maskz_loadu_ps(mask, out.floor + r0);
  const __m512 ceiling = _mm512_maskz_loadu_ps(mask, out.ceiling + r0);
  return {_mm512_maskz_loadu_ps(mask, out.scale + r0), _mm512_maskz_loadu_ps(mask, out.shift + r0), floor, ceiling,
          out.bytes ? quotients_of(floor, ceiling, out.byte_step) : bytes};
}

// The valid lanes' residuals, `stride` apart from r.
TTQ_AVX512 __m512 residual_register(const float* r, int64_t stride, __mmask16 mask, int64_t valid) {
  if (stride == 1) return _mm512_maskz_loadu_ps(mask, r);
  alignas(64) float lanes[kLanes] = {};
  for (int64_t c = 0; c < valid; ++c) lanes[c] = r[c * stride];
  return _mm512_load_ps(lanes);
}

// The valid lanes' residual bytes, `stride` apart from r, as the floats they stand for (q · step).
TTQ_AVX512 __m512 byte_residual_register(const uint8_t* r, int64_t stride, float step, __mmask16 mask, int64_t valid) {
  __m128i bytes;
  if (stride == 1) {
    bytes = _mm_maskz_loadu_epi8(mask, r);
  } else {
    alignas(16) uint8_t lanes[kLanes] = {};
    for (int64_t c = 0; c < valid; ++c) lanes[c] = r[c * stride];
    bytes = _mm_load_si128(reinterpret_cast<const __m128i*>(lanes));
  }
  const __m512i q = _mm512_sub_epi32(_mm512_cvtepu8_epi32(bytes), _mm512_set1_epi32(128));
  return _mm512_mul_ps(_mm512_cvtepi32_ps(q), _mm512_set1_ps(step));
}

// A register of input i's rows from r0 (`valid` of them, `mask`), d their sums less the offset, into
// `out` as kernels.h's Int8Output says: scale[i] · w.step · d, then the affine. The same float
// operations, in the same order, as the other kernels' stores.
TTQ_AVX512 __attribute__((always_inline)) inline void store_register(__m512 d, const Affine& a, float step,
                                                                     __mmask16 mask, int64_t valid, int64_t i,
                                                                     int64_t r0, const Int8Output& out) {
  __m512 v = _mm512_mul_ps(_mm512_set1_ps(step), d);
  const int64_t at = i * out.input_stride + r0 * out.row_stride;
  if (out.scale) {
    v = _mm512_add_ps(_mm512_mul_ps(a.scale, v), a.shift);
    if (out.residual) v = _mm512_add_ps(v, residual_register(out.residual + at, out.row_stride, mask, valid));
    if (out.residual_bytes)
      v = _mm512_add_ps(v, byte_residual_register(out.residual_bytes + at, out.row_stride, out.residual_step, mask, valid));
  }
  if (out.bytes) return store_bytes(v, out.byte_step, a.bounds, mask, valid, out.bytes + at, out.row_stride);
  if (out.scale) v = _mm512_min_ps(_mm512_max_ps(v, a.floor), a.ceiling);
  float* y = out.y + at;
  if (out.row_stride == 1) return _mm512_mask_storeu_ps(y, mask, v);
  alignas(64) float lanes[kLanes];
  _mm512_store_ps(lanes, v);
  for (int64_t c = 0; c < valid; ++c) y[c * out.row_stride] = lanes[c];
}

// The outputs between two int8 layers: bytes, channels-last, an affine and no residual
// (chained_output). store_register's operations in its order, the same bits, for a caller that holds
// what they read in locals: store_register reloads out's fields and tests them again at every
// register (a store through a pointer may change them), which under perf outweighed the 4 to 8
// products behind each register of MobileNetV2's narrow layers (their 1x1 layers 1.2-1.3x faster
// so, `scripts/bench_layers.sh`; its depthwise layers, bound by their taps' sums, not).
inline bool chained_output(const Int8Output& out) {
  return out.bytes && out.scale && !out.residual && !out.residual_bytes && out.row_stride == 1;
}
TTQ_AVX512 __attribute__((always_inline)) inline void store_chained(__m512 d, const Affine& a, float step,
                                                                    __mmask16 mask, int64_t valid, float byte_step,
                                                                    uint8_t* dst) {
  __m512 v = _mm512_mul_ps(_mm512_set1_ps(step), d);
  v = _mm512_add_ps(_mm512_mul_ps(a.scale, v), a.shift);
  store_bytes(v, byte_step, a.bounds, mask, valid, dst, 1);
}

// Each register of rows [r, r + here) for inputs [0, n) from dot (block_products' layout, `blocks`
// blocks, the rows' offsets already out), as float32, handed to store(value, affine, i, r0, mask,
// valid).
template <class Store>
TTQ_AVX512 __attribute__((always_inline)) inline void each_register(const int32_t* dot, int blocks, int n,
                                                                    int64_t r, int64_t here, const Int8Output& out,
                                                                    Store store) {
  for (int b = 0; b < blocks; ++b) {
    const int64_t r0 = r + b * kLanes, valid = std::min<int64_t>(kLanes, r + here - r0);
    const __mmask16 mask = static_cast<__mmask16>((1u << valid) - 1);
    const Affine a = affine_of(out, r0, mask);
    for (int i = 0; i < n; ++i)
      store(_mm512_cvtepi32_ps(_mm512_loadu_si512(dot + (b * n + i) * kLanes)), a, i, r0, mask, valid);
  }
}

// Rows [r, r + here) of inputs [ib, ib + n) from dot into `out` (store_register; store_chained,
// its fields copied into the closure, where chained_output).
TTQ_AVX512 void store_blocked(const int32_t* dot, int blocks, int n, const Int8Inputs& in, Int8Weights w,
                              int64_t r, int64_t here, int64_t ib, const Int8Output& out) {
  const float* const input_step = in.scale + ib;
  const float weight_step = w.step;
  if (chained_output(out)) {
    uint8_t* const bytes = out.bytes + ib * out.input_stride;
    const int64_t input_stride = out.input_stride;
    const float byte_step = out.byte_step;
    return each_register(dot, blocks, n, r, here, out,
                         [=](__m512 d, const Affine& a, int i, int64_t r0, __mmask16 mask, int64_t valid) TTQ_AVX512 {
                           store_chained(d, a, input_step[i] * weight_step, mask, valid, byte_step,
                                         bytes + i * input_stride + r0);
                         });
  }
  each_register(dot, blocks, n, r, here, out,
                [&](__m512 d, const Affine& a, int i, int64_t r0, __mmask16 mask, int64_t valid) TTQ_AVX512 {
                  store_register(d, a, input_step[i] * weight_step, mask, valid, ib + i, r0, out);
                });
}

// The AVX-512 kernels for rows_blocked.
struct Avx512 {
  static constexpr int kLanes = 16, kBlockRows = kRows, kBlockInputs = kInputs;
  static void decode(const uint32_t* p, int64_t groups, Int8Weights w, int64_t count, int8_t* blocked,
                     int32_t* offset) {
    decode_blocked(p, groups, w, count, blocked, offset);
  }
  static void products(int registers, int n, const int8_t* rows, int64_t block_bytes, int64_t fours,
                       const uint8_t* const* x, const int64_t* four, const int32_t* offset, int32_t* dot) {
    if (registers == 4) return products_of<4>(n, rows, block_bytes, fours, x, four, offset, dot);
    if (registers == 3) return products_of<3>(n, rows, block_bytes, fours, x, four, offset, dot);
    if (registers == 2) return products_of<2>(n, rows, block_bytes, fours, x, four, offset, dot);
    products_of<1>(n, rows, block_bytes, fours, x, four, offset, dot);
  }
  static constexpr auto store = store_blocked;
};

// start + Σ_t q(x + tap[t]) · w_t for 16 channels from x (`mask`; all 16 where `full`), in int32: each
// tap's bytes widened to dwords (high words zero) meet its weights' dwords in vpdpwssd, whose product
// of the high words is then 0, one instruction a tap after the load; three partial sums, so that
// three products are in flight rather than one chain of nine. `held`: the taps' weights where
// kTaps > 0, else read from `weights` (`rows` a tap).
template <int kTaps>
TTQ_AVX512 __attribute__((always_inline)) inline __m512i tap_sums(const uint8_t* x, const int64_t* tap, int64_t n,
                                                                   const __m512i* held, const float* weights,
                                                                   int64_t rows, __mmask16 mask, bool full,
                                                                   __m512i start) {
  __m512i acc[3] = {start, _mm512_setzero_si512(), _mm512_setzero_si512()};
#pragma GCC unroll 9
  for (int64_t t = 0; t < n; ++t) {
    const __m512i q = _mm512_cvtepu8_epi32(full ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(x + tap[t]))
                                                : _mm_maskz_loadu_epi8(mask, x + tap[t]));
    const __m512i wt =
        kTaps > 0 ? held[kTaps > 0 ? t : 0] : _mm512_cvtps_epi32(_mm512_maskz_loadu_ps(mask, weights + t * rows));
    // acc += q · wt in place (see block_products: GCC 12 copies around the intrinsic).
    asm("vpdpwssd %[w], %[q], %[acc]" : [acc] "+v"(acc[t % 3]) : [q] "v"(q), [w] "v"(wt));
  }
  return _mm512_add_epi32(_mm512_add_epi32(acc[0], acc[1]), acc[2]);
}

// A register of channels from c (`mask`) of a depthwise layer for inputs [i0, i1), two at a time:
// tap_sums from minus the inputs' offset, 128 · Σ w, as float32 (exact: kernels_int8_depthwise.cpp).
// kTaps > 0: that many taps, their weights kept in registers (3x3: 9); else `taps`.
template <int kTaps>
TTQ_AVX512 void depthwise_register(const float* weights, int64_t rows, const int64_t* tap, int64_t taps,
                                   const Int8Inputs& in, Int8Weights w, int64_t i0, int64_t i1, int64_t r0, int64_t c,
                                   const Int8Output& out) {
  const int64_t valid = std::min<int64_t>(kLanes, rows - c), n = kTaps > 0 ? kTaps : taps;
  const __mmask16 mask = static_cast<__mmask16>((1u << valid) - 1);
  const bool full = valid == kLanes;
  __m512i held[kTaps > 0 ? kTaps : 1];
  __m512i offset = _mm512_setzero_si512();
  for (int64_t t = 0; t < n; ++t) {
    const __m512i wt = _mm512_cvtps_epi32(_mm512_maskz_loadu_ps(mask, weights + t * rows + c));
    if constexpr (kTaps > 0) held[t] = wt;
    offset = _mm512_add_epi32(offset, wt);
  }
  offset = _mm512_slli_epi32(offset, 7);
  const Affine a = affine_of(out, r0 + c, mask);
  const uint8_t* x = in.data + r0 + c;
  const __m512i start = _mm512_sub_epi32(_mm512_setzero_si512(), offset);
  int64_t i = i0;
  for (; i + 1 < i1; i += 2) {
    const __m512 first =
        _mm512_cvtepi32_ps(tap_sums<kTaps>(x + in.row[i], tap, n, held, weights + c, rows, mask, full, start));
    const __m512 second =
        _mm512_cvtepi32_ps(tap_sums<kTaps>(x + in.row[i + 1], tap, n, held, weights + c, rows, mask, full, start));
    store_register(first, a, in.scale[i] * w.step, mask, valid, i, r0 + c, out);
    store_register(second, a, in.scale[i + 1] * w.step, mask, valid, i + 1, r0 + c, out);
  }
  if (i < i1) {
    const __m512 last =
        _mm512_cvtepi32_ps(tap_sums<kTaps>(x + in.row[i], tap, n, held, weights + c, rows, mask, full, start));
    store_register(last, a, in.scale[i] * w.step, mask, valid, i, r0 + c, out);
  }
}

}  // namespace

// 16 values a step: divided (as the other paths, not multiplied by a reciprocal: the same bytes),
// clamped, rounded to nearest even (rounded_int8), narrowed and offset (as store_bytes).
TTQ_AVX512 void quantize_int8_avx512(const float* x, int64_t count, float scale, bool offset, uint8_t* dst) {
  const __m128i flip = _mm_set1_epi8(static_cast<char>(offset ? 0x80 : 0));
  for (int64_t j = 0; j < count; j += kLanes) {
    const __mmask16 mask = count - j >= kLanes ? __mmask16(0xffff) : static_cast<__mmask16>((1u << (count - j)) - 1);
    const __m512i q = rounded_int8(_mm512_maskz_loadu_ps(mask, x + j), scale);
    _mm_mask_storeu_epi8(dst + j, mask, _mm_xor_si128(_mm512_cvtsepi32_epi8(q), flip));
  }
}

void ternary_rows_int8_blocked(const uint32_t* planes, int64_t groups, Int8Weights w, const Int8Inputs& in,
                               int64_t i0, int64_t i1, int64_t r0, int64_t r1, const Int8Output& out) {
  rows_blocked<Avx512>(planes, groups, w, in, i0, i1, r0, r1, out);
}

// depthwise_rows_int8 on AVX-512: 16 channels a register, pixel by pixel, in depthwise_tiles.
void depthwise_avx512(const float* weights, const int64_t* tap, int64_t taps, const Int8Inputs& in, Int8Weights w,
                      int64_t i0, int64_t i1, int64_t r0, int64_t r1, const Int8Output& out) {
  depthwise_tiles(kLanes, i0, i1, r1 - r0, [&](int64_t ib, int64_t ie, int64_t c) {
    if (taps == 9) return depthwise_register<9>(weights, r1 - r0, tap, taps, in, w, ib, ie, r0, c, out);
    depthwise_register<0>(weights, r1 - r0, tap, taps, in, w, ib, ie, r0, c, out);
  });
}

void dense_rows_int8_avx512(const DenseInt8Rows& rows, const Int8Inputs& in, int64_t i0, int64_t i1, int64_t r0,
                            int64_t r1, const Int8Output& out) {
  dense_rows_blocked<Avx512>(rows, in, i0, i1, r0, r1, out);
}

}  // namespace ttq::ops
