#include "core/ops/kernels.h"

// GCC 12 warns about its own AVX-512 headers (_mm512_undefined_ps in the reductions).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

namespace ttq::ops {
namespace {

// Set bits one at a time: the work follows the non-zero weights.
void rows_portable(const uint32_t* planes, int64_t groups, const float* x, int64_t n, float wp, float wn, float* y,
                   int64_t rows, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const uint32_t* p = planes + r * groups * 2;
    for (int64_t i = 0; i < n; ++i) {
      const float* xi = x + i * groups * 32;
      float sp = 0, sn = 0;
      for (int64_t g = 0; g < groups; ++g) {
        for (uint32_t m = p[2 * g]; m; m &= m - 1) sp += xi[g * 32 + __builtin_ctz(m)];
        for (uint32_t m = p[2 * g + 1]; m; m &= m - 1) sn += xi[g * 32 + __builtin_ctz(m)];
      }
      y[i * rows + r] = wp * sp - wn * sn;
    }
  }
}

__attribute__((target("avx2,fma"))) float sum8(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
}

// Eight bits of a plane as an eight-lane mask.
__attribute__((target("avx2,fma"))) __m256 lanes8(uint32_t bits) {
  const __m256i select = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  const __m256i b = _mm256_and_si256(_mm256_set1_epi32(static_cast<int>(bits & 0xff)), select);
  return _mm256_castsi256_ps(_mm256_cmpeq_epi32(b, select));
}

__attribute__((target("avx2,fma"))) void rows_avx2(const uint32_t* planes, int64_t groups, const float* x, int64_t n,
                                                   float wp, float wn, float* y, int64_t rows, int64_t r0,
                                                   int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const uint32_t* p = planes + r * groups * 2;
    for (int64_t i = 0; i < n; ++i) {
      const float* xi = x + i * groups * 32;
      __m256 ap0 = _mm256_setzero_ps(), ap1 = _mm256_setzero_ps(), an0 = _mm256_setzero_ps(),
             an1 = _mm256_setzero_ps();
      for (int64_t g = 0; g < groups; ++g) {
        const uint32_t pos = p[2 * g], neg = p[2 * g + 1];
        if ((pos | neg) == 0) continue;
        for (int q = 0; q < 4; q += 2) {
          const __m256 x0 = _mm256_loadu_ps(xi + g * 32 + q * 8), x1 = _mm256_loadu_ps(xi + g * 32 + q * 8 + 8);
          ap0 = _mm256_add_ps(ap0, _mm256_and_ps(x0, lanes8(pos >> (q * 8))));
          ap1 = _mm256_add_ps(ap1, _mm256_and_ps(x1, lanes8(pos >> (q * 8 + 8))));
          an0 = _mm256_add_ps(an0, _mm256_and_ps(x0, lanes8(neg >> (q * 8))));
          an1 = _mm256_add_ps(an1, _mm256_and_ps(x1, lanes8(neg >> (q * 8 + 8))));
        }
      }
      y[i * rows + r] = wp * sum8(_mm256_add_ps(ap0, ap1)) - wn * sum8(_mm256_add_ps(an0, an1));
    }
  }
}

// AVX-512: a plane's 16 bits are a k-register mask; masked adds do the work.
__attribute__((target("avx512f"))) void rows_avx512(const uint32_t* planes, int64_t groups, const float* x,
                                                    int64_t n, float wp, float wn, float* y, int64_t rows,
                                                    int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const uint32_t* p = planes + r * groups * 2;
    for (int64_t i = 0; i < n; ++i) {
      const float* xi = x + i * groups * 32;
      __m512 ap0 = _mm512_setzero_ps(), ap1 = _mm512_setzero_ps(), an0 = _mm512_setzero_ps(),
             an1 = _mm512_setzero_ps();
      for (int64_t g = 0; g < groups; ++g) {
        const uint32_t pos = p[2 * g], neg = p[2 * g + 1];
        const __m512 x0 = _mm512_loadu_ps(xi + g * 32), x1 = _mm512_loadu_ps(xi + g * 32 + 16);
        ap0 = _mm512_mask_add_ps(ap0, static_cast<__mmask16>(pos), ap0, x0);
        ap1 = _mm512_mask_add_ps(ap1, static_cast<__mmask16>(pos >> 16), ap1, x1);
        an0 = _mm512_mask_add_ps(an0, static_cast<__mmask16>(neg), an0, x0);
        an1 = _mm512_mask_add_ps(an1, static_cast<__mmask16>(neg >> 16), an1, x1);
      }
      y[i * rows + r] =
          wp * _mm512_reduce_add_ps(_mm512_add_ps(ap0, ap1)) - wn * _mm512_reduce_add_ps(_mm512_add_ps(an0, an1));
    }
  }
}

