// The AVX2 int8 kernel for many inputs, laid out as the AVX-512 one (kernels_int8_blocked.cpp): a
// register holds 8 rows (output channels) of one input, and four of the input's bytes, broadcast,
// meet those 8 rows' four weights. AVX2 has no vpdpbusd: maddubs multiplies |w| (unsigned) by q
// carrying w's sign and sums pairs (at most 2 · 127 · 127, no saturation), madd sums those into
// int32 lanes (as llama.cpp's q8 dots). The inputs are signed (no offset, int8_offset).
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "core/ops/kernels_int8_blocked.h"

namespace ttq::ops {
namespace {

#define TTQ_AVX2 __attribute__((target("avx2,fma")))

constexpr int kLanes = 8;   // rows a register holds
constexpr int kRows = 2;    // registers of rows a block meets: 16 rows
constexpr int kInputs = 4;  // inputs a block meets: 8 accumulators, 2 rows' weights and magnitudes

// Eight registers of 8 dwords transposed: out[q] lane c = in[c] lane q.
TTQ_AVX2 void transpose8(__m256i* r) {
  __m256i t[8], u[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  for (int g = 0; g < 2; ++g) {  // u[4 g + m], 128-bit lane L: rows 4g..4g+3 of dword 4L + m
    u[4 * g] = _mm256_unpacklo_epi64(t[4 * g], t[4 * g + 2]);
    u[4 * g + 1] = _mm256_unpackhi_epi64(t[4 * g], t[4 * g + 2]);
    u[4 * g + 2] = _mm256_unpacklo_epi64(t[4 * g + 1], t[4 * g + 3]);
    u[4 * g + 3] = _mm256_unpackhi_epi64(t[4 * g + 1], t[4 * g + 3]);
  }
  for (int m = 0; m < 4; ++m) {
    r[m] = _mm256_permute2x128_si256(u[m], u[4 + m], 0x20);
    r[4 + m] = _mm256_permute2x128_si256(u[m], u[4 + m], 0x31);
  }
}

// `count` rows from p decoded into blocks of 8 rows, 32 bytes a four: weight 4 q + t of the block's
// row c at blocked[(b · 16 · steps + q) · 32 + 4 c + t]; rows past `count` and groups past the
// last are zero. Signed inputs: no offset share.
TTQ_AVX2 void decode(const uint32_t* p, int64_t groups, Int8Weights w, int64_t count, int8_t* blocked,
                     int32_t* offset) {
  const __m256i vp = _mm256_set1_epi8(w.pos), vn = _mm256_set1_epi8(w.neg);
  const int64_t steps = (groups + 1) / 2;
  for (int64_t b = 0; b * kLanes < count; ++b) {
    for (int64_t g = 0; g < 2 * steps; ++g) {
      __m256i r[kLanes];
      for (int c = 0; c < kLanes; ++c) {
        const int64_t row = b * kLanes + c;
        r[c] = row < count && g < groups ? weight_bytes_avx2(p + row * groups * 2 + 2 * g, vp, vn)
                                         : _mm256_setzero_si256();
      }
      transpose8(r);
      int8_t* dst = blocked + (b * steps * 16 + 8 * g) * 32;
      for (int q = 0; q < kLanes; ++q) _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 32 * q), r[q]);
    }
    for (int c = 0; c < kLanes; ++c) offset[b * kLanes + c] = 0;
  }
}

// R blocks of 8 decoded rows (block_bytes apart) against N inputs into dot[(r · N + i) · 8 + c], the
// `fours` fours K holds, input i's four bytes q at x[i] + four[q].
template <int R, int N>
TTQ_AVX2 void block_products(const int8_t* rows, int64_t block_bytes, int64_t fours, const uint8_t* const* x,
                             const int64_t* four, int32_t* dot) {
  const __m256i ones16 = _mm256_set1_epi16(1);
  __m256i acc[R][N];
  for (int r = 0; r < R; ++r)
    for (int i = 0; i < N; ++i) acc[r][i] = _mm256_setzero_si256();
  for (int64_t q = 0; q < fours; ++q) {
    __m256i wq[R], magnitude[R];
    for (int r = 0; r < R; ++r) {
      wq[r] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows + r * block_bytes + 32 * q));
      magnitude[r] = _mm256_sign_epi8(wq[r], wq[r]);
    }
    const int64_t at = four[q];
    for (int i = 0; i < N; ++i) {
      int32_t bytes;
      std::memcpy(&bytes, x[i] + at, 4);
      const __m256i b = _mm256_set1_epi32(bytes);
      for (int r = 0; r < R; ++r)
        acc[r][i] = _mm256_add_epi32(
            acc[r][i], _mm256_madd_epi16(_mm256_maddubs_epi16(magnitude[r], _mm256_sign_epi8(b, wq[r])), ones16));
    }
  }
  for (int r = 0; r < R; ++r)
    for (int i = 0; i < N; ++i) _mm256_storeu_si256(reinterpret_cast<__m256i*>(dot + (r * N + i) * kLanes), acc[r][i]);
}

