// core/layers on real TorchScript fixtures (scripts/make_fixtures.py).
#include "catch.h"
#include "helpers.h"

#include "core/error.h"
#include "core/layers.h"

using namespace ttq;
using ttq::test::fixture;
using ttq::test::kind_of;

namespace {

std::vector<std::string> names(const std::vector<Candidate>& cs, bool selected_only = false) {
  std::vector<std::string> out;
  for (const auto& c : cs)
    if (!selected_only || c.selected) out.push_back(c.name);
  return out;
}

}  // namespace

TEST_CASE("candidates come in forward order and not registration order") {
  // small_cnn registers fc2, fc1, conv2, conv1 in that order.
  const auto cs = find_candidates(fixture("small_cnn.pt"));
  CHECK(names(cs) == std::vector<std::string>{"conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"});
}

TEST_CASE("resnet18 has 20 convolutions and the classifier - BatchNorm and biases are not candidates") {
  const auto cs = find_candidates(fixture("resnet18.pt"));
  REQUIRE(cs.size() == 21);
  CHECK(cs.front().name == "conv1.weight");
  CHECK(cs.back().name == "fc.weight");
  for (const auto& c : cs) {
    CHECK(c.weight.dim() >= 2);
    CHECK(c.name.find("bn") == std::string::npos);
  }
  // The downsample conv of layer2 is read after the block's two main convolutions.
  const auto n = names(cs);
  const auto at = [&](const std::string& s) { return std::find(n.begin(), n.end(), s) - n.begin(); };
  CHECK(at("layer2.0.conv1.weight") < at("layer2.0.conv2.weight"));
  CHECK(at("layer2.0.conv2.weight") < at("layer2.0.downsample.0.weight"));
  CHECK(at("layer2.0.downsample.0.weight") < at("layer2.1.conv1.weight"));
}

TEST_CASE("selection: first and last stay FP by default - flags and regexes change that") {
  auto cs = find_candidates(fixture("small_cnn.pt"));
  apply_selection(cs, {});
  CHECK(names(cs, true) == std::vector<std::string>{"conv2.weight", "fc1.weight"});

  apply_selection(cs, {{}, {}, true, true});
  CHECK(names(cs, true).size() == 4);

  apply_selection(cs, {{"^fc"}, {}, true, true});
  CHECK(names(cs, true) == std::vector<std::string>{"fc1.weight", "fc2.weight"});

  apply_selection(cs, {{}, {"conv", "fc2"}, true, true});
  CHECK(names(cs, true) == std::vector<std::string>{"fc1.weight"});

  CHECK(kind_of([&] { apply_selection(cs, {{"("}, {}, false, false}); }) == ErrorKind::Usage);
  CHECK(kind_of([&] { apply_selection(cs, {{"nothing-matches"}, {}, false, false}); }) == ErrorKind::Usage);
}

TEST_CASE("a model with nothing to quantize is an input error - a lone layer needs a flag") {
  auto none = find_candidates(fixture("no_quantizable.pt"));
  CHECK(none.empty());
  CHECK(kind_of([&] { apply_selection(none, {}); }) == ErrorKind::Input);

  auto one = find_candidates(fixture("one_layer.pt"));
  REQUIRE(one.size() == 1);
  CHECK(kind_of([&] { apply_selection(one, {}); }) == ErrorKind::Usage);
  apply_selection(one, {{}, {}, true, true});
  CHECK(one[0].selected);
}

