// core/packed_model: the plan's decisions (which layers run packed, which stay float and why), the
// codes it registers and the way back, on real TorchScript fixtures.
#include "catch.h"
#include "helpers.h"

#include "core/packed_model.h"
#include "core/quantize.h"

#include <sstream>

using namespace ttq;
using ttq::test::fixture;
using ttq::test::kind_of;

namespace {

// A fixture quantized with every layer selected, and its records.
std::pair<torch::jit::Module, std::vector<LayerRecord>> ternary(const std::string& name) {
  auto module = fixture(name);
  QuantizeOptions options;
  options.selection.quantize_first = options.selection.quantize_last = true;
  auto layers = quantize_module(module, options);
  // Reloaded, as export reads a quantized file (packing the very module quantize_module changed fails
  // in its forward: not a path ttq takes; see the closing note of the consolidation issue).
  std::stringstream file;
  module.save(file);
  return {torch::jit::load(file), layers};
}

std::vector<std::string> float_uses(const PackReport& report) {
  std::vector<std::string> out;
  for (const auto& f : report.kept_float) out.push_back(f.name + " " + f.use);
  return out;
}

}  // namespace

TEST_CASE("linear and conv2d uses run packed, embeddings and an LSTM's weight list stay float") {
  auto [text, text_layers] = ternary("text_classifier.pt");
  const PackReport t = pack_module(text, text_layers);
  CHECK(float_uses(t) == std::vector<std::string>{"emb.weight embedding"});
  CHECK(t.kept_float.front().shape == std::vector<int64_t>{200, 32});
  CHECK(t.packed.size() == text_layers.size() - 1);
  CHECK(t.packed.back() == "head.weight");

  auto [tagger, tagger_layers] = ternary("lstm_tagger.pt");
  const PackReport l = pack_module(tagger, tagger_layers);
  CHECK(float_uses(l) == std::vector<std::string>{"emb.weight embedding", "lstm.weight_ih_l0 list",
                                                  "lstm.weight_hh_l0 list"});
  CHECK(l.packed == std::vector<std::string>{"out.weight"});
}

TEST_CASE("a packed model computes the ternary model's outputs and gives its weights back bit-exactly") {
  for (auto activations : {Activations::Float, Activations::Int8}) {
    auto [module, layers] = ternary("small_cnn.pt");
    auto reference = ternary("small_cnn.pt").first;  // the same ternary model, run apart
    const auto x = torch::randn({3, 1, 28, 28});
    const auto want = reference.forward({x}).toTensor();
    std::map<std::string, torch::Tensor> weights;
    for (const auto& p : module.named_parameters()) weights[p.name] = p.value.detach().clone();
    auto& packed = module;  // its forward's outputs and weights are kept above
    const PackReport report = pack_module(packed, layers, activations);
    CHECK(report.packed == std::vector<std::string>{"conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"});
    CHECK(report.kept_float.empty());
    check_packed_layers(packed, layers, report.packed);
    for (const auto& layer : layers) {
      CAPTURE(layer.name);
      CHECK(torch::equal(unpacked_weight(packed, layer, activations), weights[layer.name]));
    }
    const auto got = packed.forward({x}).toTensor();
    const double tolerance = activations == Activations::Float ? 1e-4 : 0.05;
    CHECK((got - want).abs().max().item<double>() <= tolerance * want.abs().max().item<double>());
  }
}

TEST_CASE("tap-major codes are for the convolutions of int8 models only") {
  CHECK(tap_major({16, 8, 5, 5}, Activations::Int8));
  CHECK_FALSE(tap_major({16, 8, 5, 5}, Activations::Float));
  CHECK_FALSE(tap_major({32, 256}, Activations::Int8));
}

TEST_CASE("weights that are not their record's levels, and a model without forward, are input errors") {
  auto [module, layers] = ternary("small_cnn.pt");
  auto wrong = layers;
  wrong[1].wp *= 2;
  CHECK(kind_of([&] { pack_module(module, wrong); }) == ErrorKind::Input);
  torch::jit::Module empty("Empty");
  CHECK(kind_of([&] { pack_module(empty, {}); }) == ErrorKind::Input);
}
