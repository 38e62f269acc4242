// The int8 kernels behind ttq::linear_int8 and ttq::conv2d_int8 (see kernels.h). The inputs arrive
// as int8 and the row's weights become int8 bytes {+p, 0, -n} (Int8Weights), so one integer product
// per weight computes the row, exactly in int32: one vpdpbusd does 64 of them.
// GCC 12 warns about its own AVX-512 headers (_mm512_undefined_epi32 in the reductions).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/ops/kernels_int8_blocked.h"

namespace ttq::ops {
namespace {

// Rows meet inputs in blocks of up to kMaxInputs inputs (rows_int8 below): a row's weights are
// expanded to bytes once per step and serve every input of the block, and a block of inputs (L1)
// meets many rows per load. Where the inputs outweigh the rows, the rows come kRowBlock at a time.
constexpr int64_t kRowBlock = 16;
constexpr int kMaxInputs = 8;

// Σ_k w[r, k] · q[i, k] for `count` <= kRowsAtOnce consecutive packed rows from p and n <=
// kMaxInputs inputs (x[i]: where input i's bytes start; step: Int8Inputs::step), into
// dot[r * kMaxInputs + i].
constexpr int kRowsAtOnce = 2;
using BlockDots = void (*)(const uint32_t* p, int64_t groups, int count, Int8Weights w, const uint8_t* const* x,
                           const int64_t* step, int n, int32_t* dot);

// The same for one row, by the kernels that take rows one at a time.
template <void (*row_dots)(const uint32_t*, int64_t, Int8Weights, const uint8_t* const*, const int64_t*, int, int32_t*)>
void each_row(const uint32_t* p, int64_t groups, int count, Int8Weights w, const uint8_t* const* x,
              const int64_t* step, int n, int32_t* dot) {
  for (int r = 0; r < count; ++r) row_dots(p + r * groups * 2, groups, w, x, step, n, dot + r * kMaxInputs);
}

// Where group g's 32 bytes start within an input.
inline int64_t group_at(const int64_t* step, int64_t g) { return step[g / 2] + 32 * (g % 2); }

void row_portable(const uint32_t* p, int64_t groups, Int8Weights w, const uint8_t* const* x, const int64_t* step,
                  int n, int32_t* dot) {
  for (int i = 0; i < n; ++i) {
    const auto* qi = reinterpret_cast<const int8_t*>(x[i]);
    int32_t sp = 0, sn = 0;
    for (int64_t g = 0; g < groups; ++g) {
      const int8_t* q = qi + group_at(step, g);
      for (uint32_t m = p[2 * g]; m; m &= m - 1) sp += q[__builtin_ctz(m)];
      for (uint32_t m = p[2 * g + 1]; m; m &= m - 1) sn += q[__builtin_ctz(m)];
    }
    dot[i] = w.pos * sp + w.neg * sn;
  }
}

__attribute__((target("avx2"))) int32_t sum8_epi32(__m256i v) {
  const __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  const __m128i t = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
  return _mm_cvtsi128_si32(_mm_add_epi32(t, _mm_shuffle_epi32(t, _MM_SHUFFLE(2, 3, 0, 1))));
}

// AVX2 (as llama.cpp's q8 dots): maddubs multiplies |w| (unsigned) by q carrying w's sign and sums
// pairs (at most 2 · 127 · 127, no saturation); madd sums those into int32 lanes.
__attribute__((target("avx2"), always_inline)) inline __m256i dot32_avx2(__m256i magnitude, __m256i wb, __m256i q, __m256i ones16) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(q, wb)), ones16);
}

// Four inputs a block, the row's bytes made from its planes for each block.
template <int N>
__attribute__((target("avx2"))) void block_avx2(const uint32_t* p, int64_t groups, Int8Weights w,
                                                const uint8_t* const* x, const int64_t* step, int32_t* dot) {
  const __m256i ones16 = _mm256_set1_epi16(1), vp = _mm256_set1_epi8(w.pos), vn = _mm256_set1_epi8(w.neg);
  __m256i acc[N];
  for (int i = 0; i < N; ++i) acc[i] = _mm256_setzero_si256();
  for (int64_t g = 0; g < groups; ++g) {
    if ((p[2 * g] | p[2 * g + 1]) == 0) continue;
    const __m256i wb = weight_bytes_avx2(p + 2 * g, vp, vn);
    const __m256i magnitude = _mm256_sign_epi8(wb, wb);
    const int64_t at = group_at(step, g);
    for (int i = 0; i < N; ++i) {
      const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[i] + at));
      acc[i] = _mm256_add_epi32(acc[i], dot32_avx2(magnitude, wb, q, ones16));
    }
  }
  for (int i = 0; i < N; ++i) dot[i] = sum8_epi32(acc[i]);
}