template <int R>
void products_of(int n, const int8_t* rows, int64_t block_bytes, int64_t fours, const uint8_t* const* x,
                 const int64_t* four, int32_t* dot) {
  switch (n) {
    case 4: return block_products<R, 4>(rows, block_bytes, fours, x, four, dot);
    case 3: return block_products<R, 3>(rows, block_bytes, fours, x, four, dot);
    case 2: return block_products<R, 2>(rows, block_bytes, fours, x, four, dot);
    case 1: return block_products<R, 1>(rows, block_bytes, fours, x, four, dot);
  }
}

// As the AVX-512 Quotients (kernels_int8_blocked.cpp): the bounds on v / step for bytes out.
struct Quotients {
  __m256 low, high;
};
TTQ_AVX2 Quotients quotients_of(__m256 floor, __m256 ceiling, float step) {
  const __m256 s = _mm256_set1_ps(step);
  return {_mm256_max_ps(_mm256_div_ps(floor, s), _mm256_set1_ps(-127.0f)),
          _mm256_min_ps(_mm256_div_ps(ceiling, s), _mm256_set1_ps(127.0f))};
}

// v quantized as quantize_int8 does (offset: the bytes between two layers), within `bounds`, into
// the valid lanes' places, `stride` apart: clamped, then rounded (the same integers as rounding
// first: the AVX-512 rounded_int8).
TTQ_AVX2 void store_bytes(__m256 v, float step, const Quotients& bounds, int64_t valid, uint8_t* dst, int64_t stride) {
  const __m256 q = _mm256_min_ps(_mm256_max_ps(_mm256_div_ps(v, _mm256_set1_ps(step)), bounds.low), bounds.high);
  const __m256 rounded = _mm256_round_ps(q, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256i bytes = _mm256_add_epi32(_mm256_cvtps_epi32(rounded), _mm256_set1_epi32(128));
  // Narrowed to 8 bytes (each in 1..255: no saturation).
  const __m128i words = _mm_packus_epi32(_mm256_castsi256_si128(bytes), _mm256_extracti128_si256(bytes, 1));
  alignas(16) uint8_t lanes[16];
  _mm_store_si128(reinterpret_cast<__m128i*>(lanes), _mm_packus_epi16(words, words));
  if (stride == 1 && valid == kLanes) {
    std::memcpy(dst, lanes, kLanes);
    return;
  }
  for (int64_t c = 0; c < valid; ++c) dst[c * stride] = lanes[c];
}

// The valid lanes' residuals (`mask`), `stride` apart from r.
TTQ_AVX2 __m256 residual_register(const float* r, int64_t stride, __m256i mask, int64_t valid) {
  if (stride == 1) return _mm256_maskload_ps(r, mask);
  alignas(32) float lanes[kLanes] = {};
  for (int64_t c = 0; c < valid; ++c) lanes[c] = r[c * stride];
  return _mm256_load_ps(lanes);
}

// The valid lanes' residual bytes, `stride` apart from r, as the floats they stand for (q · step).
TTQ_AVX2 __m256 byte_residual_register(const uint8_t* r, int64_t stride, float step, int64_t valid) {
  __m128i bytes;
  if (stride == 1 && valid == kLanes) {
    bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(r));
  } else {
    alignas(16) uint8_t lanes[16] = {};
    for (int64_t c = 0; c < valid; ++c) lanes[c] = r[c * stride];
    bytes = _mm_load_si128(reinterpret_cast<const __m128i*>(lanes));
  }
  const __m256i q = _mm256_sub_epi32(_mm256_cvtepu8_epi32(bytes), _mm256_set1_epi32(128));
  return _mm256_mul_ps(_mm256_cvtepi32_ps(q), _mm256_set1_ps(step));
}

