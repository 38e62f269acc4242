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

// Σ_k w[k] · q[i, k] for n <= kMaxInputs input rows (`stride` bytes apart) and the packed row p,
// into dot[i].
using BlockDots = void (*)(const uint32_t* p, int64_t groups, Int8Weights w, const uint8_t* q, int64_t stride, int n,
                           int32_t* dot);

void dots_portable(const uint32_t* p, int64_t groups, Int8Weights w, const uint8_t* q, int64_t stride, int n,
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

void dots_avx2(const uint32_t* p, int64_t groups, Int8Weights w, const uint8_t* q, int64_t stride, int n,
               int32_t* dot) {
  for (; n >= 4; n -= 4, q += 4 * stride, dot += 4) block_avx2<4>(p, groups, w, q, stride, dot);
  switch (n) {
    case 3: return block_avx2<3>(p, groups, w, q, stride, dot);
    case 2: return block_avx2<2>(p, groups, w, q, stride, dot);
    case 1: return block_avx2<1>(p, groups, w, q, stride, dot);
  }
}

// AVX-512 VNNI: vpdpbusd multiplies unsigned by signed bytes, so the inputs arrive offset to
// unsigned (q + 128, see rows_int8) and the offset's share, 128 · Σ w, comes off at the end. Two
// groups (64 weights) a step, eight inputs a block.
template <int N>
__attribute__((target("avx512f,avx512bw,avx512vnni"))) void block_avx512(const uint32_t* p, int64_t groups,
                                                                         Int8Weights w, const uint8_t* q,
                                                                         int64_t stride, int32_t* dot) {
  const __m512i vp = _mm512_set1_epi8(w.pos), vn = _mm512_set1_epi8(w.neg);
  __m512i acc[N];
  for (int i = 0; i < N; ++i) acc[i] = _mm512_setzero_si512();
  int64_t count_pos = 0, count_neg = 0;
  for (int64_t g = 0; g < groups; g += 2) {
    const bool pair = g + 1 < groups;  // q is padded to 64 bytes; an odd last group has empty planes
    const uint64_t pos = p[2 * g] | (pair ? static_cast<uint64_t>(p[2 * g + 2]) << 32 : 0);
    const uint64_t neg = p[2 * g + 1] | (pair ? static_cast<uint64_t>(p[2 * g + 3]) << 32 : 0);
    count_pos += __builtin_popcountll(pos), count_neg += __builtin_popcountll(neg);
    const __m512i wb = _mm512_mask_mov_epi8(_mm512_maskz_mov_epi8(pos, vp), neg, vn);
    for (int i = 0; i < N; ++i) acc[i] = _mm512_dpbusd_epi32(acc[i], _mm512_loadu_si512(q + i * stride + g * 32), wb);
  }
  const int32_t offset = static_cast<int32_t>(128 * (w.pos * count_pos + w.neg * count_neg));
  for (int i = 0; i < N; ++i) dot[i] = _mm512_reduce_add_epi32(acc[i]) - offset;
}

void dots_avx512(const uint32_t* p, int64_t groups, Int8Weights w, const uint8_t* q, int64_t stride, int n,
                 int32_t* dot) {
  switch (n) {
    case 8: return block_avx512<8>(p, groups, w, q, stride, dot);
    case 7: return block_avx512<7>(p, groups, w, q, stride, dot);
    case 6: return block_avx512<6>(p, groups, w, q, stride, dot);
    case 5: return block_avx512<5>(p, groups, w, q, stride, dot);
    case 4: return block_avx512<4>(p, groups, w, q, stride, dot);
    case 3: return block_avx512<3>(p, groups, w, q, stride, dot);
    case 2: return block_avx512<2>(p, groups, w, q, stride, dot);
    case 1: return block_avx512<1>(p, groups, w, q, stride, dot);
  }
}

void rows_int8(BlockDots dots, const uint32_t* planes, int64_t groups, Int8Weights w, const uint8_t* q,
               int64_t stride, const float* q_scale, int64_t n, float* y, int64_t rows, int64_t r0, int64_t r1) {
  int32_t dot[kMaxInputs];
  for (int64_t rb = r0; rb < r1; rb += kRowBlock)
    for (int64_t ib = 0; ib < n; ib += kMaxInputs) {
      const int count = static_cast<int>(std::min<int64_t>(kMaxInputs, n - ib));
      for (int64_t r = rb; r < std::min(rb + kRowBlock, r1); ++r) {
        dots(planes + r * groups * 2, groups, w, q + ib * stride, stride, count, dot);
        for (int i = 0; i < count; ++i) y[(ib + i) * rows + r] = q_scale[ib + i] * w.step * static_cast<float>(dot[i]);
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
    case KernelPath::Avx2: return rows_int8(dots_avx2, planes, groups, w, bytes, stride, q_scale, n, y, rows, r0, r1);
    case KernelPath::Portable: break;
  }
  rows_int8(dots_portable, planes, groups, w, bytes, stride, q_scale, n, y, rows, r0, r1);
}

}  // namespace ttq::ops
