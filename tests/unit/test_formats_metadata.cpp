// formats/metadata: the TTQ metadata document of real quantized fixtures.
#include "catch.h"
#include "helpers.h"

#include "core/quantize.h"
#include "formats/metadata.h"

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
