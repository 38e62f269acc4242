// plugins/dataset: specs, the registry of kinds, what a loader's failure becomes, plugins loaded from
// shared libraries (the example CSV plugin), and the embedded default.
#include "catch.h"
#include "helpers.h"

#include <fstream>

#include "plugins/dataset.h"

using namespace ttq;
using ttq::test::fresh_folder;
using ttq::test::kind_of;

namespace {

DataSplits two_samples() {
  DataSplits s;
  s.train = Dataset(torch::zeros({2, 3}), torch::tensor({0, 1}, torch::kInt64));
  s.test = s.train;
  s.num_classes = 2;
  return s;
}

}  // namespace

TEST_CASE("a spec is KIND:PATH of a known kind - anything else is a usage error listing the kinds") {
  CHECK(kind_of([] { load_dataset("tensors.pt"); }) == ErrorKind::Usage);
  CHECK_THROWS_WITH(load_dataset("tensors.pt"), Catch::Contains("is not KIND:PATH (kinds: fashion-mnist, mnist, cifar10"));
  CHECK_THROWS_WITH(load_dataset(":x"), Catch::Contains("is not KIND:PATH"));
  CHECK_THROWS_WITH(load_dataset("tensors:"), Catch::Contains("is not KIND:PATH"));
  CHECK_THROWS_WITH(load_dataset("parquet:x"), Catch::Contains("unknown dataset kind 'parquet' (kinds: "));
}

TEST_CASE("a registered kind loads by its name - a name taken twice is refused") {
  std::string seen;
  register_dataset_kind({"unit-two", "two samples", [&](const std::string& path, const LoadOptions&) {
                           seen = path;
                           return two_samples();
                         }});
  const DataSplits s = load_dataset("unit-two:some/where:with-colon");
  CHECK(seen == "some/where:with-colon");  // the path is everything after the first colon
  CHECK(s.train.size() == 2);
  CHECK(dataset_kinds().back().name == "unit-two");
  CHECK(kind_of([] { register_dataset_kind({"unit-two", "", nullptr}); }) == ErrorKind::Usage);
  CHECK(kind_of([] { register_dataset_kind({"mnist", "", nullptr}); }) == ErrorKind::Usage);
}

TEST_CASE("a loader's own exceptions become one input error naming the spec - an empty training split too") {
  register_dataset_kind({"unit-throws", "", [](const std::string&, const LoadOptions&) -> DataSplits {
                           throw std::runtime_error("row 3: not a number\nsecond line of detail");
                         }});
  register_dataset_kind({"unit-empty", "", [](const std::string&, const LoadOptions&) {
                           DataSplits s = two_samples();
                           s.train = Dataset(torch::zeros({0, 3}), torch::zeros({0}, torch::kInt64));
                           return s;
                         }});
  CHECK(kind_of([] { load_dataset("unit-throws:f"); }) == ErrorKind::Input);
  CHECK_THROWS_WITH(load_dataset("unit-throws:f"), Catch::Contains("unit-throws:f: row 3: not a number"));
  CHECK_THROWS_WITH(load_dataset("unit-empty:f"), Catch::Contains("unit-empty:f: the training split is empty"));
}

TEST_CASE("a plugin library registers its kinds - other files are input errors") {
  const auto dir = fresh_folder("dataset_plugin");
  const std::string csv = (dir / "rows.csv").string();
  std::ofstream(csv) << "# x1,x2,label\n0.5,1,0\n1.5,2,1\n2.5,3,1\n3.5,4,0\n4.5,5,1\n";
  load_plugin(TTQ_CSV_PLUGIN);
  const DataSplits s = load_dataset("csv:" + csv);
  CHECK(s.train.size() == 4);
  CHECK(s.test.size() == 1);
  CHECK(s.train.inputs.front().sizes() == torch::IntArrayRef{4, 2});
  CHECK(torch::equal(s.test.labels, torch::tensor({1}, torch::kInt64)));
  CHECK_THROWS_WITH(load_dataset("csv:" + (dir / "none.csv").string()), Catch::Contains("none.csv: cannot be read"));

  CHECK_THROWS_WITH(load_plugin((dir / "missing.so").string()), Catch::Contains("missing.so: no such plugin file"));
  CHECK_THROWS_WITH(load_plugin(csv), Catch::Contains("rows.csv: cannot load plugin"));
  CHECK(kind_of([&] { load_plugin(csv); }) == ErrorKind::Input);
  std::filesystem::remove_all(dir);
}

TEST_CASE("the embedded default is Fashion-MNIST of the Debian package") {
  REQUIRE(std::filesystem::is_directory(kDefaultDataDir));  // dataset-fashion-mnist, installed by setup
  CHECK(default_dataset_spec() == std::string("fashion-mnist:") + kDefaultDataDir);
}