void row_avx2(const uint32_t* p, int64_t groups, Int8Weights w, const uint8_t* const* x, const int64_t* step, int n,
              int32_t* dot) {
  for (; n >= 4; n -= 4, x += 4, dot += 4) block_avx2<4>(p, groups, w, x, step, dot);
  switch (n) {
    case 3: return block_avx2<3>(p, groups, w, x, step, dot);
    case 2: return block_avx2<2>(p, groups, w, x, step, dot);
    case 1: return block_avx2<1>(p, groups, w, x, step, dot);
  }
}

// AVX-512 VNNI: vpdpbusd multiplies unsigned by signed bytes, so the inputs arrive offset to
// unsigned (q + 128, int8_offset) and the offset's share, 128 · Σ w, comes off at the end.
// Two groups (64 weights) a step; R rows and N inputs a block, each input loaded once for the R rows
// (on Zen 4 a 512-bit load costs as much as a vpdpbusd).
template <int R, int N>
__attribute__((target("avx512f,avx512bw,avx512vnni"), always_inline)) inline void step_avx512(
    __m512i (*acc)[N], const uint64_t* pos, const uint64_t* neg, __m512i vp, __m512i vn, const uint8_t* const* x,
    int64_t at) {
  __m512i wb[R];
#pragma GCC unroll 2
  for (int r = 0; r < R; ++r) wb[r] = weight_bytes_avx512(pos[r], neg[r], vp, vn);
  // acc += q (unsigned) · wb (signed), in place: GCC 12 copies the accumulator around the intrinsic
  // (_mm512_dpbusd_epi32), two extra moves per product.
#pragma GCC unroll 8
  for (int i = 0; i < N; ++i) {
    const __m512i q = _mm512_loadu_si512(x[i] + at);
#pragma GCC unroll 2
    for (int r = 0; r < R; ++r) asm("vpdpbusd %[w], %[q], %[acc]" : [acc] "+v"(acc[r][i]) : [q] "v"(q), [w] "v"(wb[r]));
  }
}

template <int R, int N>
__attribute__((target("avx512f,avx512bw,avx512vnni,popcnt"))) void block_avx512(const uint32_t* p, int64_t groups,
                                                                                Int8Weights w, const uint8_t* const* x,
                                                                                const int64_t* step, int32_t* dot) {
  const __m512i vp = _mm512_set1_epi8(w.pos), vn = _mm512_set1_epi8(w.neg);
  __m512i acc[R][N];
#pragma GCC unroll 2
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int i = 0; i < N; ++i) acc[r][i] = _mm512_setzero_si512();
  int64_t count_pos[R] = {}, count_neg[R] = {};
  uint64_t pos[R], neg[R];
  const int64_t pairs = groups / 2;
  for (int64_t j = 0; j < pairs; ++j) {
#pragma GCC unroll 2
    for (int r = 0; r < R; ++r) {  // two groups: pos0 neg0 pos1 neg1 -> 64-bit planes
      const uint32_t* g = p + r * groups * 2 + 4 * j;
      // The codes stream from memory once per call and the CPU's prefetcher falls behind at few
      // inputs: ask for the codes two blocks of rows ahead, at the same place.
      if (j % 4 == 0) _mm_prefetch(reinterpret_cast<const char*>(g + 2 * R * groups * 2), _MM_HINT_T0);
      pos[r] = g[0] | static_cast<uint64_t>(g[2]) << 32, neg[r] = g[1] | static_cast<uint64_t>(g[3]) << 32;
      count_pos[r] += __builtin_popcountll(pos[r]), count_neg[r] += __builtin_popcountll(neg[r]);
    }
    step_avx512<R, N>(acc, pos, neg, vp, vn, x, step[j]);
  }
  if (groups % 2) {  // the last group alone: the bytes past it meet zero weights
#pragma GCC unroll 2
    for (int r = 0; r < R; ++r) {
      const uint32_t* g = p + r * groups * 2 + 4 * pairs;
      pos[r] = g[0], neg[r] = g[1];
      count_pos[r] += __builtin_popcount(g[0]), count_neg[r] += __builtin_popcount(g[1]);
    }
    step_avx512<R, N>(acc, pos, neg, vp, vn, x, step[pairs]);
  }
