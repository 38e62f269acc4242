// The int8 kernels behind ttq::linear_int8 (see kernels.h). The inputs arrive as int8 and the row's
// weights become int8 bytes {+p, 0, -n} (Int8Weights), so one integer product per weight computes
// the row, exactly in int32: one vpdpbusd does 64 of them.
// GCC 12 warns about its own AVX-512 headers (_mm512_undefined_epi32 in the reductions).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/ops/kernels.h"

namespace ttq::ops {
namespace {

// Rows are taken in blocks of kRowBlock and, for each block, the inputs in blocks of up to
// kMaxInputs: a row's weights are expanded to bytes once per step and serve every input of the
// block, and a block of inputs (L1) meets many rows per load.
constexpr int64_t kRowBlock = 16;
constexpr int kMaxInputs = 8;

// Σ_k w[r, k] · q[i, k] for `count` <= kRowsAtOnce consecutive packed rows from p and n <=
// kMaxInputs input rows (`stride` bytes apart), into dot[r * kMaxInputs + i].
constexpr int kRowsAtOnce = 2;
using BlockDots = void (*)(const uint32_t* p, int64_t groups, int count, Int8Weights w, const uint8_t* q,
                           int64_t stride, int n, int32_t* dot);

// The same for one row, by the kernels that take rows one at a time.
template <void (*row_dots)(const uint32_t*, int64_t, Int8Weights, const uint8_t*, int64_t, int, int32_t*)>
void each_row(const uint32_t* p, int64_t groups, int count, Int8Weights w, const uint8_t* q, int64_t stride, int n,
              int32_t* dot) {
  for (int r = 0; r < count; ++r) row_dots(p + r * groups * 2, groups, w, q, stride, n, dot + r * kMaxInputs);
}

void row_portable(const uint32_t* p, int64_t groups, Int8Weights w, const uint8_t* q, int64_t stride, int n,
                  int32_t* dot) {
  for (int i = 0; i < n; ++i) {
    const auto* qi = reinterpret_cast<const int8_t*>(q + i * stride);
    int32_t sp = 0, sn = 0;
    for (int64_t g = 0; g < groups; ++g) {
      for (uint32_t m = p[2 * g]; m; m &= m - 1) sp += qi[g * 32 + __builtin_ctz(m)];
      for (uint32_t m = p[2 * g + 1]; m; m &= m - 1) sn += qi[g * 32 + __builtin_ctz(m)];
    }
    dot[i] = w.pos * sp + w.neg * sn;
  }
}

__attribute__((target("avx2"))) int32_t sum8_epi32(__m256i v) {
  const __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  const __m128i t = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
  return _mm_cvtsi128_si32(_mm_add_epi32(t, _mm_shuffle_epi32(t, _MM_SHUFFLE(2, 3, 0, 1))));
}

// The 32 bits of a plane as 32 byte lanes, 0xff where the bit is set.
__attribute__((target("avx2"))) __m256i bytes32(uint32_t bits) {
  const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,  //
                                          2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
  const __m256i select = _mm256_set1_epi64x(static_cast<int64_t>(0x8040201008040201ull));
  const __m256i b = _mm256_and_si256(_mm256_shuffle_epi8(_mm256_set1_epi32(static_cast<int>(bits)), spread), select);
  return _mm256_cmpeq_epi8(b, select);
}

// AVX2 (as llama.cpp's q8 dots): maddubs multiplies |w| (unsigned) by q carrying w's sign and sums
// pairs (at most 2 · 127 · 127, no saturation); madd sums those into int32 lanes. Four inputs a block.
template <int N>
__attribute__((target("avx2"))) void block_avx2(const uint32_t* p, int64_t groups, Int8Weights w, const uint8_t* q,
                                                int64_t stride, int32_t* dot) {
  const __m256i ones16 = _mm256_set1_epi16(1), vp = _mm256_set1_epi8(w.pos), vn = _mm256_set1_epi8(w.neg);
  __m256i acc[N];
  for (int i = 0; i < N; ++i) acc[i] = _mm256_setzero_si256();
  for (int64_t g = 0; g < groups; ++g) {
    if ((p[2 * g] | p[2 * g + 1]) == 0) continue;
    const __m256i wb = _mm256_or_si256(_mm256_and_si256(bytes32(p[2 * g]), vp), _mm256_and_si256(bytes32(p[2 * g + 1]), vn));
    const __m256i magnitude = _mm256_sign_epi8(wb, wb);
    for (int i = 0; i < N; ++i) {
      const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + i * stride + g * 32));
      acc[i] = _mm256_add_epi32(acc[i], _mm256_madd_epi16(_mm256_maddubs_epi16(magnitude, _mm256_sign_epi8(x, wb)), ones16));
    }
  }
  for (int i = 0; i < N; ++i) dot[i] = sum8_epi32(acc[i]);
}