// A group's 32 values, branch-free (the compiler vectorizes it for the target at hand).
inline void decode_group(uint32_t pos, uint32_t neg, float wp, float wn, float* out, int64_t count) {
  for (int64_t b = 0; b < count; ++b)
    out[b] = static_cast<float>((pos >> b) & 1u) * wp - static_cast<float>((neg >> b) & 1u) * wn;
}

void decode_portable(const uint32_t* planes, int64_t groups, int64_t k, float wp, float wn, int64_t r0, int64_t r1,
                     float* dst) {
  for (int64_t r = r0; r < r1; ++r) {
    const uint32_t* p = planes + r * groups * 2;
    float* row = dst + (r - r0) * k;
    for (int64_t g = 0; g < groups; ++g)
      decode_group(p[2 * g], p[2 * g + 1], wp, wn, row + g * 32, std::min<int64_t>(32, k - g * 32));
  }
}

__attribute__((target("avx2,fma"))) void decode_avx2(const uint32_t* planes, int64_t groups, int64_t k, float wp,
                                                     float wn, int64_t r0, int64_t r1, float* dst) {
  const __m256 vp = _mm256_set1_ps(wp), vn = _mm256_set1_ps(-wn);
  for (int64_t r = r0; r < r1; ++r) {
    const uint32_t* p = planes + r * groups * 2;
    float* row = dst + (r - r0) * k;
    const int64_t whole = k / 32;
    for (int64_t g = 0; g < whole; ++g)
      for (int q = 0; q < 4; ++q) {
        const __m256 v = _mm256_or_ps(_mm256_and_ps(vp, lanes8(p[2 * g] >> (8 * q))),
                                      _mm256_and_ps(vn, lanes8(p[2 * g + 1] >> (8 * q))));
        _mm256_storeu_ps(row + g * 32 + q * 8, v);
      }
    if (whole < groups) decode_group(p[2 * whole], p[2 * whole + 1], wp, wn, row + whole * 32, k - whole * 32);
  }
}

__attribute__((target("avx512f"))) void decode_avx512(const uint32_t* planes, int64_t groups, int64_t k, float wp,
                                                      float wn, int64_t r0, int64_t r1, float* dst) {
  const __m512 vp = _mm512_set1_ps(wp), vn = _mm512_set1_ps(-wn);
  for (int64_t r = r0; r < r1; ++r) {
    const uint32_t* p = planes + r * groups * 2;
    float* row = dst + (r - r0) * k;
    const int64_t whole = k / 32;
    for (int64_t g = 0; g < whole; ++g)
      for (int h = 0; h < 2; ++h) {
        const __m512 v = _mm512_mask_mov_ps(_mm512_maskz_mov_ps(static_cast<__mmask16>(p[2 * g] >> (16 * h)), vp),
                                            static_cast<__mmask16>(p[2 * g + 1] >> (16 * h)), vn);
        _mm512_storeu_ps(row + g * 32 + h * 16, v);
      }
    if (whole < groups) decode_group(p[2 * whole], p[2 * whole + 1], wp, wn, row + whole * 32, k - whole * 32);
  }
}

// ternary_decode_scattered's rows r0 <= r < r1 one value at a time, anywhere its offsets say.
void scatter_portable(const uint32_t* planes, int64_t groups, int64_t k, float wp, float wn, int64_t r0, int64_t r1,
                      const int64_t* row_at, const int64_t* k_at, float* dst) {
  for (int64_t r = r0; r < r1; ++r) {
    const uint32_t* p = planes + r * groups * 2;
    float* row = dst + row_at[r];
    for (int64_t g = 0; g < groups; ++g)
      for (int64_t b = 0, count = std::min<int64_t>(32, k - g * 32); b < count; ++b)
        row[k_at[g * 32 + b]] = static_cast<float>((p[2 * g] >> b) & 1u) * wp -
                                static_cast<float>((p[2 * g + 1] >> b) & 1u) * wn;
  }
}

