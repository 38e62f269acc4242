// plugins/builtin_datasets: the real Fashion-MNIST files of the Debian package, CIFAR-10 batches and
// IDX files written byte by byte as their formats specify, saved tensors of the fixtures, and each
// malformed file's own message.
#include "catch.h"
#include "helpers.h"

#include <fstream>

#include "plugins/dataset.h"

using namespace ttq;
using ttq::test::fixture_path;
using ttq::test::fresh_folder;
using ttq::test::kind_of;
namespace fs = std::filesystem;

namespace {

void write_bytes(const fs::path& path, const std::vector<uint8_t>& bytes) {
  std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(bytes.data()), bytes.size());
}

void put_be32(std::vector<uint8_t>& b, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) b.push_back(static_cast<uint8_t>(v >> shift));
}

// An IDX file (magic 0x0000080D, big-endian sizes, then the bytes) of `dims` sizes holding `values`.
std::vector<uint8_t> idx(const std::vector<uint32_t>& dims, const std::vector<uint8_t>& values) {
  std::vector<uint8_t> b;
  put_be32(b, 0x800 + static_cast<uint32_t>(dims.size()));
  for (const uint32_t d : dims) put_be32(b, d);
  b.insert(b.end(), values.begin(), values.end());
  return b;
}

// A folder of MNIST-style files: n 2x2 images per split, labels 0..n-1.
fs::path idx_folder(const std::string& name, uint32_t n) {
  const auto dir = fresh_folder(name);
  std::vector<uint8_t> pixels(n * 4), labels(n);
  for (uint32_t i = 0; i < n * 4; ++i) pixels[i] = static_cast<uint8_t>(i);
  for (uint32_t i = 0; i < n; ++i) labels[i] = static_cast<uint8_t>(i);
  for (const std::string split : {"train", "t10k"}) {
    write_bytes(dir / (split + "-images-idx3-ubyte"), idx({n, 2, 2}, pixels));
    write_bytes(dir / (split + "-labels-idx1-ubyte"), idx({n}, labels));
  }
  return dir;
}

// A CIFAR-10 folder: every batch of `records` records (label byte, 3x32x32 pixels of value label).
fs::path cifar_folder(const std::string& name, int records, uint8_t label = 7) {
  const auto dir = fresh_folder(name);
  std::vector<uint8_t> batch;
  for (int r = 0; r < records; ++r) {
    batch.push_back(label);
    batch.insert(batch.end(), 3 * 32 * 32, label);
  }
  for (const char* f : {"data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin",
                        "data_batch_5.bin", "test_batch.bin"})
    write_bytes(dir / f, batch);
  return dir;
}

}  // namespace

TEST_CASE("the Debian package's Fashion-MNIST loads as 60000 + 10000 labeled 1x28x28 images") {
  const DataSplits s = load_dataset(default_dataset_spec());
  CHECK(s.train.size() == 60000);
  CHECK(s.test.size() == 10000);
  CHECK(s.train.inputs.front().sizes() == torch::IntArrayRef{60000, 1, 28, 28});
  CHECK(s.train.inputs.front().scalar_type() == torch::kUInt8);
  CHECK(s.num_classes == 10);
  CHECK(torch::equal(s.test.labels.bincount(), torch::full({10}, 1000, torch::kInt64)));  // balanced test split
  CHECK(s.defaults.mean == std::vector<double>{0.2860});
}

