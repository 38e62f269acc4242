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

TEST_CASE("a budget of --max-drop takes the largest frontier set within it, --target-ratio the first reaching it") {
  SensitivityReport r;
  r.model_bytes = 1000;
  for (const char* name : {"a", "b", "c"}) {
    LayerSensitivity l;
    l.layer.name = name;
    r.layers.push_back(l);
  }
  r.order = {2, 0, 1};
  const auto point = [](int64_t bytes, double drop) {
    SetPoint p;
    p.bytes_entropy = bytes;
    p.measured.drop = drop;
    return p;
  };
  r.frontier = {point(500, 0.2), point(300, 1.5), point(100, 0.9)};  // noisy: the third is within 1 again
  Budget b;
  b.max_drop = 1;
  BudgetChoice c = choose_by_budget(r, b);
  CHECK(c.ternary() == std::vector<std::string>{"a", "b", "c"});
  CHECK(c.ratio == 10);
  b.max_drop = 0.5;
  c = choose_by_budget(r, b);
  CHECK(c.ternary() == std::vector<std::string>{"c"});
  CHECK(c.layers[0].reason.find("drops 1.50, beyond 0.5") != std::string::npos);  // "a", the second added
  b.max_drop = 0.1;
  CHECK(test::kind_of([&] { choose_by_budget(r, b); }) == ErrorKind::Usage);

  Budget ratio;
  ratio.target_ratio = 3;
  c = choose_by_budget(r, ratio);
  CHECK(c.ternary() == std::vector<std::string>{"a", "c"});
  CHECK(c.drop == 1.5);
  ratio.target_ratio = 11;
  CHECK(test::kind_of([&] { choose_by_budget(r, ratio); }) == ErrorKind::Usage);
}