#pragma GCC unroll 2
  for (int r = 0; r < R; ++r) {
    const int32_t offset = static_cast<int32_t>(128 * (w.pos * count_pos[r] + w.neg * count_neg[r]));
#pragma GCC unroll 8
    for (int i = 0; i < N; ++i) dot[r * kMaxInputs + i] = _mm512_reduce_add_epi32(acc[r][i]) - offset;
  }
}

template <int R>
void rows_avx512(const uint32_t* p, int64_t groups, Int8Weights w, const uint8_t* const* x, const int64_t* step, int n,
                 int32_t* dot) {
  switch (n) {
    case 8: return block_avx512<R, 8>(p, groups, w, x, step, dot);
    case 7: return block_avx512<R, 7>(p, groups, w, x, step, dot);
    case 6: return block_avx512<R, 6>(p, groups, w, x, step, dot);
    case 5: return block_avx512<R, 5>(p, groups, w, x, step, dot);
    case 4: return block_avx512<R, 4>(p, groups, w, x, step, dot);
    case 3: return block_avx512<R, 3>(p, groups, w, x, step, dot);
    case 2: return block_avx512<R, 2>(p, groups, w, x, step, dot);
    case 1: return block_avx512<R, 1>(p, groups, w, x, step, dot);
  }
}

void dots_avx512(const uint32_t* p, int64_t groups, int count, Int8Weights w, const uint8_t* const* x,
                 const int64_t* step, int n, int32_t* dot) {
  if (count == 2) return rows_avx512<2>(p, groups, w, x, step, n, dot);
  rows_avx512<1>(p, groups, w, x, step, n, dot);
}

// Rows [rb, re) against inputs [ib, ib + count) for the driver below: `dots(r, here, x, count,
// dot)` computes `here` rows from r into dot[h * kMaxInputs + i].
template <class Dots>
void write_block(Dots& dots, int rows_at_once, const Int8Inputs& in, Int8Weights w, int64_t rb, int64_t re,
                 int64_t ib, int64_t ie, const Int8Output& out) {
  const uint8_t* x[kMaxInputs];
  const int count = static_cast<int>(ie - ib);
  for (int i = 0; i < count; ++i) x[i] = in.data + in.row[ib + i];
  int32_t dot[kRowsAtOnce * kMaxInputs];
  for (int64_t r = rb; r < re; r += rows_at_once) {
    const int here = static_cast<int>(std::min<int64_t>(rows_at_once, re - r));
    dots(r, here, x, count, dot);
    for (int h = 0; h < here; ++h)
      for (int i = 0; i < count; ++i) store_value(dot[h * kMaxInputs + i], in, w, ib + i, r + h, out);
  }
}

// The loop over blocks: `prepare(rb, re)` readies a block of rows (`row_bytes` each) before blocks
// of inputs meet it. The smaller of the two, the rows (a quarter byte a weight packed, a byte
// decoded) or the inputs (a byte), stays in cache while the other streams past it: a linear
// layer's inputs, a convolution's weights (kCachedRowBytes).
template <class Prepare, class Dots>
void rows_int8(Prepare prepare, Dots dots, int rows_at_once, int64_t row_bytes, const Int8Inputs& in, Int8Weights w,
               int64_t i0, int64_t i1, int64_t r0, int64_t r1, const Int8Output& out) {
  const int64_t cached = std::max<int64_t>(kRowBlock, kCachedRowBytes / std::max<int64_t>(row_bytes, 1));
  const int64_t row_block = 4 * (i1 - i0) > r1 - r0 ? std::min(r1 - r0, cached) : kRowBlock;
  for (int64_t rb = r0; rb < r1; rb += row_block) {
    const int64_t re = std::min(rb + row_block, r1);
    prepare(rb, re);
    for (int64_t ib = i0; ib < i1; ib += kMaxInputs)
      write_block(dots, rows_at_once, in, w, rb, re, ib, std::min(ib + kMaxInputs, i1), out);
  }
}

// The kernels on the packed planes as they are.
void rows_int8_packed(BlockDots dots, const uint32_t* planes, int64_t groups, Int8Weights w, const Int8Inputs& in,
                      int64_t i0, int64_t i1, int64_t r0, int64_t r1, const Int8Output& out) {
  rows_int8([](int64_t, int64_t) {},
            [&](int64_t r, int here, const uint8_t* const* x, int count, int32_t* dot) {
              dots(planes + r * groups * 2, groups, here, w, x, in.step, count, dot);
            },
            kRowsAtOnce, groups * 8, in, w, i0, i1, r0, r1, out);
}

