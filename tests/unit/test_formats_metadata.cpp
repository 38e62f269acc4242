// formats/metadata: the TTQ metadata document of real quantized fixtures.
#include "catch.h"
#include "helpers.h"

#include "core/quantize.h"
#include "formats/metadata.h"

#include <cmath>
#include <limits>

using namespace ttq;
using ttq::test::fixture;
using ttq::test::kind_of;

TEST_CASE("TTQ metadata survives a JSON round trip - malformed text is an input error") {
  auto module = fixture("small_cnn.pt");
  ModelMetadata meta;
  meta.layers = quantize_module(module, {});
  meta.command = "quantize";
  const ModelMetadata back = metadata_from_json(metadata_to_json(meta), "test");
  REQUIRE(back.layers.size() == meta.layers.size());
  for (size_t i = 0; i < meta.layers.size(); ++i) {
    CHECK(back.layers[i].name == meta.layers[i].name);
    CHECK(back.layers[i].shape == meta.layers[i].shape);
    CHECK(back.layers[i].wp == meta.layers[i].wp);
    CHECK(back.layers[i].wn == meta.layers[i].wn);
    CHECK(back.layers[i].delta == meta.layers[i].delta);
    CHECK(back.layers[i].counts.zero == meta.layers[i].counts.zero);
  }
  CHECK(back.command == "quantize");
  CHECK(back.options.threshold.value == meta.options.threshold.value);
  CHECK(kind_of([] { metadata_from_json("{not json", "x"); }) == ErrorKind::Input);
  CHECK(kind_of([] { metadata_from_json(R"({"format":"ttq-metadata","version":99})", "x"); }) == ErrorKind::Input);
  CHECK(kind_of([] { metadata_from_json(R"({"format":"ttq-metadata","version":1})", "x"); }) == ErrorKind::Input);
}

TEST_CASE("a budget's choice and the selection it made survive the round trip, an infinite drop too") {
  ModelMetadata meta;
  meta.command = "quantize";
  meta.options.selection.only = {"conv2.weight", "fc1.weight"};
  BudgetChoice c;
  c.budget = "--max-drop 1";
  c.metric = SensitivityMetric::Top1;
  c.data = "tensors:x.pt";
  c.samples = 600;
  c.fp_value = 0.8;
  c.drop = 0.5;
  c.ratio = 3.25;
  c.layers = {{"conv1.weight", std::numeric_limits<double>::infinity(), false, "its outputs are not finite alone"},
              {"conv2.weight", 0.25, true, ""}};
  meta.budget = c;
  const ModelMetadata back = metadata_from_json(metadata_to_json(meta), "test");
  CHECK(back.options.selection.only == meta.options.selection.only);
  REQUIRE(back.budget);
  CHECK(back.budget->budget == c.budget);
  CHECK(back.budget->metric == c.metric);
  CHECK(back.budget->samples == 600);
  CHECK(back.budget->ratio == 3.25);
  REQUIRE(back.budget->layers.size() == 2);
  CHECK(std::isinf(back.budget->layers[0].drop));
  CHECK(back.budget->layers[0].reason == c.layers[0].reason);
  CHECK(back.budget->ternary() == std::vector<std::string>{"conv2.weight"});
  CHECK_FALSE(metadata_from_json(metadata_to_json(ModelMetadata{}), "test").budget);
}
