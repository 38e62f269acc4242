// The int8-activation kernels behind ttq::linear_int8 (see kernels.h): the input rows arrive
// quantized to int8, so a row's sums over the positive and the negative weights are exact int32
// sums, four times denser per instruction than float32 lanes.
// GCC 12 warns about its own AVX-512 headers (_mm512_undefined_epi32 in the reductions).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#include <immintrin.h>

#include <algorithm>

#include "core/ops/kernels.h"

namespace ttq::ops {
namespace {

// Rows are taken in blocks of this many, and for each block the inputs in blocks of kInputBlock,
// so that a block of packed rows (L1) and a block of inputs (L2) meet many times per load.
constexpr int64_t kRowBlock = 16;
constexpr int64_t kInputBlock = 8;

// (positive sum, negative sum) of input row q over the packed row p.
struct Sums {
  int32_t pos, neg;
};

Sums sums_portable(const uint32_t* p, int64_t groups, const int8_t* q) {
  int32_t sp = 0, sn = 0;
  for (int64_t g = 0; g < groups; ++g) {
    for (uint32_t m = p[2 * g]; m; m &= m - 1) sp += q[g * 32 + __builtin_ctz(m)];
    for (uint32_t m = p[2 * g + 1]; m; m &= m - 1) sn += q[g * 32 + __builtin_ctz(m)];
  }
  return {sp, sn};
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

// AVX2: the selected bytes summed in pairs (maddubs: 1 · q) and then in fours into int32 lanes.
__attribute__((target("avx2"))) Sums sums_avx2(const uint32_t* p, int64_t groups, const int8_t* q) {
  const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
  __m256i ap = _mm256_setzero_si256(), an = _mm256_setzero_si256();
  for (int64_t g = 0; g < groups; ++g) {
    const uint32_t pos = p[2 * g], neg = p[2 * g + 1];
    if ((pos | neg) == 0) continue;
    const __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + g * 32));
    const __m256i xp = _mm256_maddubs_epi16(ones8, _mm256_and_si256(bytes32(pos), x));
    const __m256i xn = _mm256_maddubs_epi16(ones8, _mm256_and_si256(bytes32(neg), x));
    ap = _mm256_add_epi32(ap, _mm256_madd_epi16(xp, ones16));
    an = _mm256_add_epi32(an, _mm256_madd_epi16(xn, ones16));
  }
  return {sum8_epi32(ap), sum8_epi32(an)};
}

// AVX-512 VNNI: two groups (64 weights) a step; the planes are byte masks and vpdpbusd (1 · q)
// sums the selected bytes into int32 lanes.
__attribute__((target("avx512f,avx512bw,avx512vnni"))) Sums sums_avx512(const uint32_t* p, int64_t groups,
                                                                       const int8_t* q) {
  const __m512i ones = _mm512_set1_epi8(1);
  __m512i ap = _mm512_setzero_si512(), an = _mm512_setzero_si512();
  for (int64_t g = 0; g < groups; g += 2) {
    const bool pair = g + 1 < groups;  // q is padded to 64 bytes; an odd last group has empty planes
    const __mmask64 pos = p[2 * g] | (pair ? static_cast<uint64_t>(p[2 * g + 2]) << 32 : 0);
    const __mmask64 neg = p[2 * g + 1] | (pair ? static_cast<uint64_t>(p[2 * g + 3]) << 32 : 0);
    const __m512i x = _mm512_loadu_si512(q + g * 32);
    ap = _mm512_dpbusd_epi32(ap, ones, _mm512_maskz_mov_epi8(pos, x));
    an = _mm512_dpbusd_epi32(an, ones, _mm512_maskz_mov_epi8(neg, x));
  }
  return {_mm512_reduce_add_epi32(ap), _mm512_reduce_add_epi32(an)};
}

template <Sums (*sums)(const uint32_t*, int64_t, const int8_t*)>
void rows_int8(const uint32_t* planes, int64_t groups, const int8_t* q, int64_t stride, const float* q_scale,
               int64_t n, float wp, float wn, float* y, int64_t rows, int64_t r0, int64_t r1) {
  for (int64_t rb = r0; rb < r1; rb += kRowBlock)
    for (int64_t ib = 0; ib < n; ib += kInputBlock)
      for (int64_t r = rb; r < std::min(rb + kRowBlock, r1); ++r)
        for (int64_t i = ib; i < std::min(ib + kInputBlock, n); ++i) {
          const Sums s = sums(planes + r * groups * 2, groups, q + i * stride);
          y[i * rows + r] = q_scale[i] * (wp * static_cast<float>(s.pos) - wn * static_cast<float>(s.neg));
        }
}

}  // namespace

void ternary_rows_int8(KernelPath path, const uint32_t* planes, int64_t groups, const int8_t* q, int64_t stride,
                       const float* q_scale, int64_t n, float wp, float wn, float* y, int64_t rows, int64_t r0,
                       int64_t r1) {
  switch (path) {
    case KernelPath::Avx512:
      return rows_int8<sums_avx512>(planes, groups, q, stride, q_scale, n, wp, wn, y, rows, r0, r1);
    case KernelPath::Avx2:
      return rows_int8<sums_avx2>(planes, groups, q, stride, q_scale, n, wp, wn, y, rows, r0, r1);
    case KernelPath::Portable: break;
  }
  rows_int8<sums_portable>(planes, groups, q, stride, q_scale, n, wp, wn, y, rows, r0, r1);
}

}  // namespace ttq::ops