// Rows of 8-bit weights stored row-major (eight_bit_rows_int8): `stride` bytes a row and an input,
// a multiple of 64, the weights zero past K. Σ_j w[j] · q_i[j] for n inputs, as the ternary kernels
// above: signed inputs and magnitudes carrying the sign on AVX2, offset inputs and the offset's
// share (128 · Σ w, one vpdpbusd of 128s a step for all inputs) on AVX-512.
void eight_bit_portable(const int8_t* w, int64_t stride, const uint8_t* const* x, int n, int32_t* dot) {
  for (int i = 0; i < n; ++i) {
    const auto* q = reinterpret_cast<const int8_t*>(x[i]);
    int32_t sum = 0;
    for (int64_t j = 0; j < stride; ++j) sum += w[j] * q[j];
    dot[i] = sum;
  }
}

template <int N>
__attribute__((target("avx2"))) void eight_bit_block_avx2(const int8_t* w, int64_t stride, const uint8_t* const* x,
                                                          int32_t* dot) {
  const __m256i ones16 = _mm256_set1_epi16(1);
  __m256i acc[N];
  for (int i = 0; i < N; ++i) acc[i] = _mm256_setzero_si256();
  for (int64_t j = 0; j < stride; j += 32) {
    const __m256i wb = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + j));
    const __m256i magnitude = _mm256_sign_epi8(wb, wb);
    for (int i = 0; i < N; ++i) {
      const __m256i q = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x[i] + j));
      acc[i] = _mm256_add_epi32(acc[i], dot32_avx2(magnitude, wb, q, ones16));
    }
  }
  for (int i = 0; i < N; ++i) dot[i] = sum8_epi32(acc[i]);
}

template <int N>
__attribute__((target("avx512f,avx512bw,avx512vnni"))) void eight_bit_block_avx512(const int8_t* w, int64_t stride,
                                                                                   const uint8_t* const* x,
                                                                                   int32_t* dot) {
  const __m512i offset = _mm512_set1_epi8(static_cast<char>(0x80));
  __m512i acc[N], shift = _mm512_setzero_si512();
  for (int i = 0; i < N; ++i) acc[i] = _mm512_setzero_si512();
  for (int64_t j = 0; j < stride; j += 64) {
    const __m512i wb = _mm512_loadu_si512(w + j);
    shift = _mm512_dpbusd_epi32(shift, offset, wb);
    for (int i = 0; i < N; ++i) acc[i] = _mm512_dpbusd_epi32(acc[i], _mm512_loadu_si512(x[i] + j), wb);
  }
  const int32_t share = _mm512_reduce_add_epi32(shift);
  for (int i = 0; i < N; ++i) dot[i] = _mm512_reduce_add_epi32(acc[i]) - share;
}

template <int N>
void eight_bit_block(KernelPath path, const int8_t* w, int64_t stride, const uint8_t* const* x, int32_t* dot) {
  if (path == KernelPath::Avx512) return eight_bit_block_avx512<N>(w, stride, x, dot);
  eight_bit_block_avx2<N>(w, stride, x, dot);
}

// One row against n <= kMaxInputs inputs, by path, four inputs a block.
void eight_bit_row(KernelPath path, const int8_t* w, int64_t stride, const uint8_t* const* x, int n, int32_t* dot) {
  if (path == KernelPath::Portable) return eight_bit_portable(w, stride, x, n, dot);
  for (; n > 0; n -= 4, x += 4, dot += 4) {
    switch (std::min(n, 4)) {
      case 4: eight_bit_block<4>(path, w, stride, x, dot); break;
      case 3: eight_bit_block<3>(path, w, stride, x, dot); break;
      case 2: eight_bit_block<2>(path, w, stride, x, dot); break;
      default: eight_bit_block<1>(path, w, stride, x, dot);
    }
  }
}

}  // namespace

Int8Weights int8_weights(float wp, float wn) {
  const float largest = std::max(std::abs(wp), std::abs(wn));
  const float step = largest > 0 ? largest / 127 : 1.0f;
  return {static_cast<int8_t>(std::nearbyint(wp / step)), static_cast<int8_t>(std::nearbyint(-wn / step)), step};
}

bool int8_offset(KernelPath path) { return path == KernelPath::Avx512; }


// Built for AVX2 too, where std::nearbyint is one instruction (vroundss) rather than a call.
__attribute__((target_clones("avx2", "default"))) void quantize_int8_generic(const float* x, int64_t count,
                                                                             int64_t x_stride, float scale,
                                                                             bool offset, uint8_t* dst) {
  const int add = offset ? 128 : 0;
  for (int64_t j = 0; j < count; ++j) dst[j] = quantized(x[j * x_stride], scale, add);
}

