// formats/torchscript: TorchScript files with and without TTQ metadata, what each kind of file that
// is not TorchScript is told, a newer PyTorch's operator named, and programs without their tensors.
#include "catch.h"
#include "helpers.h"

#include <caffe2/serialize/inline_container.h>

#include <sstream>

#include "core/quantize.h"
#include "core/util.h"

using namespace ttq;
using ttq::test::fixture;
using ttq::test::fixture_path;
using ttq::test::fresh_folder;
using ttq::test::kind_of;

TEST_CASE("TTQ metadata rides along in the file and is read back without loading the program") {
  const auto dir = fresh_folder("torchscript");
  auto module = fixture("small_cnn.pt");
  ModelMetadata meta;
  meta.layers = quantize_module(module, {});
  meta.command = "quantize";
  const std::string path = (dir / "q.pt").string();
  save_torchscript(module, meta, path);
  LoadedModel loaded = load_torchscript(path);
  REQUIRE(loaded.metadata);
  CHECK(loaded.metadata->command == "quantize");
  CHECK(loaded.metadata->layers.size() == 2);
  CHECK(loaded.float_program.empty());
  const auto x = torch::randn({2, 1, 28, 28});
  CHECK(torch::equal(loaded.module.forward({x}).toTensor(), module.forward({x}).toTensor()));
  const auto only_meta = read_torchscript_metadata(path);
  REQUIRE(only_meta);
  CHECK(only_meta->layers[1].wp == meta.layers[1].wp);

  CHECK_FALSE(load_torchscript(fixture_path("small_cnn.pt")).metadata);
  CHECK_FALSE(read_torchscript_metadata(fixture_path("small_cnn.pt")));
  std::filesystem::remove_all(dir);
}

TEST_CASE("files that are not TorchScript are one input error saying what they are") {
  for (const auto& load : std::vector<std::function<void(const std::string&)>>{
           [](const std::string& p) { load_torchscript(p); }, [](const std::string& p) { read_torchscript_metadata(p); }}) {
    CHECK_THROWS_WITH(load(fixture_path("eager_pickle.pt")), Catch::Contains("a torch.save() pickle, not a TorchScript model"));
    CHECK_THROWS_WITH(load(fixture_path("random.bin")), Catch::Contains("not a TorchScript model (not a PyTorch zip archive)"));
    CHECK_THROWS_WITH(load(fixture_path("missing.pt")), Catch::Contains("missing.pt: no such file"));
    CHECK(kind_of([&] { load(fixture_path("random.bin")); }) == ErrorKind::Input);
  }
  const auto dir = fresh_folder("torchscript_zip");
  const std::string zip = (dir / "other.zip").string();
  {
    caffe2::serialize::PyTorchStreamWriter writer(zip);
    writer.writeRecord("notes.txt", "hello", 5);
  }
  CHECK_THROWS_WITH(load_torchscript(zip), Catch::Contains("not a TorchScript model (no constants.pkl in the archive)"));
  std::filesystem::remove_all(dir);
}

TEST_CASE("an operator this LibTorch lacks is named, with the way out") {
  const std::runtime_error compiler("Unknown builtin op: aten::scaled_dot_product_attention.\nHere are some suggestions:");
  const std::string m = load_failure("m.pt", "cannot load", compiler).what();
  CHECK_THAT(m, Catch::Contains("m.pt: calls aten::scaled_dot_product_attention, an operator that LibTorch " +
                                libtorch_version()));
  CHECK_THAT(m, Catch::Contains("saved by a newer PyTorch"));
  const std::string other = load_failure("m.pt", "cannot load", std::runtime_error("bad\nmore")).what();
  CHECK_THAT(other, Catch::Contains("m.pt: cannot load: bad"));
  CHECK(load_failure("m.pt", "x", compiler).kind() == ErrorKind::Input);
}

TEST_CASE("a program without its tensors is small, loads, and leaves the module whole") {
  auto module = fixture("fashion_cnn.pt");
  const auto x = torch::randn({1, 1, 28, 28});
  const auto expected = module.forward({x}).toTensor();
  const std::string program = program_without_tensors(module);
  CHECK(program.size() < 64 * 1024);  // the model's tensors are 3.3 MB
  std::istringstream in(program);
  auto empty = torch::jit::load(in);
  for (const auto& p : empty.parameters()) CHECK(p.numel() == 0);
  CHECK(torch::equal(module.forward({x}).toTensor(), expected));
}
