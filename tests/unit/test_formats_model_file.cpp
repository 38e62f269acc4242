// formats/model_file: every kind of model file ttq reads told apart by its first bytes, opened through
// one entry point, and packed models both as stored and as the float32 model they were packed from.
#include "catch.h"
#include "helpers.h"

#include "core/packed_model.h"
#include "core/quantize.h"
#include "formats/archive.h"
#include "formats/model_file.h"

using namespace ttq;
using ttq::test::fixture;
using ttq::test::fixture_path;
using ttq::test::fresh_folder;
using ttq::test::kind_of;

namespace {

// The small CNN quantized, written as ttq TorchScript, as a .ttqz archive and packed (as export
// --format packed writes it) into `dir`.
struct Written {
  std::string torchscript, archive, packed;
  torch::jit::Module ternary;
};

Written write_all(const std::filesystem::path& dir) {
  Written w{(dir / "q.pt").string(), (dir / "q.ttqz").string(), (dir / "q.packed.pt").string(), fixture("small_cnn.pt")};
  ModelMetadata meta;
  meta.layers = quantize_module(w.ternary, {});
  meta.command = "quantize";
  save_torchscript(w.ternary, meta, w.torchscript);
  write_archive(w.ternary, meta, {}, w.archive);
  auto to_pack = load_torchscript(w.torchscript).module;
  const std::string program = program_without_tensors(to_pack);
  meta.packed = pack_module(to_pack, meta.layers).packed;
  meta.activations = "float";
  save_torchscript(to_pack, meta, w.packed, program);
  return w;
}

bool same_parameters(const torch::jit::Module& a, const torch::jit::Module& b) {
  std::vector<std::pair<std::string, torch::Tensor>> pa, pb;
  for (const auto& p : a.named_parameters()) pa.emplace_back(p.name, p.value);
  for (const auto& p : b.named_parameters()) pb.emplace_back(p.name, p.value);
  if (pa.size() != pb.size()) return false;
  for (size_t i = 0; i < pa.size(); ++i)
    if (pa[i].first != pb[i].first || !torch::equal(pa[i].second, pb[i].second)) return false;
  return true;
}

}  // namespace

TEST_CASE("model files are told apart by their magic bytes") {
  const auto dir = fresh_folder("model_file_sniff");
  const Written w = write_all(dir);
  CHECK(sniff_model_file(w.torchscript) == ModelFileKind::TorchScript);
  CHECK(sniff_model_file(fixture_path("eager_pickle.pt")) == ModelFileKind::TorchScript);  // a zip too
  CHECK(sniff_model_file(w.archive) == ModelFileKind::Archive);
  CHECK_FALSE(sniff_model_file(fixture_path("random.bin")));
  CHECK_FALSE(sniff_model_file((dir / "missing").string()));
  std::filesystem::remove_all(dir);
}

TEST_CASE("every kind opens to the same ternary model - packed ones also as stored") {
  const auto dir = fresh_folder("model_file_open");
  Written w = write_all(dir);
  const OpenedModel ts = open_model(w.torchscript), archive = open_model(w.archive), packed = open_model(w.packed);
  CHECK(ts.kind == ModelFileKind::TorchScript);
  CHECK(archive.kind == ModelFileKind::Archive);
  CHECK_FALSE(packed.packed());  // restored to float32
  for (const auto* m : {&ts, &archive, &packed}) {
    REQUIRE(m->metadata);
    CHECK(m->metadata->layers.size() == 2);
    CHECK(same_parameters(m->module, w.ternary));
  }
  OpenedModel stored = open_model(w.packed, PackedAs::Stored);
  CHECK(stored.packed());
  CHECK(stored.metadata->packed == std::vector<std::string>{"conv2.weight", "fc1.weight"});
  const auto x = torch::rand({4, 1, 28, 28});
  const auto expected = w.ternary.forward({x}).toTensor();
  CHECK(torch::allclose(stored.module.forward({x}).toTensor(), expected, 1e-4, 1e-5));
  for (const auto& path : {w.torchscript, w.archive, w.packed})
    CHECK(torch::allclose(load_packed(path).forward({x}).toTensor(), expected, 1e-4, 1e-5));

  CHECK(read_model_metadata(w.archive)->layers.size() == 2);
  CHECK(read_model_metadata(w.packed)->packed.size() == 2);
  CHECK_FALSE(read_model_metadata(fixture_path("small_cnn.pt")));
  std::filesystem::remove_all(dir);
}

TEST_CASE("what is no model, or has nothing to pack, is one input error") {
  CHECK_THROWS_WITH(open_model(fixture_path("eager_pickle.pt")), Catch::Contains("a torch.save() pickle"));
  CHECK_THROWS_WITH(open_model(fixture_path("random.bin")), Catch::Contains("not a PyTorch zip archive"));
  CHECK_THROWS_WITH(open_model(fixture_path("missing.pt")), Catch::Contains("no such file"));
  CHECK_THROWS_WITH(read_model_metadata(fixture_path("random.bin")), Catch::Contains("not a PyTorch zip archive"));
  CHECK_THROWS_WITH(load_packed(fixture_path("small_cnn.pt")), Catch::Contains("has no TTQ metadata"));
  CHECK(kind_of([] { load_packed(fixture_path("small_cnn.pt")); }) == ErrorKind::Input);
}