// Whether rows r ... r + lanes - 1 lie side by side in the layout (a block of output channels
// innermost), so that one vector store writes a value of each.
bool side_by_side(const int64_t* row_at, int64_t r, int64_t lanes) {
  for (int64_t l = 1; l < lanes; ++l)
    if (row_at[r + l] != row_at[r] + l) return false;
  return true;
}

// +wp, 0 or -wn in each lane, as `bit` is set in its row's pos or neg word.
__attribute__((target("avx512f"))) inline __m512 ternary_lanes(__m512i pos, __m512i neg, __m512i bit, __m512 vp,
                                                               __m512 vn) {
  return _mm512_mask_mov_ps(_mm512_maskz_mov_ps(_mm512_test_epi32_mask(pos, bit), vp), _mm512_test_epi32_mask(neg, bit),
                            vn);
}

// `vectors` · 16 rows of ternary_decode_scattered from r, each 16 side by side: their planes' words
// gathered, each value of the 16 made from one bit of each (more rows a pass share the bit and the
// place; two were the fastest of one, two and four).
template <int vectors>
__attribute__((target("avx512f"))) void scatter_rows_avx512(const uint32_t* planes, int64_t groups, int64_t k,
                                                            __m512 vp, __m512 vn, int64_t r, const int64_t* row_at,
                                                            const int64_t* k_at, float* dst) {
  const __m512i at = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                        _mm512_set1_epi32(static_cast<int>(groups * 2)));
  float* block[vectors];
  for (int v = 0; v < vectors; ++v) block[v] = dst + row_at[r + 16 * v];
  for (int64_t g = 0; g < groups; ++g) {
    __m512i pos[vectors], neg[vectors];
    for (int v = 0; v < vectors; ++v) {
      const uint32_t* p = planes + (r + 16 * v) * groups * 2 + 2 * g;
      pos[v] = _mm512_i32gather_epi32(at, p, 4);
      neg[v] = _mm512_i32gather_epi32(at, p + 1, 4);
    }
    const int64_t* places = k_at + g * 32;
    for (int64_t b = 0, count = std::min<int64_t>(32, k - g * 32); b < count; ++b) {
      const __m512i bit = _mm512_set1_epi32(static_cast<int>(1u << b));
      for (int v = 0; v < vectors; ++v) _mm512_storeu_ps(block[v] + places[b], ternary_lanes(pos[v], neg[v], bit, vp, vn));
    }
  }
}

__attribute__((target("avx512f"))) void scatter_avx512(const uint32_t* planes, int64_t groups, int64_t k, float wp,
                                                       float wn, int64_t r0, int64_t r1, const int64_t* row_at,
                                                       const int64_t* k_at, float* dst) {
  const __m512 vp = _mm512_set1_ps(wp), vn = _mm512_set1_ps(-wn);
  const auto whole = [&](int64_t r, int64_t vectors) {
    for (int64_t v = 0; v < vectors; ++v)
      if (r + 16 * (v + 1) > r1 || !side_by_side(row_at, r + 16 * v, 16)) return false;
    return true;
  };
  int64_t r = r0;
  for (; whole(r, 2); r += 32) scatter_rows_avx512<2>(planes, groups, k, vp, vn, r, row_at, k_at, dst);
  for (; whole(r, 1); r += 16) scatter_rows_avx512<1>(planes, groups, k, vp, vn, r, row_at, k_at, dst);
  scatter_portable(planes, groups, k, wp, wn, r, r1, row_at, k_at, dst);
}

