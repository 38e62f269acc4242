// core/objective: the distillation losses and the teacher metrics against their definitions
// computed here with plain tensor ops, output selection, and the resolution of `auto` options.
#include "catch.h"
#include <torch/nn/functional/loss.h>

#include "core/error.h"
#include "core/objective.h"

using namespace ttq;

namespace {

// A teacher whose forward returns its input times a fixed matrix: scripted from source.
torch::jit::Module linear_teacher(const torch::Tensor& w) {
  torch::jit::Module m("Teacher");
  m.register_buffer("w", w);
  m.define("def forward(self, x):\n  return x @ self.w\n");
  return m;
}

ObjectiveOptions distill(DistillLoss loss, double alpha) {
  ObjectiveOptions o;
  o.distill = true;
  o.loss = loss;
  o.alpha = alpha;
  o.temperature = 2;
  return o;
}

}  // namespace

TEST_CASE("kl is T² · KL(teacher ‖ student) at temperature T, mixed with cross-entropy by alpha") {
  torch::manual_seed(1);
  const auto x = torch::randn({6, 4}), w = torch::randn({4, 5});
  const auto student = torch::randn({6, 5}), labels = torch::tensor({0, 1, 2, 3, 4, 0});
  Metrics m;
  const Objective objective(distill(DistillLoss::Kl, 0.3), linear_teacher(w));
  const double loss = objective(student, {x}, labels, m).item<double>();
  const auto pt = torch::softmax(x.matmul(w) / 2, 1), ps = torch::softmax(student / 2, 1);
  const double kl = (pt * (pt.log() - ps.log())).sum(1).mean().item<double>() * 4;
  const double ce = torch::nn::functional::cross_entropy(student, labels).item<double>();
  CHECK(loss == Approx(0.7 * ce + 0.3 * kl).epsilon(1e-5));
  CHECK(m.distill == Approx(6 * kl).epsilon(1e-5));
  CHECK(m.ce == Approx(6 * ce).epsilon(1e-5));
  CHECK(m.labeled == 6);
}

TEST_CASE("mse, agreement and rel_mse over a split, and a tuple output distilled on every tensor") {
  torch::manual_seed(2);
  const auto x = torch::randn({8, 3}), w = torch::randn({3, 3});
  const auto teacher_out = x.matmul(w);
  const auto student = teacher_out + 0.1 * torch::randn({8, 3});
  Metrics m;
  const Objective objective(distill(DistillLoss::Mse, 1), linear_teacher(w));
  const double loss = objective(student, {x}, torch::Tensor(), m).item<double>();
  CHECK(loss == Approx((student - teacher_out).pow(2).mean().item<double>()).epsilon(1e-5));
  const Metrics a = averaged(m);
  REQUIRE(a.agreement);
  CHECK(*a.agreement == Approx(student.argmax(1).eq(teacher_out.argmax(1)).to(torch::kDouble).mean().item<double>()));
  const double rel = ((student - teacher_out).pow(2).sum() / (teacher_out - teacher_out.mean()).pow(2).sum()).item<double>();
  REQUIRE(a.rel_mse);
  CHECK(*a.rel_mse == Approx(rel).epsilon(1e-4));
  CHECK_FALSE(a.has_labels());
  // A single output column has no classes to agree on.
  Metrics one;
  Objective(distill(DistillLoss::Mse, 1), linear_teacher(torch::randn({3, 1})))(torch::randn({8, 1}), {x}, {}, one);
  CHECK_FALSE(averaged(one).agreement);
}

TEST_CASE("outputs: every floating tensor of a tuple or dict, or the one named") {
  const auto a = torch::ones({2, 3}), b = torch::zeros({2, 4});
  const c10::IValue tuple = c10::ivalue::Tuple::create({a, torch::arange(2), b});
  CHECK(output_tensors(tuple, "").size() == 2);  // the integer tensor is left out
  CHECK(torch::equal(output_tensors(tuple, "2").at(0), b));
  CHECK_THROWS_WITH(output_tensors(tuple, "1"), Catch::Contains("not a floating tensor"));
  CHECK_THROWS_WITH(output_tensors(tuple, "5"), Catch::Contains("has no element 5"));
  c10::Dict<std::string, torch::Tensor> dict;
  dict.insert("logits", a);
  dict.insert("embedding", b);
  CHECK(torch::equal(output_tensors(c10::IValue(dict), "embedding").at(0), b));
  CHECK_THROWS_WITH(classifier_scores(output_tensors(c10::IValue(dict), "")), Catch::Contains("--model-output"));
}

TEST_CASE("auto options are decided by the presence of labels, and out-of-range values refused") {
  ObjectiveOptions o;
  o.distill = true;
  CHECK(resolve(o, true).loss == DistillLoss::Kl);
  CHECK(resolve(o, true).alpha == 0.5);
  CHECK(resolve(o, false).loss == DistillLoss::Mse);
  CHECK(resolve(o, false).alpha == 1);
  CHECK(resolve(ObjectiveOptions{}, true).alpha == 0);  // no teacher: cross-entropy alone
  o.alpha = 1.5;
  CHECK_THROWS_WITH(resolve(o, true), Catch::Contains("--distill-alpha must be in [0, 1]"));
  o.alpha = 0.5;
  CHECK_THROWS_WITH(resolve(o, false), Catch::Contains("the data has none"));
  o.temperature = 0;
  CHECK_THROWS_WITH(resolve(o, true), Catch::Contains("--distill-temperature must be positive"));
}

TEST_CASE("the metrics table lists what a split measured, in one order, fractions marked") {
  Metrics labeled;
  labeled.labeled = 10, labeled.loss = 0.5, labeled.top1 = 0.8, labeled.top5 = 0.9, labeled.ce = 0.4,
  labeled.distill = 0.1;
  const auto row_names = [](const std::vector<MetricValue>& rows) {
    std::vector<std::string> out;
    for (const auto& r : rows) out.push_back(r.name);
    return out;
  };
  CHECK(row_names(measured_metrics(labeled, false)) == std::vector<std::string>{"loss", "top1", "top5"});
  CHECK(row_names(measured_metrics(labeled, true)) ==
        std::vector<std::string>{"loss", "top1", "top5", "ce", "distill"});
  Metrics teacher_only;  // unlabeled, against a teacher
  teacher_only.agreement = 0.75, teacher_only.rel_mse = 0.01;
  const auto rows = measured_metrics(teacher_only, true);
  CHECK(row_names(rows) == std::vector<std::string>{"loss", "agreement", "rel_mse"});
  CHECK(rows[1].value == 0.75);
  CHECK(rows[1].fraction);
  CHECK_FALSE(rows[2].fraction);
  CHECK(is_fraction("val_top5"));
  CHECK(is_fraction("train_top1"));
  CHECK(is_fraction("agreement"));
  CHECK_FALSE(is_fraction("val_rel_mse"));
  CHECK_FALSE(is_fraction("lr"));
}
