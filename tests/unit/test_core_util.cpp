// core/util: regexes from flags, shapes in messages, readable-file checks and whole-file reads.
#include "catch.h"
#include "helpers.h"

#include <fstream>

#include <torch/version.h>

#include "core/util.h"

using namespace ttq;
using ttq::test::fresh_folder;
using ttq::test::kind_of;

TEST_CASE("flag regexes are searched in names, and an invalid one is a usage error naming it") {
  const auto regexes = compile_regexes({"^conv", "fc\\d$"});
  CHECK(matches_any("conv1.weight", regexes));
  CHECK(matches_any("head.fc2", regexes));
  CHECK_FALSE(matches_any("layer.conv1", regexes));
  CHECK_FALSE(matches_any("fc10", regexes));
  CHECK_FALSE(matches_any("anything", {}));
  CHECK(kind_of([] { compile_regex("conv[1"); }) == ErrorKind::Usage);
  CHECK_THROWS_WITH(compile_regex("conv[1"), Catch::Contains("invalid regex 'conv[1'"));
}

TEST_CASE("shapes read as tables and messages write them") {
  CHECK(join_shape({8, 1, 5, 5}) == "8x1x5x5");
  CHECK(join_shape({}) == "scalar");
  CHECK(bracketed_shape({2, 1, 28, 28}) == "[2, 1, 28, 28]");
  CHECK(bracketed_shape({10}) == "[10]");
}

TEST_CASE("whole-file reads give the bytes, and missing files or folders are input errors") {
  const auto dir = fresh_folder("util");
  const std::string path = (dir / "bytes.bin").string();
  const std::string bytes("a\0b\xff", 4);
  std::ofstream(path, std::ios::binary) << bytes;
  CHECK(read_file(path) == std::vector<uint8_t>{'a', 0, 'b', 0xff});
  std::ofstream((dir / "empty").string());
  CHECK(read_file((dir / "empty").string()).empty());
  CHECK_THROWS_WITH(read_file((dir / "missing").string()), Catch::Contains("missing: no such file"));
  CHECK_THROWS_WITH(check_readable(dir.string()), Catch::Contains("not a regular file"));
  CHECK(kind_of([&] { check_readable(dir.string()); }) == ErrorKind::Input);
  std::filesystem::remove_all(dir);
}

TEST_CASE("the LibTorch version is the one compiled against, and there is at least one core") {
  CHECK(libtorch_version() == TORCH_VERSION);
  CHECK(cpu_cores() >= 1);
}
