#include "core/expect.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <regex>

#include "core/error.h"

namespace ttq {

bool Expectation::holds(double v) const {
  if (op == ">=") return v >= value;
  if (op == "<=") return v <= value;
  if (op == ">") return v > value;
  if (op == "<") return v < value;
  if (op == "==") return v == value;
  return v != value;
}

Expectation parse_expectation(const std::string& text, const std::vector<std::string>& metrics) {
  static const std::regex form(R"(^\s*([A-Za-z_0-9]+)\s*(>=|<=|==|!=|=|>|<)\s*([^\s%]+)\s*(%?)\s*$)");
  std::smatch m;
  if (!std::regex_match(text, m, form))
    throw usage_error(fmt::format("--expect '{}': write METRIC OP VALUE, e.g. 'sparsity>=0.3'", text));
  Expectation e{text, m[1].str(), m[2].str() == "=" ? "==" : m[2].str(), 0};
  if (e.metric == "zero") e.metric = "sparsity";
  if (std::find(metrics.begin(), metrics.end(), e.metric) == metrics.end())
    throw usage_error(fmt::format("--expect '{}': unknown metric '{}'; metrics: {}", text, e.metric,
                                  fmt::join(metrics, ", ")));
  char* end = nullptr;
  const std::string value = m[3].str();
  e.value = std::strtod(value.c_str(), &end);
  if (value.empty() || *end != '\0' || !std::isfinite(e.value))
    throw usage_error(fmt::format("--expect '{}': '{}' is not a number", text, value));
  if (!m[4].str().empty()) e.value /= 100;
  return e;
}

}  // namespace ttq