// A register's rows' out_affine (kernels.h's Int8Output), `mask` its valid lanes, and the bounds
// its bytes are stored within (±127 without an affine).
struct Affine {
  __m256 scale, shift, floor, ceiling;
  Quotients bounds;
};
TTQ_AVX2 Affine affine_of(const Int8Output& out, int64_t r0, __m256i mask) {
  const __m256 none = _mm256_setzero_ps();
  const Quotients bytes{_mm256_set1_ps(-127.0f), _mm256_set1_ps(127.0f)};
  if (!out.scale) return {none, none, none, none, bytes};
  const __m256 floor = _mm256_maskload_ps(out.floor + r0, mask), ceiling = _mm256_maskload_ps(out.ceiling + r0, mask);
  return {_mm256_maskload_ps(out.scale + r0, mask), _mm256_maskload_ps(out.shift + r0, mask), floor, ceiling,
          out.bytes ? quotients_of(floor, ceiling, out.byte_step) : bytes};
}

// The lanes below `valid` set.
TTQ_AVX2 __m256i lanes_below(int64_t valid) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(valid)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// As the AVX-512 store_register (kernels_int8_blocked.cpp), 8 rows a register: the same float
// operations in the same order as the portable kernels' stores.
TTQ_AVX2 __attribute__((always_inline)) inline void store_register(__m256 d, const Affine& a, float step, __m256i mask,
                                                                   int64_t valid, int64_t i, int64_t r0,
                                                                   const Int8Output& out) {
  __m256 v = _mm256_mul_ps(_mm256_set1_ps(step), d);
  const int64_t at = i * out.input_stride + r0 * out.row_stride;
  if (out.scale) {
    v = _mm256_add_ps(_mm256_mul_ps(a.scale, v), a.shift);
    if (out.residual) v = _mm256_add_ps(v, residual_register(out.residual + at, out.row_stride, mask, valid));
    if (out.residual_bytes)
      v = _mm256_add_ps(v, byte_residual_register(out.residual_bytes + at, out.row_stride, out.residual_step, valid));
  }
  if (out.bytes) return store_bytes(v, out.byte_step, a.bounds, valid, out.bytes + at, out.row_stride);
  if (out.scale) v = _mm256_min_ps(_mm256_max_ps(v, a.floor), a.ceiling);
  float* y = out.y + at;
  if (out.row_stride == 1) return _mm256_maskstore_ps(y, mask, v);
  alignas(32) float lanes[kLanes];
  _mm256_store_ps(lanes, v);
  for (int64_t c = 0; c < valid; ++c) y[c * out.row_stride] = lanes[c];
}

// Rows [r, r + here) of inputs [ib, ib + n) from dot (block_products' layout, `blocks` blocks) into
// `out` (store_register).
TTQ_AVX2 void store(const int32_t* dot, int blocks, int n, const Int8Inputs& in, Int8Weights w,
                    int64_t r, int64_t here, int64_t ib, const Int8Output& out) {
  for (int b = 0; b < blocks; ++b) {
    const int64_t r0 = r + b * kLanes, valid = std::min<int64_t>(kLanes, r + here - r0);
    const __m256i mask = lanes_below(valid);
    const Affine a = affine_of(out, r0, mask);
    for (int i = 0; i < n; ++i) {
      const __m256i d = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(dot + (b * n + i) * kLanes));
      store_register(_mm256_cvtepi32_ps(d), a, in.scale[ib + i] * w.step, mask, valid, ib + i, r0, out);
    }
  }
}

// `valid` (at most 8) signed bytes from x as float32 lanes, zero past them.
TTQ_AVX2 __attribute__((always_inline)) inline __m256 byte_lanes(const uint8_t* x, int64_t valid) {
  __m128i bytes;
  if (valid == kLanes) {
    bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(x));
  } else {  // the last channels: no read past them
    alignas(16) uint8_t lanes[16] = {};
    std::memcpy(lanes, x, static_cast<size_t>(valid));
    bytes = _mm_load_si128(reinterpret_cast<const __m128i*>(lanes));
  }
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
}

