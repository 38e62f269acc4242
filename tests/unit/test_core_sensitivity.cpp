// core/sensitivity: drops against evaluations done here, the weights put back bit for bit, the
// FP reference held or computed again alike, the frontier's order, and what cannot be measured.
#include "catch.h"

#include "core/error.h"
#include "core/sensitivity.h"
#include "helpers.h"

using namespace ttq;

namespace {

// Two matrix products with a ReLU between: class scores for 4 classes, scripted from source.
torch::jit::Module two_layers() {
  torch::manual_seed(3);
  torch::jit::Module m("TwoLayers");
  m.register_parameter("w1", torch::randn({8, 16}), false);
  m.register_parameter("w2", torch::randn({16, 4}), false);
  m.define("def forward(self, x):\n  return torch.relu(x @ self.w1) @ self.w2\n");
  return m;
}

// Inputs whose labels are the FP model's own predictions (top-1 100%).
Dataset predicted(torch::jit::Module& m, bool labeled) {
  Dataset d;
  d.inputs = {torch::randn({96, 8})};
  if (labeled) d.labels = m.forward({d.inputs[0]}).toTensor().argmax(1);
  return d;
}

double top1_of(torch::jit::Module& m, const Dataset& d) {
  torch::NoGradGuard no_grad;
  return m.forward({d.inputs[0]}).toTensor().argmax(1).eq(d.labels).to(torch::kDouble).mean().item<double>();
}

SensitivityOptions options(int64_t batch_size = 32) {
  SensitivityOptions o;
  o.batch_size = batch_size;
  return o;
}

}  // namespace

TEST_CASE("each layer's drop is the top-1 lost with it alone ternary, and the weights are put back") {
  auto m = two_layers();
  const Dataset data = predicted(m, true);
  const auto w1 = m.attr("w1").toTensor().clone(), w2 = m.attr("w2").toTensor().clone();
  const SensitivityReport r = measure_sensitivity(m, data, {}, options());
  CHECK(torch::equal(m.attr("w1").toTensor(), w1));
  CHECK(torch::equal(m.attr("w2").toTensor(), w2));
  REQUIRE(r.metric == SensitivityMetric::Top1);
  CHECK(r.fp_value == 1.0);
  REQUIRE(r.layers.size() == 2);
  for (const auto& l : r.layers) {
    auto copy = two_layers();  // the same seed: the same weights
    torch::Tensor w = copy.attr(l.layer.name).toTensor();
    ternarize_in_place(w, l.layer);
    CHECK(l.alone.drop == Approx((1.0 - top1_of(copy, data)) * 100).margin(1e-9));
    CHECK(l.bytes_saved == l.numel * 4 - ternary_bound_bytes(l.layer.counts));
    CHECK_FALSE(l.in_rule);  // two layers: the first and the last stay FP under quantize's rule
  }
  CHECK(r.rule.layers.empty());
  CHECK(r.rule.measured.drop == 0);
  CHECK(r.rule.bytes_entropy == r.model_bytes);
  REQUIRE(r.frontier.size() == 2);
  CHECK(r.frontier[0].bytes_entropy > r.frontier[1].bytes_entropy);
  CHECK(r.frontier[1].layers == std::vector<std::string>{"w1", "w2"});
  const auto cost = [&](size_t i) { return std::max(r.layers[i].alone.drop, 0.0) / r.layers[i].bytes_saved; };
  CHECK(cost(r.order[0]) <= cost(r.order[1]));
}

TEST_CASE("without labels the metric compares with the FP outputs, held or computed again alike") {
  auto m = two_layers();
  const Dataset data = predicted(m, false);
  const SensitivityReport held = measure_sensitivity(m, data, {}, options());
  SensitivityOptions again = options();
  again.reference_bytes = 0;  // nothing held: every batch's FP outputs computed again
  const SensitivityReport computed = measure_sensitivity(m, data, {}, again);
  CHECK(held.metric == SensitivityMetric::Agreement);
  CHECK(held.fp_value == 1.0);
  for (size_t i = 0; i < held.layers.size(); ++i) CHECK(held.layers[i].alone.value == computed.layers[i].alone.value);
  again.metric = SensitivityMetric::RelMse;
  const SensitivityReport rel = measure_sensitivity(m, data, {}, again);
  CHECK(rel.fp_value == 0);
  CHECK(rel.layers[0].alone.drop > 0);
  CHECK(rel.layers[0].alone.drop == Approx(100 * rel.layers[0].alone.value));
}

TEST_CASE("a metric the data cannot give is a usage error, and a layer whose outputs overflow goes last") {
  auto m = two_layers();
  const Dataset unlabeled = predicted(m, false);
  SensitivityOptions top1 = options();
  top1.metric = SensitivityMetric::Top1;
  CHECK(test::kind_of([&] { measure_sensitivity(m, unlabeled, {}, top1); }) == ErrorKind::Usage);

  // 1 / (x @ w): w = [1, 0.01] gives 100 on x = [0, 1]; ternary, 0.01 is below Δ and 1/0 is inf.
  torch::jit::Module reciprocal("Reciprocal");
  reciprocal.register_parameter("w", torch::tensor({{1.0f}, {0.01f}}), false);
  reciprocal.register_parameter("v", torch::randn({3, 3}), false);
  reciprocal.define("def forward(self, x):\n  return torch.cat([1.0 / (x[:, :2] @ self.w), x[:, 2:] @ self.v], 1)\n");
  Dataset d;
  d.inputs = {torch::tensor({{0.0f, 1.0f, 1.0f, 2.0f, 3.0f}})};
  SensitivityOptions rel = options();
  rel.metric = SensitivityMetric::RelMse;
  const SensitivityReport r = measure_sensitivity(reciprocal, d, {}, rel);
  REQUIRE(r.layers.size() == 2);
  CHECK(std::isinf(r.layers[0].alone.drop));
  CHECK(std::isnan(r.layers[0].alone.value));
  CHECK(r.layers[0].alone.nonfinite == 1.0);
  CHECK(r.order.back() == 0);
}