// As scatter_avx512, 8 rows at a time.
__attribute__((target("avx2,fma"))) void scatter_avx2(const uint32_t* planes, int64_t groups, int64_t k, float wp,
                                                      float wn, int64_t r0, int64_t r1, const int64_t* row_at,
                                                      const int64_t* k_at, float* dst) {
  const __m256 vp = _mm256_set1_ps(wp), vn = _mm256_set1_ps(-wn);
  const __m256i at = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                                        _mm256_set1_epi32(static_cast<int>(groups * 2)));
  int64_t r = r0;
  for (; r + 8 <= r1 && side_by_side(row_at, r, 8); r += 8) {
    float* block = dst + row_at[r];
    for (int64_t g = 0; g < groups; ++g) {
      const auto* p = reinterpret_cast<const int*>(planes + r * groups * 2 + 2 * g);
      const __m256i pos = _mm256_i32gather_epi32(p, at, 4), neg = _mm256_i32gather_epi32(p + 1, at, 4);
      for (int64_t b = 0, count = std::min<int64_t>(32, k - g * 32); b < count; ++b) {
        const __m256i bit = _mm256_set1_epi32(static_cast<int>(1u << b));
        const __m256 is_pos = _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(pos, bit), bit));
        const __m256 is_neg = _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(neg, bit), bit));
        _mm256_storeu_ps(block + k_at[g * 32 + b], _mm256_or_ps(_mm256_and_ps(is_pos, vp), _mm256_and_ps(is_neg, vn)));
      }
    }
  }
  scatter_portable(planes, groups, k, wp, wn, r, r1, row_at, k_at, dst);
}

}  // namespace

void ternary_decode(KernelPath path, const uint32_t* planes, int64_t groups, int64_t k, float wp, float wn,
                    int64_t r0, int64_t r1, float* dst) {
  switch (path) {
    case KernelPath::Avx512: return decode_avx512(planes, groups, k, wp, wn, r0, r1, dst);
    case KernelPath::Avx2: return decode_avx2(planes, groups, k, wp, wn, r0, r1, dst);
    case KernelPath::Portable: break;
  }
  decode_portable(planes, groups, k, wp, wn, r0, r1, dst);
}

void ternary_decode_scattered(KernelPath path, const uint32_t* planes, int64_t groups, int64_t k, float wp, float wn,
                              int64_t r0, int64_t r1, const int64_t* row_at, const int64_t* k_at, float* dst) {
  switch (path) {
    case KernelPath::Avx512: return scatter_avx512(planes, groups, k, wp, wn, r0, r1, row_at, k_at, dst);
    case KernelPath::Avx2: return scatter_avx2(planes, groups, k, wp, wn, r0, r1, row_at, k_at, dst);
    case KernelPath::Portable: break;
  }
  scatter_portable(planes, groups, k, wp, wn, r0, r1, row_at, k_at, dst);
}

const char* path_name(KernelPath path) {
  switch (path) {
    case KernelPath::Avx512: return "avx512";
    case KernelPath::Avx2: return "avx2";
    case KernelPath::Portable: break;
  }
  return "portable";
}

bool cpu_supports(KernelPath path) {
  switch (path) {
    case KernelPath::Avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vnni");
    case KernelPath::Avx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case KernelPath::Portable: break;
  }
  return true;
}

KernelPath selected_path() {
  const char* asked = std::getenv("TTQ_KERNEL");
  if (asked && *asked) {
    for (const auto p : {KernelPath::Portable, KernelPath::Avx2, KernelPath::Avx512})
      if (std::strcmp(asked, path_name(p)) == 0) {
        TORCH_CHECK(cpu_supports(p), "ttq: TTQ_KERNEL=", asked, ": this CPU cannot run it");
        return p;
      }
    TORCH_CHECK(false, "ttq: TTQ_KERNEL=", asked, " is not one of portable, avx2, avx512");
  }
  for (const auto p : {KernelPath::Avx512, KernelPath::Avx2})
    if (cpu_supports(p)) return p;
  return KernelPath::Portable;
}

void ternary_rows(KernelPath path, const uint32_t* planes, int64_t groups, const float* x, int64_t n, float wp,
                  float wn, float* y, int64_t rows, int64_t r0, int64_t r1) {
  switch (path) {
    case KernelPath::Avx512: return rows_avx512(planes, groups, x, n, wp, wn, y, rows, r0, r1);
    case KernelPath::Avx2: return rows_avx2(planes, groups, x, n, wp, wn, y, rows, r0, r1);
    case KernelPath::Portable: break;
  }
  rows_portable(planes, groups, x, n, wp, wn, y, rows, r0, r1);
}

}  // namespace ttq::ops