void quantize_int8(KernelPath path, const float* x, int64_t count, int64_t x_stride, float scale, bool offset,
                   uint8_t* dst) {
  if (path == KernelPath::Avx512 && x_stride == 1) return quantize_int8_avx512(x, count, scale, offset, dst);
  quantize_int8_generic(x, count, x_stride, scale, offset, dst);
}

DenseInt8Rows dense_int8_rows(KernelPath path, const int8_t* w, int64_t rows, int64_t k) {
  DenseInt8Rows d;
  d.lanes = path == KernelPath::Avx512 ? 16 : 8;
  d.fours = (k + 3) / 4;
  const int64_t blocks = (rows + d.lanes - 1) / d.lanes;
  d.blocked.assign(static_cast<size_t>(blocks * d.lanes * 4 * d.fours), 0);
  d.offset.assign(static_cast<size_t>(blocks * d.lanes), 0);
  const int add = int8_offset(path) ? 128 : 0;
  for (int64_t r = 0; r < rows; ++r) {
    int8_t* block = d.blocked.data() + r / d.lanes * d.lanes * 4 * d.fours + 4 * (r % d.lanes);
    for (int64_t j = 0; j < k; ++j) {
      block[j / 4 * d.lanes * 4 + j % 4] = w[r * k + j];
      d.offset[r] += add * w[r * k + j];
    }
  }
  return d;
}

namespace {
// dense_rows_int8 without SIMD: signed inputs, the rows' blocked bytes read one at a time.
void dense_rows_portable(const DenseInt8Rows& rows, const Int8Inputs& in, int64_t i0, int64_t i1, int64_t r0,
                         int64_t r1, const Int8Output& out) {
  for (int64_t i = i0; i < i1; ++i) {
    const auto* x = reinterpret_cast<const int8_t*>(in.data + in.row[i]);
    for (int64_t r = r0; r < r1; ++r) {
      const int8_t* block = rows.blocked.data() + r / rows.lanes * rows.lanes * 4 * rows.fours + 4 * (r % rows.lanes);
      int32_t dot = 0;
      for (int64_t q = 0; q < rows.fours; ++q)
        for (int t = 0; t < 4; ++t) dot += block[q * rows.lanes * 4 + t] * x[in.four[q] + t];
      store_value(dot, in, kDenseStep, i, r, out);
    }
  }
}
}  // namespace

void dense_rows_int8(KernelPath path, const DenseInt8Rows& rows, const Int8Inputs& in, int64_t i0, int64_t i1,
                     int64_t r0, int64_t r1, const Int8Output& out) {
  switch (path) {
    case KernelPath::Avx512: return dense_rows_int8_avx512(rows, in, i0, i1, r0, r1, out);
    case KernelPath::Avx2: return dense_rows_int8_avx2(rows, in, i0, i1, r0, r1, out);
    case KernelPath::Portable: return dense_rows_portable(rows, in, i0, i1, r0, r1, out);
  }
}

void ternary_rows_int8(KernelPath path, const uint32_t* planes, int64_t groups, Int8Weights w, const Int8Inputs& in,
                       int64_t i0, int64_t i1, int64_t r0, int64_t r1, const Int8Output& out) {
  if (path == KernelPath::Avx512 && i1 - i0 >= kMaxInputs)
    return ternary_rows_int8_blocked(planes, groups, w, in, i0, i1, r0, r1, out);
  if (path == KernelPath::Avx2 && i1 - i0 >= kMaxInputs)
    return ternary_rows_int8_blocked_avx2(planes, groups, w, in, i0, i1, r0, r1, out);
  switch (path) {
    case KernelPath::Avx512:
      return rows_int8_packed(dots_avx512, planes, groups, w, in, i0, i1, r0, r1, out);
    case KernelPath::Avx2:
      return rows_int8_packed(each_row<row_avx2>, planes, groups, w, in, i0, i1, r0, r1, out);
    case KernelPath::Portable: break;
  }
  rows_int8_packed(each_row<row_portable>, planes, groups, w, in, i0, i1, r0, r1, out);
}

void eight_bit_rows_int8(KernelPath path, const int8_t* w, int64_t stride, const Int8Inputs& in, int64_t i0,
                         int64_t i1, int64_t r0, int64_t r1, const Int8Output& out) {
  rows_int8([](int64_t, int64_t) {},
            [&](int64_t r, int here, const uint8_t* const* x, int count, int32_t* dot) {
              for (int h = 0; h < here; ++h) eight_bit_row(path, w + (r + h) * stride, stride, x, count, dot + h * kMaxInputs);
            },
            kRowsAtOnce, stride, in, kDenseStep, i0, i1, r0, r1, out);
}

}  // namespace ttq::ops
