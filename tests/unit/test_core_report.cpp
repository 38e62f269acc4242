// core/report: what inspect shows of real fixtures before and after quantization: planned layers of a
// dry run, ternary layers recognised by their values or their records, and the three sizes.
#include "catch.h"
#include "helpers.h"

#include "core/quantize.h"
#include "core/report.h"

using namespace ttq;
using ttq::test::fixture;

namespace {

std::vector<std::string> names_of(const ModelReport& r, LayerKind kind) {
  std::vector<std::string> out;
  for (const auto& l : r.layers)
    if (l.kind == kind) out.push_back(l.layer.name);
  return out;
}

int64_t numel_of(const torch::jit::Module& m) {
  int64_t n = 0;
  for (const auto& p : m.parameters()) n += p.numel();
  return n;
}

}  // namespace

TEST_CASE("a full-precision model is a dry run: the layers quantize would take, and its sizes") {
  const auto module = fixture("small_cnn.pt");
  const ModelReport r = inspect_module(module, std::nullopt, {});
  CHECK(r.dry_run);
  // Forward order; the first and the last layer stay full precision by default.
  CHECK(names_of(r, LayerKind::Planned) == std::vector<std::string>{"conv2.weight", "fc1.weight"});
  CHECK(names_of(r, LayerKind::FullPrecision) == std::vector<std::string>{"conv1.weight", "fc2.weight"});
  CHECK(r.layers[0].layer.name == "conv1.weight");
  const Totals& t = r.totals;
  CHECK(t.parameters == numel_of(module));
  CHECK(t.model_bytes == 4 * t.parameters);
  CHECK(t.coded_layers == 2);
  CHECK(t.coded_parameters == 8 * 16 * 25 + 256 * 32);
  // conv2 (3200 weights) and fc1 (8192) at 2 bits each, plus two float32 scales apiece.
  CHECK(t.bytes_2bit == t.model_bytes - 4 * t.coded_parameters + (3200 + 8192) / 4 + 2 * kScaleBytes);
  CHECK(t.ratio_2bit() == Approx(double(t.model_bytes) / t.bytes_2bit));
  for (const auto& l : r.layers)
    if (l.coded()) CHECK(l.layer.counts.total() == l.numel);
  CHECK(r.excluded.empty());
}

TEST_CASE("ternary layers are recognised by their records, or by their values without metadata") {
  auto module = fixture("small_cnn.pt");
  const auto records = quantize_module(module, {});
  const ModelReport with = inspect_module(module, records, {});
  CHECK_FALSE(with.dry_run);
  CHECK(names_of(with, LayerKind::Ternary) == std::vector<std::string>{"conv2.weight", "fc1.weight"});
  for (const auto& l : with.layers) {
    if (!l.coded()) continue;
    CHECK(l.delta_known);
    const LayerRecord& rec = *find_layer(records, l.layer.name);
    CHECK(l.layer.counts.zero == rec.counts.zero);
    CHECK(l.layer.delta == rec.delta);
    CHECK(l.bits() < 2.0);
  }
  CHECK(with.totals.bytes_entropy < with.totals.bytes_2bit);

  const ModelReport by_value = inspect_module(module, std::nullopt, {});
  CHECK(names_of(by_value, LayerKind::Ternary) == names_of(with, LayerKind::Ternary));
  for (const auto& l : by_value.layers) CHECK_FALSE(l.delta_known);
  CHECK(by_value.totals.bytes_entropy == with.totals.bytes_entropy);
}

TEST_CASE("a record whose weights are no longer ternary shows the layer as full precision") {
  auto module = fixture("small_cnn.pt");
  auto records = quantize_module(module, {});
  records[0].wp *= 2;  // the file was edited after quantization: its levels are not the record's
  const ModelReport r = inspect_module(module, records, {});
  CHECK(names_of(r, LayerKind::Ternary) == std::vector<std::string>{"fc1.weight"});
}

TEST_CASE("parameters that are not layer weights are listed with the op that uses them") {
  // TextClassifier's learned position embedding is added to the token embeddings.
  const ModelReport r = inspect_module(fixture("text_classifier.pt"), std::nullopt, {});
  REQUIRE(r.excluded.size() == 1);
  CHECK(r.excluded[0].name == "pos");
  CHECK(r.excluded[0].shape == std::vector<int64_t>{1, 16, 32});
  CHECK(r.excluded[0].use == "add");
  for (const auto& l : r.layers) CHECK(l.layer.name != "pos");
}
