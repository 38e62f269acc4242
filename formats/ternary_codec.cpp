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
// Two interleaved states (even and odd symbols) share one byte stream: two independent
// dependency chains let the decoder run about twice as fast on one core.
constexpr int kStates = 2;

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

  // rANS encodes backwards. With frequencies proportional to the counts the output stays near
  // n·H <= 1.585n bits; 2 bits a symbol plus slack is a safe capacity, and it is checked.
  std::vector<uint8_t> buf(kHeaderBytes + 4 * kStates + n / 4 + 4096);
  uint8_t* const end = buf.data() + buf.size();
  uint8_t* const limit = buf.data() + kHeaderBytes + 4 * kStates;
  uint8_t* ptr = end;
  uint32_t x[kStates] = {kLow, kLow};
  for (size_t i = n; i-- > 0;) {
    uint32_t& xs = x[i % kStates];  // symbol i belongs to state i mod 2
    const uint32_t f = freq[symbols[i]];
    const uint32_t x_max = ((kLow >> kProbBits) << 8) * f;
    while (xs >= x_max) {
      if (ptr == limit) throw runtime_error("ternary encoder: output exceeds its capacity");
      *--ptr = static_cast<uint8_t>(xs);
      xs >>= 8;
    }
    xs = ((xs / f) << kProbBits) + (xs % f) + start[symbols[i]];
  }
  for (int k = kStates - 1; k >= 0; --k)  // the decoder reads state 0 first
    for (int b = 3; b >= 0; --b) *--ptr = static_cast<uint8_t>(x[k] >> (8 * b));  // little-endian
  for (int s = 2; s >= 0; --s) {
    *--ptr = static_cast<uint8_t>(freq[s] >> 8);
    *--ptr = static_cast<uint8_t>(freq[s]);
  }
  return std::vector<uint8_t>(ptr, end);
}

namespace {

// One decoding loop for both outputs; `emit(i, symbol)` stores the result.
template <class Emit>
void decode(const uint8_t* data, size_t size, size_t n, Emit&& emit) {
  if (size < kHeaderBytes + 4 * kStates) throw corrupt("stream shorter than its header");
  Freqs freq;
  for (int s = 0; s < 3; ++s) freq[s] = data[2 * s] | (uint32_t(data[2 * s + 1]) << 8);
  if (freq[0] + freq[1] + freq[2] != kProbScale) throw corrupt("frequencies do not sum to 2^15");
  const Freqs start{0, freq[0], freq[0] + freq[1]};
  const uint32_t cut1 = start[1], cut2 = start[2];

  const uint8_t* ptr = data + kHeaderBytes;
  const uint8_t* const end = data + size;
  uint32_t x[kStates];
  for (int k = 0; k < kStates; ++k, ptr += 4) {
    x[k] = uint32_t(ptr[0]) | (uint32_t(ptr[1]) << 8) | (uint32_t(ptr[2]) << 16) | (uint32_t(ptr[3]) << 24);
    if (x[k] < kLow || x[k] >= (kLow << 8)) throw corrupt("initial state out of range");
  }
  const auto step = [&](uint32_t& xs, size_t i) {
    const uint32_t slot = xs & (kProbScale - 1);
    // Branch-free: the symbol order is random, a branch would mispredict every other code.
    const uint32_t s = (slot >= cut1) + (slot >= cut2);
    emit(i, s);
    xs = freq[s] * (xs >> kProbBits) + slot - start[s];
    while (xs < kLow) {
      if (ptr == end) throw corrupt("stream ends early");
      xs = (xs << 8) | *ptr++;
    }
  };
  size_t i = 0;
  for (; i + 1 < n; i += 2) {
    step(x[0], i);
    step(x[1], i + 1);
  }
  if (i < n) step(x[0], i);
  if (ptr != end) throw corrupt("bytes left after the last code");
  if (x[0] != kLow || x[1] != kLow) throw corrupt("final state mismatch");
}

}  // namespace

void decode_ternary(const uint8_t* data, size_t size, size_t n, uint8_t* out) {
  decode(data, size, n, [out](size_t i, uint32_t s) { out[i] = static_cast<uint8_t>(s); });
}

void decode_ternary_levels(const uint8_t* data, size_t size, size_t n, const float levels[3], float* out,
                           int64_t counts[3]) {
  int64_t c[3] = {0, 0, 0};
  decode(data, size, n, [&](size_t i, uint32_t s) {
    out[i] = levels[s];
    ++c[s];
  });
  for (int s = 0; s < 3; ++s) counts[s] = c[s];
}

}  // namespace ttq
