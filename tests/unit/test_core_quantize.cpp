// core/quantize: the layer plan shared by quantize, finetune and inspect, and one-shot
// ternarization, on real TorchScript fixtures.
#include "catch.h"
#include "helpers.h"

#include "core/quantize.h"

using namespace ttq;
using ttq::test::fixture;
using ttq::test::kind_of;

namespace {

std::vector<std::string> names(const std::vector<LayerRecord>& layers) {
  std::vector<std::string> out;
  for (const auto& l : layers) out.push_back(l.name);
  return out;
}

}  // namespace

TEST_CASE("init auto: ones for a finetune run whose every ternary layer feeds a normalization") {
  const auto resnet = fixture("resnet18.pt");  // BatchNorm after every convolution; conv1 and fc stay FP
  QuantizeOptions options;
  options.init = ScaleInit::Auto;
  const LayerPlan finetune = plan_layers(resnet, options, PlanPurpose::Finetune);
  CHECK(finetune.init == ScaleInit::Ones);
  CHECK(finetune.every_layer_normalized);
  CHECK(finetune.init_reason == "a normalization follows every ternary layer");
  REQUIRE(finetune.layers.size() == 19);
  CHECK(finetune.layers.front().wp == 1.0f);
  // One-shot quantization trains no scale: auto is mean there.
  const LayerPlan quantize = plan_layers(resnet, options, PlanPurpose::Quantize);
  CHECK(quantize.init == ScaleInit::Mean);
  CHECK(quantize.layers.front().wp != 1.0f);
}

TEST_CASE("init auto: mean where no normalization follows, with the reason naming a layer") {
  QuantizeOptions options;
  options.init = ScaleInit::Auto;
  const LayerPlan plan = plan_layers(fixture("small_cnn.pt"), options, PlanPurpose::Finetune);
  CHECK(plan.init == ScaleInit::Mean);
  CHECK_FALSE(plan.every_layer_normalized);
  CHECK(plan.init_reason == "no normalization takes the output of 2 of 2 ternary layers (conv2.weight, ...)");
  CHECK(names(plan.layers) == std::vector<std::string>{"conv2.weight", "fc1.weight"});
  REQUIRE(plan.weights.size() == 2);
  CHECK(plan.weights[0].sizes().vec() == std::vector<int64_t>{16, 8, 5, 5});
}

TEST_CASE("the plan validates the threshold and the selection, except in a dry run") {
  const auto cnn = fixture("small_cnn.pt");
  QuantizeOptions bad;
  bad.threshold = {ThresholdMode::MaxScaled, 1.5};
  for (auto purpose : {PlanPurpose::Quantize, PlanPurpose::Finetune, PlanPurpose::DryRun})
    CHECK(kind_of([&] { plan_layers(cnn, bad, purpose); }) == ErrorKind::Usage);
  QuantizeOptions nothing;
  nothing.selection.include = {"no-such-layer"};
  CHECK(kind_of([&] { plan_layers(cnn, nothing, PlanPurpose::Quantize); }) == ErrorKind::Usage);
  const LayerPlan dry = plan_layers(cnn, nothing, PlanPurpose::DryRun);  // inspect shows the model float
  CHECK(dry.layers.empty());
  CHECK(dry.candidates.size() == 4);
  CHECK(kind_of([] { plan_layers(fixture("nonfinite_cnn.pt"), {}, PlanPurpose::Finetune); }) == ErrorKind::Input);
}

TEST_CASE("quantize_module writes the plan's records into the weights") {
  auto module = fixture("small_cnn.pt");
  QuantizeOptions options;
  options.threshold = {ThresholdMode::Sparsity, 0.3};
  const LayerPlan plan = plan_layers(module, options, PlanPurpose::Quantize);
  const std::vector<LayerRecord> layers = quantize_module(module, options);
  REQUIRE(layers.size() == plan.layers.size());
  for (size_t i = 0; i < layers.size(); ++i) {
    CHECK(layers[i].name == plan.layers[i].name);
    CHECK(layers[i].delta == plan.layers[i].delta);
    CHECK(layers[i].wp == plan.layers[i].wp);
    CHECK(layers[i].wn == plan.layers[i].wn);
  }
}

TEST_CASE("quantize_module ternarizes the selected weights and leaves every other tensor untouched") {
  auto module = fixture("small_cnn.pt");
  std::map<std::string, torch::Tensor> before;
  for (const auto& p : module.named_parameters()) before[p.name] = p.value.detach().clone();

  QuantizeOptions options;
  options.threshold = {ThresholdMode::Sparsity, 0.5};
  const std::vector<LayerRecord> layers = quantize_module(module, options);
  REQUIRE(layers.size() == 2);
  for (const auto& p : module.named_parameters()) {
    const LayerRecord* r = find_layer(layers, p.name);
    CAPTURE(p.name);
    if (!r) {
      CHECK(torch::equal(p.value, before[p.name]));
      continue;
    }
    const auto& w = p.value;
    CHECK(((w == r->wp) | (w == 0) | (w == -r->wn)).all().item<bool>());
    CHECK((w == 0).sum().item<int64_t>() == w.numel() / 2);
    CHECK(r->counts.total() == w.numel());
    CHECK(r->wp == Approx(before[p.name].masked_select(before[p.name] > r->delta).mean().item<double>()));
  }
}