namespace {

// Four layers whose drops add up when ternary together, in a report as measure_sensitivity makes
// it: d saves the most per unit of drop but breaks a budget of 1 alone.
struct Additive {
  SensitivityReport r;
  std::vector<double> drop = {0.2, 1.5, 0.3, 3.0};
  std::vector<int64_t> saved = {100, 200, 100, 500};
  int evaluations = 0;

  Additive() {
    r.model_bytes = 1000;
    for (size_t i = 0; i < drop.size(); ++i) {
      LayerSensitivity l;
      l.layer.name = std::string(1, static_cast<char>('a' + i));
      l.alone.drop = drop[i];
      r.layers.push_back(l);
    }
    r.order = {3, 0, 1, 2};
    std::vector<size_t> set;
    for (const size_t i : r.order) {
      set.push_back(i);
      r.frontier.push_back(point(set));
    }
  }
  SetPoint point(const std::vector<size_t>& set) const {
    SetPoint p;
    p.bytes_entropy = r.model_bytes;
    for (const size_t i : set) p.bytes_entropy -= saved[i], p.measured.drop += drop[i];
    return p;
  }
  BudgetChoice choose(double max_drop) {
    Budget b;
    b.max_drop = max_drop;
    evaluations = 0;
    r.walk = walk_budget(r, max_drop, [&](const std::vector<size_t>& set) {
      ++evaluations;
      return point(set);
    });
    return choose_by_budget(r, b);
  }
};

}  // namespace

TEST_CASE("a budget of --max-drop walks past a frontier point that breaks it, trying each layer within it alone") {
  Additive t;
  BudgetChoice c = t.choose(1);  // d alone is 3.0: the frontier's first point is past the budget
  CHECK(c.ternary() == std::vector<std::string>{"a", "c"});
  CHECK(t.evaluations == 2);  // a, then a + c; b and d are beyond 1 alone
  CHECK(c.drop == Approx(0.5));
  CHECK(c.ratio == Approx(1000.0 / 800));
  CHECK(c.layers[1].reason == "beyond 1 alone");
  CHECK(c.layers[3].reason == "beyond 1 alone");

  c = t.choose(0.4);  // a + c is 0.5: c is tried and left out
  CHECK(c.ternary() == std::vector<std::string>{"a"});
  CHECK(c.layers[2].reason == "the set with it drops 0.50, beyond 0.4");

  c = t.choose(3.2);  // the frontier's d + a is within; b and c are tried after it and break it
  CHECK(c.ternary() == std::vector<std::string>{"a", "d"});
  CHECK(t.evaluations == 2);
  CHECK(c.drop == Approx(3.2));
  CHECK(c.layers[1].reason == "the set with it drops 4.70, beyond 3.2");

  CHECK(test::kind_of([&] { t.choose(0.1); }) == ErrorKind::Usage);
}

TEST_CASE("a budget of --target-ratio takes the first frontier point reaching it") {
  Additive t;
  Budget ratio;
  ratio.target_ratio = 2.2;  // d: 2x, d + a: 2.5x
  const BudgetChoice c = choose_by_budget(t.r, ratio);
  CHECK(c.ternary() == std::vector<std::string>{"a", "d"});
  CHECK(c.drop == Approx(3.2));
  CHECK(c.layers[2].reason == "not needed: 2.50x is reached without it");
  ratio.target_ratio = 11;  // every layer: 10x
  CHECK(test::kind_of([&] { choose_by_budget(t.r, ratio); }) == ErrorKind::Usage);
}

TEST_CASE("measured with --max-drop, the walk's set is evaluated as it is, and the weights are put back") {
  auto m = two_layers();
  const Dataset data = predicted(m, true);
  const auto w1 = m.attr("w1").toTensor().clone(), w2 = m.attr("w2").toTensor().clone();
  const SensitivityReport plain = measure_sensitivity(m, data, {}, options());
  SensitivityOptions o = options();
  o.max_drop = std::min(plain.layers[0].alone.drop, plain.layers[1].alone.drop);  // one layer fits alone
  const SensitivityReport r = measure_sensitivity(m, data, {}, o);
  CHECK(torch::equal(m.attr("w1").toTensor(), w1));
  CHECK(torch::equal(m.attr("w2").toTensor(), w2));
  REQUIRE(r.walk);
  REQUIRE_FALSE(r.walk->chosen.empty());
  CHECK(r.walk->set.measured.drop <= o.max_drop);
  auto copy = two_layers();
  for (const size_t i : r.walk->chosen) {
    torch::Tensor w = copy.attr(r.layers[i].layer.name).toTensor();
    ternarize_in_place(w, r.layers[i].layer);
  }
  CHECK(r.walk->set.measured.drop == Approx((1.0 - top1_of(copy, data)) * 100).margin(1e-9));
  CHECK_FALSE(plain.walk);
}