void row_avx2(const uint32_t* p, int64_t groups, Int8Weights w, const uint8_t* q, int64_t stride, int n,
              int32_t* dot) {
  for (; n >= 4; n -= 4, q += 4 * stride, dot += 4) block_avx2<4>(p, groups, w, q, stride, dot);
  switch (n) {
    case 3: return block_avx2<3>(p, groups, w, q, stride, dot);
    case 2: return block_avx2<2>(p, groups, w, q, stride, dot);
    case 1: return block_avx2<1>(p, groups, w, q, stride, dot);
  }
}

// AVX-512 VNNI: vpdpbusd multiplies unsigned by signed bytes, so the inputs arrive offset to
// unsigned (q + 128, see ternary_rows_int8) and the offset's share, 128 · Σ w, comes off at the end.
// Two groups (64 weights) a step; R rows and N inputs a block, each input loaded once for the R rows
// (on Zen 4 a 512-bit load costs as much as a vpdpbusd).
template <int R, int N>
__attribute__((target("avx512f,avx512bw,avx512vnni"), always_inline)) inline void step_avx512(
    __m512i (*acc)[N], const uint64_t* pos, const uint64_t* neg, __m512i vp, __m512i vn, const uint8_t* q,
    int64_t stride) {
  __m512i wb[R];
#pragma GCC unroll 2
  for (int r = 0; r < R; ++r) wb[r] = _mm512_mask_mov_epi8(_mm512_maskz_mov_epi8(pos[r], vp), neg[r], vn);
  // acc += q (unsigned) · wb (signed), in place: GCC 12 copies the accumulator around the intrinsic
  // (_mm512_dpbusd_epi32), two extra moves per product.
#pragma GCC unroll 8
  for (int i = 0; i < N; ++i) {
    const __m512i x = _mm512_loadu_si512(q + i * stride);
  #pragma GCC unroll 2
  for (int r = 0; r < R; ++r) asm("vpdpbusd %[w], %[x], %[acc]" : [acc] "+v"(acc[r][i]) : [x] "v"(x), [w] "v"(wb[r]));
  }
}

template <int R, int N>
__attribute__((target("avx512f,avx512bw,avx512vnni,popcnt"))) void block_avx512(const uint32_t* p, int64_t groups,
                                                                                Int8Weights w, const uint8_t* q,
                                                                                int64_t stride, int32_t* dot) {
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
      pos[r] = g[0] | static_cast<uint64_t>(g[2]) << 32, neg[r] = g[1] | static_cast<uint64_t>(g[3]) << 32;
      count_pos[r] += __builtin_popcountll(pos[r]), count_neg[r] += __builtin_popcountll(neg[r]);
    }
    step_avx512<R, N>(acc, pos, neg, vp, vn, q + 64 * j, stride);
  }
  if (groups % 2) {  // the last group alone: q is padded to 64 bytes
  #pragma GCC unroll 2
  for (int r = 0; r < R; ++r) {
      const uint32_t* g = p + r * groups * 2 + 4 * pairs;
      pos[r] = g[0], neg[r] = g[1];
      count_pos[r] += __builtin_popcount(g[0]), count_neg[r] += __builtin_popcount(g[1]);
    }
    step_avx512<R, N>(acc, pos, neg, vp, vn, q + 64 * pairs, stride);
  }
#pragma GCC unroll 2
  for (int r = 0; r < R; ++r) {
    const int32_t offset = static_cast<int32_t>(128 * (w.pos * count_pos[r] + w.neg * count_neg[r]));
#pragma GCC unroll 8
    for (int i = 0; i < N; ++i) dot[r * kMaxInputs + i] = _mm512_reduce_add_epi32(acc[r][i]) - offset;
  }
}