// Σ_t q(x + tap[t]) · w_t for 8 channels, signed inputs, in float32 (exact integers:
// kernels_int8_depthwise.cpp), in three partial sums as the AVX-512 tap_sums (kernels_int8_blocked.cpp).
template <int kTaps>
TTQ_AVX2 __attribute__((always_inline)) inline __m256 tap_sums(const uint8_t* x, const int64_t* tap, int64_t n,
                                                                const __m256* held, const float* weights,
                                                                int64_t rows, int64_t valid, __m256i mask) {
  __m256 acc[3] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
#pragma GCC unroll 9
  for (int64_t t = 0; t < n; ++t) {
    const __m256 q = byte_lanes(x + tap[t], valid);
    const __m256 wt = kTaps > 0 ? held[kTaps > 0 ? t : 0] : _mm256_maskload_ps(weights + t * rows, mask);
    acc[t % 3] = _mm256_fmadd_ps(q, wt, acc[t % 3]);
  }
  return _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), acc[2]);
}

// As the AVX-512 depthwise_register, a register of 8 channels from c for inputs [i0, i1).
template <int kTaps>
TTQ_AVX2 void depthwise_register(const float* weights, int64_t rows, const int64_t* tap, int64_t taps,
                                 const Int8Inputs& in, Int8Weights w, int64_t i0, int64_t i1, int64_t r0, int64_t c,
                                 const Int8Output& out) {
  const int64_t valid = std::min<int64_t>(kLanes, rows - c), n = kTaps > 0 ? kTaps : taps;
  const __m256i mask = lanes_below(valid);
  __m256 held[kTaps > 0 ? kTaps : 1];
  if constexpr (kTaps > 0)
    for (int64_t t = 0; t < n; ++t) held[t] = _mm256_maskload_ps(weights + t * rows + c, mask);
  const Affine a = affine_of(out, r0 + c, mask);
  const uint8_t* x = in.data + r0 + c;
  for (int64_t i = i0; i < i1; ++i) {
    const __m256 sums = tap_sums<kTaps>(x + in.row[i], tap, n, held, weights + c, rows, valid, mask);
    store_register(sums, a, in.scale[i] * w.step, mask, valid, i, r0 + c, out);
  }
}

// The AVX2 kernels for rows_blocked.
struct Avx2 {
  static constexpr int kLanes = ::ttq::ops::kLanes, kBlockRows = kRows, kBlockInputs = kInputs;
  static constexpr auto decode = ::ttq::ops::decode;
  static void products(int registers, int n, const int8_t* rows, int64_t block_bytes, int64_t fours,
                       const uint8_t* const* x, const int64_t* four, const int32_t*, int32_t* dot) {  // no offset
    if (registers == 2) return products_of<2>(n, rows, block_bytes, fours, x, four, dot);
    products_of<1>(n, rows, block_bytes, fours, x, four, dot);
  }
  static constexpr auto store = ::ttq::ops::store;
};

}  // namespace

void ternary_rows_int8_blocked_avx2(const uint32_t* planes, int64_t groups, Int8Weights w, const Int8Inputs& in,
                                    int64_t i0, int64_t i1, int64_t r0, int64_t r1, const Int8Output& out) {
  rows_blocked<Avx2>(planes, groups, w, in, i0, i1, r0, r1, out);
}

// depthwise_rows_int8 on AVX2, as on AVX-512 (depthwise_avx512), 8 channels a register.
void depthwise_avx2(const float* weights, const int64_t* tap, int64_t taps, const Int8Inputs& in, Int8Weights w,
                    int64_t i0, int64_t i1, int64_t r0, int64_t r1, const Int8Output& out) {
  depthwise_tiles(kLanes, i0, i1, r1 - r0, [&](int64_t ib, int64_t ie, int64_t c) {
    if (taps == 9) return depthwise_register<9>(weights, r1 - r0, tap, taps, in, w, ib, ie, r0, c, out);
    depthwise_register<0>(weights, r1 - r0, tap, taps, in, w, ib, ie, r0, c, out);
  });
}

void dense_rows_int8_avx2(const DenseInt8Rows& rows, const Int8Inputs& in, int64_t i0, int64_t i1, int64_t r0,
                          int64_t r1, const Int8Output& out) {
  dense_rows_blocked<Avx2>(rows, in, i0, i1, r0, r1, out);
}

}  // namespace ttq::ops
