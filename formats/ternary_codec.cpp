#include "formats/ternary_codec.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>

#include "core/error.h"

namespace ttq {
namespace {

// 32-bit rANS with byte-wise renormalisation (Duda's ANS; the layout of ryg_rans).
constexpr uint32_t kProbBits = 15;
constexpr uint32_t kProbScale = 1u << kProbBits;
constexpr uint32_t kLow = 1u << 23;  // the state stays in [kLow, kLow << 8)
constexpr size_t kHeaderBytes = 3 * 2;  // three u16 frequencies

using Freqs = std::array<uint32_t, 3>;

// Frequencies summing to kProbScale; every symbol that occurs gets at least 1.
Freqs quantize_frequencies(const std::array<uint64_t, 3>& counts, uint64_t n) {
  Freqs f{};
  if (n == 0) return {0, kProbScale, 0};
  uint32_t sum = 0;
  for (int s = 0; s < 3; ++s) {
    if (counts[s] == 0) continue;
    f[s] = std::max<uint32_t>(1, static_cast<uint32_t>((counts[s] * kProbScale + n / 2) / n));
    sum += f[s];
  }
  // Give the rounding error to the most frequent symbol (it changes its share the least).
  const int top = static_cast<int>(std::max_element(counts.begin(), counts.end()) - counts.begin());
  f[top] = f[top] + kProbScale - sum;
  return f;
}

Error corrupt(const char* why) { return input_error(fmt::format("corrupt ternary codes: {}", why)); }

}  // namespace

std::vector<uint8_t> encode_ternary(const uint8_t* symbols, size_t n) {
  std::array<uint64_t, 3> counts{};
  for (size_t i = 0; i < n; ++i) ++counts[symbols[i]];
  const Freqs freq = quantize_frequencies(counts, n);
  const Freqs start{0, freq[0], freq[0] + freq[1]};

  // rANS encodes backwards; worst case ~ 2 bytes per symbol when a frequency is 1.
  std::vector<uint8_t> buf(kHeaderBytes + 4 + 2 * n + 16);
  uint8_t* const end = buf.data() + buf.size();
  uint8_t* ptr = end;
  uint32_t x = kLow;
  for (size_t i = n; i-- > 0;) {
    const uint32_t f = freq[symbols[i]];
    const uint32_t x_max = ((kLow >> kProbBits) << 8) * f;
    while (x >= x_max) {
      *--ptr = static_cast<uint8_t>(x);
      x >>= 8;
    }
    x = ((x / f) << kProbBits) + (x % f) + start[symbols[i]];
  }
  for (int b = 3; b >= 0; --b) *--ptr = static_cast<uint8_t>(x >> (8 * b));  // state, little-endian
  for (int s = 2; s >= 0; --s) {
    *--ptr = static_cast<uint8_t>(freq[s] >> 8);
    *--ptr = static_cast<uint8_t>(freq[s]);
  }
  return std::vector<uint8_t>(ptr, end);
}

void decode_ternary(const uint8_t* data, size_t size, size_t n, uint8_t* out) {
  if (size < kHeaderBytes + 4) throw corrupt("stream shorter than its header");
  Freqs freq;
  for (int s = 0; s < 3; ++s) freq[s] = data[2 * s] | (uint32_t(data[2 * s + 1]) << 8);
  if (freq[0] + freq[1] + freq[2] != kProbScale) throw corrupt("frequencies do not sum to 2^15");
  const Freqs start{0, freq[0], freq[0] + freq[1]};
  // slot -> symbol in three runs; cheaper than a 32K table for three symbols.
  const uint32_t cut1 = start[1], cut2 = start[2];

  const uint8_t* ptr = data + kHeaderBytes;
  const uint8_t* const end = data + size;
  uint32_t x = uint32_t(ptr[0]) | (uint32_t(ptr[1]) << 8) | (uint32_t(ptr[2]) << 16) | (uint32_t(ptr[3]) << 24);
  ptr += 4;
  if (x < kLow || x >= (kLow << 8)) throw corrupt("initial state out of range");
  for (size_t i = 0; i < n; ++i) {
    const uint32_t slot = x & (kProbScale - 1);
    const uint8_t s = slot < cut1 ? 0 : slot < cut2 ? 1 : 2;
    out[i] = s;
    x = freq[s] * (x >> kProbBits) + slot - start[s];
    while (x < kLow) {
      if (ptr == end) throw corrupt("stream ends early");
      x = (x << 8) | *ptr++;
    }
  }
  if (ptr != end) throw corrupt("bytes left after the last code");
  if (x != kLow) throw corrupt("final state mismatch");
}

}  // namespace ttq
