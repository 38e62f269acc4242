// formats/archive: .ttqz archives of real quantized models: ternary layers bit-exact at every float
// storage, narrowed full-precision tensors as their dtype rounds them, and weights that no longer
// match their records refused.
#include "catch.h"
#include "helpers.h"

#include "core/quantize.h"
#include "formats/archive.h"

using namespace ttq;
using ttq::test::fixture;
using ttq::test::fresh_folder;
using ttq::test::kind_of;

namespace {

struct Quantized {
  torch::jit::Module module;
  ModelMetadata meta;
};

Quantized quantized(const std::string& name) {
  Quantized q{fixture(name), {}};
  q.meta.layers = quantize_module(q.module, {});
  q.meta.command = "quantize";
  return q;
}

}  // namespace

TEST_CASE("ternary layers stay bit-exact at every float storage - the rest rounds as its dtype does") {
  const auto dir = fresh_folder("archive");
  const Quantized q = quantized("fashion_cnn.pt");
  std::map<FpDtype, uintmax_t> sizes;
  for (const auto& choice : kFpDtypes) {
    CAPTURE(choice.name);
    const std::string path = (dir / (std::string(choice.name) + ".ttqz")).string();
    write_archive(q.module, q.meta, {3, choice.value}, path);
    sizes[choice.value] = std::filesystem::file_size(path);
    const LoadedModel back = read_archive(path);
    REQUIRE(back.metadata);
    CHECK(back.metadata->layers.size() == q.meta.layers.size());
    const auto restored = back.module.named_parameters();
    for (const auto& p : q.module.named_parameters()) {
      CAPTURE(p.name);
      torch::Tensor got;
      for (const auto& r : restored)
        if (r.name == p.name) got = r.value;
      REQUIRE(got.defined());
      CHECK(got.scalar_type() == torch::kFloat32);
      const bool ternary = find_layer(q.meta.layers, p.name) != nullptr;
      const auto narrowed = choice.value == FpDtype::Float16    ? p.value.to(torch::kFloat16).to(torch::kFloat32)
                            : choice.value == FpDtype::BFloat16 ? p.value.to(torch::kBFloat16).to(torch::kFloat32)
                                                                 : p.value;
      CHECK(torch::equal(got, ternary ? p.value : narrowed));
    }
  }
  // fc1 and conv1 (the first layer) stay float32: narrowing halves them.
  CHECK(sizes[FpDtype::Float16] < sizes[FpDtype::Float32]);
  CHECK(sizes[FpDtype::BFloat16] < sizes[FpDtype::Float32]);
  std::filesystem::remove_all(dir);
}

TEST_CASE("a loaded archive runs as the model it was written from") {
  const auto dir = fresh_folder("archive_run");
  Quantized q = quantized("small_cnn.pt");
  const std::string path = (dir / "m.ttqz").string();
  write_archive(q.module, q.meta, {}, path);
  auto module = load_archive(path);
  const auto x = torch::randn({3, 1, 28, 28});
  CHECK(torch::equal(module.forward({x}).toTensor(), q.module.forward({x}).toTensor()));
  std::filesystem::remove_all(dir);
}

TEST_CASE("weights that are not their record's levels, or non-finite scales, are refused and nothing is written") {
  const auto dir = fresh_folder("archive_refused");
  const std::string path = (dir / "m.ttqz").string();
  Quantized q = quantized("small_cnn.pt");
  ModelMetadata moved = q.meta;
  moved.layers[0].wp *= 1.5f;
  CHECK_THROWS_WITH(write_archive(q.module, moved, {}, path),
                    Catch::Contains("of layer conv2.weight is"));
  CHECK(kind_of([&] { write_archive(q.module, moved, {}, path); }) == ErrorKind::Input);
  ModelMetadata infinite = q.meta;
  infinite.layers[1].wn = std::numeric_limits<float>::infinity();
  CHECK_THROWS_WITH(write_archive(q.module, infinite, {}, path), Catch::Contains("layer fc1.weight has a non-finite scale"));
  CHECK_FALSE(std::filesystem::exists(path));
  std::filesystem::remove_all(dir);
}
