// Conditions on a run's final state, as `ttq stats --expect 'METRIC OP VALUE'` takes them for CI:
// 'sparsity>=0.3', 'top1 >= 90%', 'wp>0'.
#pragma once
#include <string>
#include <vector>

namespace ttq {

struct Expectation {
  std::string text;    // as given
  std::string metric;  // "zero" is read as "sparsity"
  std::string op;      // >=, <=, >, <, == (also written =), !=
  double value = 0;    // a trailing % divides by 100

  bool holds(double v) const;
};

// Usage error, one line quoting `text`, for a malformed condition, a metric outside `metrics`,
// or a value that is not a finite number.
Expectation parse_expectation(const std::string& text, const std::vector<std::string>& metrics);

}  // namespace ttq