TEST_CASE("a weight computed from latent weights and scales keeps autograd flowing through the module") {
  auto module = fixture("small_cnn.pt");
  module.train();
  torch::manual_seed(9);
  const auto input = torch::randn({4, 1, 28, 28});
  const auto original = module.attr("conv2").toModule().attr("weight").toTensor().detach().clone();
  const float delta = compute_threshold(original, {});

  auto latent = original.clone().requires_grad_(true);
  auto wp = torch::full({}, 0.05f).requires_grad_(true);
  auto wn = torch::full({}, 0.07f).requires_grad_(true);
  set_parameter(module, "conv2.weight", ternarize(latent, wp, wn, delta));
  module.forward({input}).toTensor().pow(2).sum().backward();
  REQUIRE(latent.grad().defined());
  REQUIRE(wp.grad().defined());
  REQUIRE(wn.grad().defined());

  // Reference: the same ternary weight as a leaf gives g = dL/dw_t; the TTQ rule maps it back.
  const auto leaf = ternarize(original, wp.detach(), wn.detach(), delta).requires_grad_(true);
  set_parameter(module, "conv2.weight", leaf);
  module.forward({input}).toTensor().pow(2).sum().backward();
  const auto g = leaf.grad();
  const auto pos = original > delta;
  const auto neg = original < -delta;
  const auto scale = torch::where(pos, wp.detach(), torch::where(neg, wn.detach(), torch::ones({})));
  CHECK(torch::allclose(latent.grad(), g * scale, 1e-5, 1e-7));
  CHECK(wp.grad().item<double>() == Approx(g.masked_select(pos).sum().item<double>()).epsilon(1e-5));
  CHECK(wn.grad().item<double>() == Approx(-g.masked_select(neg).sum().item<double>()).epsilon(1e-5));
  CHECK(latent.grad().abs().sum().item<double>() > 0.0);
}

TEST_CASE("candidates are chosen by their use in forward: layer weights but not tokens or scales") {
  const auto vit = analyze_layers(fixture("vit_small.pt"));
  const auto n = names(vit.candidates);
  CHECK(n.front() == "conv_proj.weight");
  CHECK(n.back() == "heads.head.weight");
  CHECK(std::count(n.begin(), n.end(), "encoder.layers.encoder_layer_0.self_attention.in_proj_weight") == 1);
  CHECK(std::count(n.begin(), n.end(), "encoder.layers.encoder_layer_1.mlp.3.weight") == 1);
  REQUIRE(vit.excluded.size() == 2);
  CHECK(vit.excluded[0].name == "class_token");
  CHECK(vit.excluded[0].use == "expand");
  CHECK(vit.excluded[1].name == "encoder.pos_embedding");
  CHECK(vit.excluded[1].use == "add");

  const auto convnext = analyze_layers(fixture("convnext_small.pt"));
  REQUIRE(convnext.excluded.size() == 2);
  for (const auto& e : convnext.excluded) {
    CHECK(e.name.find("layer_scale") != std::string::npos);
    CHECK(e.use == "mul");
  }
  CHECK(convnext.candidates.size() == 9);  // stem, 2 × (depthwise conv + 2 linear), downsampling conv, classifier

  // An RNN reads its weights as a list (_flat_weights): they are candidates, in forward order.
  const auto tagger = analyze_layers(fixture("lstm_tagger.pt"));
  CHECK(names(tagger.candidates) ==
        std::vector<std::string>{"emb.weight", "lstm.weight_ih_l0", "lstm.weight_hh_l0", "out.weight"});
  CHECK(tagger.excluded.empty());
}

TEST_CASE("a layer is normalized when a BatchNorm or LayerNorm takes its output directly") {
  // ResNet-18: every convolution feeds a BatchNorm; the classifier does not.
  for (const auto& c : find_candidates(fixture("resnet18.pt"))) CHECK(c.normalized == (c.name != "fc.weight"));
  // A Transformer encoder layer adds the residual before its LayerNorm: nothing is normalized directly.
  for (const auto& c : find_candidates(fixture("text_classifier.pt"))) CHECK_FALSE(c.normalized);
}

TEST_CASE("setting an LSTM weight also sets its place in _flat_weights, which forward reads") {
  auto m = fixture("lstm_tagger.pt");
  const auto ids = torch::randint(0, 100, {3, 7}, torch::kInt64);
  const auto before = m.forward({ids}).toTensor();
  auto slot = find_slot(m, "lstm.weight_hh_l0");
  REQUIRE(slot.list_places.size() == 1);
  const auto weight = m.attr("lstm").toModule().attr("weight_hh_l0").toTensor();
  slot.set(torch::zeros_like(weight));
  const auto flat = m.attr("lstm").toModule().attr("_flat_weights").toList();
  CHECK(torch::equal(flat.get(slot.list_places[0].second).toTensor(), torch::zeros_like(weight)));
  CHECK_FALSE(torch::allclose(m.forward({ids}).toTensor(), before));
}