template <int R>
void rows_avx512(const uint32_t* p, int64_t groups, Int8Weights w, const uint8_t* q, int64_t stride, int n,
                 int32_t* dot) {
  switch (n) {
    case 8: return block_avx512<R, 8>(p, groups, w, q, stride, dot);
    case 7: return block_avx512<R, 7>(p, groups, w, q, stride, dot);
    case 6: return block_avx512<R, 6>(p, groups, w, q, stride, dot);
    case 5: return block_avx512<R, 5>(p, groups, w, q, stride, dot);
    case 4: return block_avx512<R, 4>(p, groups, w, q, stride, dot);
    case 3: return block_avx512<R, 3>(p, groups, w, q, stride, dot);
    case 2: return block_avx512<R, 2>(p, groups, w, q, stride, dot);
    case 1: return block_avx512<R, 1>(p, groups, w, q, stride, dot);
  }
}

void dots_avx512(const uint32_t* p, int64_t groups, int count, Int8Weights w, const uint8_t* q, int64_t stride, int n,
                 int32_t* dot) {
  if (count == 2) return rows_avx512<2>(p, groups, w, q, stride, n, dot);
  rows_avx512<1>(p, groups, w, q, stride, n, dot);
}

void rows_int8(BlockDots dots, const uint32_t* planes, int64_t groups, Int8Weights w, const uint8_t* q,
               int64_t stride, const float* q_scale, int64_t n, float* y, int64_t rows, int64_t r0, int64_t r1) {
  int32_t dot[kRowsAtOnce * kMaxInputs];
  for (int64_t rb = r0; rb < r1; rb += kRowBlock)
    for (int64_t ib = 0; ib < n; ib += kMaxInputs) {
      const int count = static_cast<int>(std::min<int64_t>(kMaxInputs, n - ib));
      const int64_t block_end = std::min(rb + kRowBlock, r1);
      for (int64_t r = rb; r < block_end; r += kRowsAtOnce) {
        const int here = static_cast<int>(std::min<int64_t>(kRowsAtOnce, block_end - r));
        dots(planes + r * groups * 2, groups, here, w, q + ib * stride, stride, count, dot);
        for (int h = 0; h < here; ++h)
          for (int i = 0; i < count; ++i)
            y[(ib + i) * rows + r + h] = q_scale[ib + i] * w.step * static_cast<float>(dot[h * kMaxInputs + i]);
      }
    }
}

}  // namespace

Int8Weights int8_weights(float wp, float wn) {
  const float largest = std::max(std::abs(wp), std::abs(wn));
  const float step = largest > 0 ? largest / 127 : 1.0f;
  return {static_cast<int8_t>(std::nearbyint(wp / step)), static_cast<int8_t>(std::nearbyint(-wn / step)), step};
}

void ternary_rows_int8(KernelPath path, const uint32_t* planes, int64_t groups, Int8Weights w, const int8_t* q,
                       int64_t stride, const float* q_scale, int64_t n, float* y, int64_t rows, int64_t r0,
                       int64_t r1) {
  const auto* bytes = reinterpret_cast<const uint8_t*>(q);
  switch (path) {
    case KernelPath::Avx512: {
      // This thread's copy of the inputs offset to unsigned, once per call (n rows: small).
      thread_local std::vector<uint8_t> offset;
      offset.resize(static_cast<size_t>(n * stride));
      for (size_t i = 0; i < offset.size(); ++i) offset[i] = bytes[i] ^ 0x80;  // q + 128
      return rows_int8(dots_avx512, planes, groups, w, offset.data(), stride, q_scale, n, y, rows, r0, r1);
    }
    case KernelPath::Avx2: return rows_int8(each_row<row_avx2>, planes, groups, w, bytes, stride, q_scale, n, y, rows, r0, r1);
    case KernelPath::Portable: break;
  }
  rows_int8(each_row<row_portable>, planes, groups, w, bytes, stride, q_scale, n, y, rows, r0, r1);
}

}  // namespace ttq::ops
