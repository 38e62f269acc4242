// core/expect: the --expect conditions of `ttq stats`.
#include "catch.h"

#include "core/error.h"
#include "core/expect.h"

using namespace ttq;

namespace {

const std::vector<std::string> kMetrics = {"sparsity", "wp", "top1"};

ErrorKind kind_of(const std::string& text) {
  try {
    parse_expectation(text, kMetrics);
  } catch (const Error& e) {
    return e.kind();
  }
  return ErrorKind::Runtime;  // no error: the caller's check fails
}

}  // namespace

TEST_CASE("expectations parse METRIC OP VALUE with spaces, percentages and aliases") {
  const auto e = parse_expectation(" top1 >= 90.5 % ", kMetrics);
  CHECK(e.metric == "top1");
  CHECK(e.op == ">=");
  CHECK(e.value == Approx(0.905));
  CHECK(e.text == " top1 >= 90.5 % ");
  CHECK(parse_expectation("zero<0.7", kMetrics).metric == "sparsity");
  CHECK(parse_expectation("wp=1", kMetrics).op == "==");
  CHECK(parse_expectation("wp!=1e-3", kMetrics).value == Approx(1e-3));
}

TEST_CASE("each operator holds exactly when it should") {
  const auto at = [](const std::string& op) { return parse_expectation("wp" + op + "2", kMetrics); };
  CHECK(at(">=").holds(2));
  CHECK_FALSE(at(">=").holds(1.999));
  CHECK(at(">").holds(2.001));
  CHECK_FALSE(at(">").holds(2));
  CHECK(at("<=").holds(2));
  CHECK_FALSE(at("<").holds(2));
  CHECK(at("==").holds(2));
  CHECK(at("!=").holds(3));
  CHECK_FALSE(at("!=").holds(2));
}

TEST_CASE("malformed conditions, unknown metrics and non-numbers are usage errors") {
  for (const char* bad : {"top1", ">= 3", "top1 => 3", "top1 >= ", "top1 >= abc", "top1 >= inf", "top1 >= 3 4",
                          "accuracy > 1"}) {
    CAPTURE(bad);
    CHECK(kind_of(bad) == ErrorKind::Usage);
  }
  CHECK_THROWS_WITH(parse_expectation("accuracy>1", kMetrics), Catch::Contains("unknown metric 'accuracy'"));
}
