// Counts of the three ternary codes and their order-0 entropy. Plain C++ (no LibTorch): the
// archive reader and the fuzzer use it too.
#pragma once
#include <cmath>
#include <cstdint>

namespace ttq {

struct CodeCounts {
  int64_t neg = 0;
  int64_t zero = 0;
  int64_t pos = 0;

  int64_t total() const { return neg + zero + pos; }
  double sparsity() const { return total() ? static_cast<double>(zero) / static_cast<double>(total()) : 0.0; }
  // Bits per weight: the storage limit of the codes (shared/docs/algorithm.md).
  double entropy_bits() const {
    const double n = static_cast<double>(total());
    double h = 0.0;
    for (const int64_t c : {neg, zero, pos}) {
      if (c == 0) continue;
      const double p = static_cast<double>(c) / n;
      h -= p * std::log2(p);
    }
    return h;
  }
  // The share of the weights on one code: fraction(neg), fraction(zero) (= sparsity), fraction(pos).
  double fraction(int64_t part) const {
    return total() ? static_cast<double>(part) / static_cast<double>(total()) : 0.0;
  }
  // The codes at their entropy, in bytes (fractional).
  double entropy_bytes() const { return entropy_bits() * static_cast<double>(total()) / 8.0; }
};

// Wp and Wn as float32: what a ternary layer stores besides its codes.
inline constexpr int64_t kScaleBytes = 2 * 4;

// The storage limit of one ternary layer, the single definition that inspect's sizes and the
// archive's bound share: its codes at their entropy, in whole bytes, and its two scales.
inline int64_t ternary_bound_bytes(const CodeCounts& c) {
  return static_cast<int64_t>(std::ceil(c.entropy_bytes())) + kScaleBytes;
}

}  // namespace ttq