TEST_CASE("IDX files load by the sizes of their headers - bad magic, truncation and padding are refused") {
  const auto dir = idx_folder("idx", 3);
  const DataSplits s = load_dataset("mnist:" + dir.string());
  CHECK(s.train.inputs.front().sizes() == torch::IntArrayRef{3, 1, 2, 2});
  CHECK(s.train.inputs.front().flatten()[11].item<int>() == 11);
  CHECK(torch::equal(s.test.labels, torch::tensor({0, 1, 2}, torch::kInt64)));
  CHECK(s.defaults.mean == std::vector<double>{0.1307});

  const std::string spec = "mnist:" + dir.string();
  const auto labels = dir / "train-labels-idx1-ubyte";
  write_bytes(labels, idx({4}, {0, 1, 2, 3}));
  CHECK_THROWS_WITH(load_dataset(spec), Catch::Contains("3 images but 4 labels in the train split"));
  write_bytes(labels, idx({3}, {0, 1}));
  CHECK_THROWS_WITH(load_dataset(spec), Catch::Contains("truncated or padded IDX data (2 bytes for 3 values)"));
  write_bytes(labels, idx({3}, {0, 1, 2, 3}));
  CHECK_THROWS_WITH(load_dataset(spec), Catch::Contains("(more than 3 bytes for 3 values)"));
  write_bytes(labels, idx({3, 1}, {0, 1, 2}));  // a 2-dimensional file where labels have one
  CHECK_THROWS_WITH(load_dataset(spec), Catch::Contains("not an IDX file with 1 dimension(s) (magic 0x00000801"));
  write_bytes(labels, {0, 0, 8, 1, 0});
  CHECK_THROWS_WITH(load_dataset(spec), Catch::Contains("truncated IDX header"));
  fs::remove(labels);
  CHECK_THROWS_WITH(load_dataset(spec), Catch::Contains("no train-labels-idx1-ubyte or train-labels-idx1-ubyte.gz"));
  CHECK(kind_of([&] { load_dataset(spec); }) == ErrorKind::Input);
  CHECK_THROWS_WITH(load_dataset("mnist:" + (dir / "t10k-images-idx3-ubyte").string()), Catch::Contains("not a folder"));
  fs::remove_all(dir);
}

TEST_CASE("CIFAR-10 batches load as records - partial records and labels above 9 are refused") {
  const auto dir = cifar_folder("cifar", 2);
  const DataSplits s = load_dataset("cifar10:" + dir.string());
  CHECK(s.train.size() == 10);  // 5 batches of 2
  CHECK(s.test.size() == 2);
  CHECK(s.train.inputs.front().sizes() == torch::IntArrayRef{10, 3, 32, 32});
  CHECK(s.train.inputs.front().max().item<int>() == 7);
  CHECK(torch::equal(s.train.labels, torch::full({10}, 7, torch::kInt64)));
  CHECK(s.defaults.crop_padding == 4);

  std::ofstream(dir / "test_batch.bin", std::ios::app) << 'x';
  CHECK_THROWS_WITH(load_dataset("cifar10:" + dir.string()),
                    Catch::Contains("6147 bytes is not a whole number of CIFAR-10 records (3073 bytes each)"));
  const auto bad = cifar_folder("cifar_label", 1, 12);
  CHECK_THROWS_WITH(load_dataset("cifar10:" + bad.string()), Catch::Contains("CIFAR-10 label above 9"));
  fs::remove_all(dir);
  fs::remove_all(bad);
}

TEST_CASE("saved tensors: several inputs, unlabeled data, and files that are no dict of tensors") {
  const DataSplits s = load_dataset("tensors:" + fixture_path("tensors.pt"));
  CHECK(s.train.size() == 2000);
  CHECK(s.test.size() == 500);
  CHECK(s.num_classes == 10);
  const DataSplits text = load_dataset("tensors:" + fixture_path("text_tokens.pt"));
  CHECK(text.train.inputs.size() == 2);  // token ids and the mask, forward's arguments in order
  CHECK(text.test.size() == 256);
  const DataSplits tags = load_dataset("tensors:" + fixture_path("tagger_tokens.pt"));
  CHECK_FALSE(tags.train.labeled());
  CHECK(tags.num_classes == 0);
  CHECK_THROWS_WITH(load_dataset("tensors:" + fixture_path("random.bin")),
                    Catch::Contains("neither a torch.save() dict nor a TorchScript module"));
  CHECK_THROWS_WITH(load_dataset("tensors:" + fixture_path("small_cnn.pt")), Catch::Contains("needs 'x'"));
  CHECK_THROWS_WITH(load_dataset("tensors:" + fixture_path("missing.pt")), Catch::Contains("no such file"));
}
