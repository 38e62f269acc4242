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
};

}  // namespace ttq
