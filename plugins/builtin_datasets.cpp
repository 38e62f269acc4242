// The built-in dataset kinds: MNIST-style IDX files, CIFAR-10 binary batches, saved tensors.
#include <fmt/format.h>
#include <torch/script.h>
#include <torch/serialize.h>
#include <zlib.h>

#include <algorithm>
#include <cmath>

#include <filesystem>
#include <fstream>

#include "core/error.h"
#include "core/util.h"
#include "plugins/dataset.h"

namespace ttq {
namespace {

namespace fs = std::filesystem;

// A gzip (or plain: zlib reads those unchanged) file read in pieces, so that callers decompress
// only what they expect: a small file that inflates to gigabytes is refused early.
class GzReader {
 public:
  explicit GzReader(const fs::path& path) : path_(path.string()) {
    check_readable(path_);
    file_ = gzopen(path.c_str(), "rb");
    if (!file_) throw input_error(fmt::format("{}: cannot be read", path_));
  }
  ~GzReader() { gzclose(file_); }
  GzReader(const GzReader&) = delete;
  GzReader& operator=(const GzReader&) = delete;

  // Up to n bytes (fewer only at the end of the data).
  size_t read(void* out, size_t n) {
    size_t done = 0;
    while (done < n) {
      const unsigned chunk = static_cast<unsigned>(std::min<size_t>(n - done, 1u << 30));
      const int got = gzread(file_, static_cast<uint8_t*>(out) + done, chunk);
      if (got < 0) {
        int err = 0;
        throw input_error(fmt::format("{}: corrupt gzip data ({})", path_, gzerror(file_, &err)));
      }
      if (got == 0) break;
      done += static_cast<size_t>(got);
    }
    return done;
  }

 private:
  std::string path_;
  gzFile file_ = nullptr;
};

// The whole (decompressed) file, refused when it holds more than max_bytes.
std::vector<uint8_t> read_maybe_gz(const fs::path& path, size_t max_bytes) {
  GzReader in(path);
  std::vector<uint8_t> out;
  uint8_t buf[1 << 16];
  for (size_t n; (n = in.read(buf, sizeof buf)) > 0;) {
    if (out.size() + n > max_bytes)
      throw input_error(fmt::format("{}: decompresses to more than {} bytes, more than this kind of file holds",
                                    path.string(), max_bytes));
    out.insert(out.end(), buf, buf + n);
  }
  return out;
}

uint32_t be32(const uint8_t* p) { return uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | p[3]; }

// "name" or "name.gz" inside dir.
fs::path find_file(const fs::path& dir, const std::string& name) {
  for (const auto& candidate : {dir / name, dir / (name + ".gz")})
    if (fs::exists(candidate)) return candidate;
  throw input_error(fmt::format("{}: no {} or {}.gz", dir.string(), name, name));
}

// IDX (LeCun's MNIST format): magic 0x0000080D with D dimensions, big-endian sizes, then bytes.
// Only what the header promises is decompressed, and one byte more to tell a padded file.
torch::Tensor read_idx(const fs::path& path, int dims) {
  GzReader in(path);
  uint8_t header[4 + 4 * 4] = {};
  const size_t header_size = 4 + 4 * static_cast<size_t>(dims);
  const uint32_t magic = 0x800 + dims;
  const size_t got_header = in.read(header, header_size);
  if (got_header < 4 || be32(header) != magic)
    throw input_error(fmt::format("{}: not an IDX file with {} dimension(s) (magic {:#010x} expected)",
                                  path.string(), dims, magic));
  if (got_header < header_size) throw input_error(fmt::format("{}: truncated IDX header", path.string()));
  std::vector<int64_t> shape;
  uint64_t count = 1;
  for (int d = 0; d < dims; ++d) {
    shape.push_back(be32(header + 4 + 4 * d));
    count *= static_cast<uint64_t>(shape.back());
    if (count > (1ull << 34)) throw input_error(fmt::format("{}: IDX sizes too large", path.string()));
  }
  auto t = torch::empty(shape, torch::kUInt8);
  const size_t got = in.read(t.data_ptr(), count);
  uint8_t extra = 0;
  if (got != count || in.read(&extra, 1) != 0)
    throw input_error(fmt::format("{}: truncated or padded IDX data ({} bytes for {} values)", path.string(),
                                  got == count ? fmt::format("more than {}", count) : std::to_string(got), count));
  return t;
}

Dataset idx_split(const fs::path& dir, const std::string& prefix) {
  Dataset d(read_idx(find_file(dir, prefix + "-images-idx3-ubyte"), 3).unsqueeze(1),
            read_idx(find_file(dir, prefix + "-labels-idx1-ubyte"), 1).to(torch::kInt64));
  if (d.size() != d.labels.size(0))
    throw input_error(fmt::format("{}: {} images but {} labels in the {} split", dir.string(), d.size(),
                                  d.labels.size(0), prefix));
  return d;
}

DataSplits load_idx(const std::string& path, const LoadOptions& options, double mean, double std) {
  if (!fs::is_directory(path)) throw input_error(fmt::format("{}: not a folder", path));
  DataSplits s;
  if (!options.test_split_only) s.train = idx_split(path, "train");
  s.test = idx_split(path, "t10k");
  s.num_classes = 10;
  s.defaults = {{mean}, {std}, false, 0};
  return s;
}

// CIFAR-10 binary version: records of 1 label byte + 3×32×32 pixel bytes.
Dataset cifar_batches(const fs::path& dir, const std::vector<std::string>& files) {
  constexpr size_t kRecord = 1 + 3 * 32 * 32;
  std::vector<torch::Tensor> images, labels;
  for (const auto& name : files) {
    constexpr size_t kMaxBatchBytes = 64 << 20;  // a CIFAR-10 batch is 30.7 MB
    const auto bytes = read_maybe_gz(find_file(dir, name), kMaxBatchBytes);
    if (bytes.empty() || bytes.size() % kRecord != 0)
      throw input_error(fmt::format("{}: {} bytes is not a whole number of CIFAR-10 records ({} bytes each)",
                                    (dir / name).string(), bytes.size(), kRecord));
    const auto n = static_cast<int64_t>(bytes.size() / kRecord);
    auto raw = torch::from_blob(const_cast<uint8_t*>(bytes.data()), {n, static_cast<int64_t>(kRecord)}, torch::kUInt8);
    labels.push_back(raw.select(1, 0).to(torch::kInt64));
    images.push_back(raw.slice(1, 1).reshape({n, 3, 32, 32}).clone());
  }
  Dataset d{torch::cat(images), torch::cat(labels)};
  if (d.labels.max().item<int64_t>() > 9) throw input_error(fmt::format("{}: CIFAR-10 label above 9", dir.string()));
  return d;
}

DataSplits load_cifar10(const std::string& path, const LoadOptions& options) {
  if (!fs::is_directory(path)) throw input_error(fmt::format("{}: not a folder", path));
  DataSplits s;
  if (!options.test_split_only)
    s.train = cifar_batches(path, {"data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin",
                                   "data_batch_5.bin"});
  s.test = cifar_batches(path, {"test_batch.bin"});
  s.num_classes = 10;
  s.defaults = {{0.4914, 0.4822, 0.4465}, {0.2470, 0.2435, 0.2616}, true, 4};
  return s;
}

// tensors:FILE — torch.save({'x': X, 'y': Y[, 'x_test': .., 'y_test': ..]}) or a TorchScript
// module with those attributes. X may be a list or tuple of tensors: the arguments of forward, in
// order (token ids and an attention mask). Without 'y' the data is unlabeled (distillation); without
// test tensors, validation uses the training data.
std::vector<torch::Tensor> tensor_inputs(const c10::IValue& v, const std::string& path, const std::string& key) {
  std::vector<torch::Tensor> out;
  if (v.isTensor()) {
    out.push_back(v.toTensor());
  } else if (v.isList() || v.isTuple()) {
    for (const auto& e : v.isList() ? v.toListRef().vec() : v.toTupleRef().elements().vec()) {
      if (!e.isTensor()) throw input_error(fmt::format("{}: '{}' holds a {}, not only tensors", path, key, e.tagKind()));
      out.push_back(e.toTensor());
    }
  }
  if (out.empty()) throw input_error(fmt::format("{}: '{}' must be a tensor or a non-empty list of tensors", path, key));
  for (const auto& t : out)
    if (!t.defined() || t.dim() == 0 || t.size(0) != out.front().size(0))
      throw input_error(fmt::format("{}: the tensors of '{}' need the same first dimension (the samples)", path, key));
  if (out.front().size(0) == 0) throw input_error(fmt::format("{}: '{}' holds no samples", path, key));
  return out;
}

Dataset tensor_split(const std::map<std::string, c10::IValue>& found, const std::string& path, const std::string& x,
                     const std::string& y) {
  Dataset d(tensor_inputs(found.at(x), path, x), torch::Tensor());
  const auto labels = found.find(y);
  if (labels == found.end()) return d;
  const torch::Tensor t = labels->second.isTensor() ? labels->second.toTensor() : torch::Tensor();
  if (!t.defined() || t.dim() != 1 || t.is_floating_point() || t.size(0) != d.size())
    throw input_error(fmt::format("{}: '{}' must be integer labels, one per row of '{}'", path, y, x));
  d.labels = t.to(torch::kInt64);
  return d;
}

DataSplits load_tensors(const std::string& path, const LoadOptions&) {
  const std::vector<uint8_t> file = read_file(path);
  std::map<std::string, c10::IValue> found;
  const char* const keys[] = {"x", "y", "x_test", "y_test"};
  try {
    const auto value = torch::pickle_load(std::vector<char>(file.begin(), file.end()));
    if (!value.isGenericDict()) throw input_error(fmt::format("{}: not a dict of tensors", path));
    for (const auto& item : value.toGenericDict())
      if (item.key().isString()) found[item.key().toStringRef()] = item.value();
  } catch (const c10::Error& pickle_error) {
    // LibTorch 1.13's unpickler lacks SETITEM, which torch.save uses for a dict of one entry (2.x has it).
    if (std::string(pickle_error.what()).find("Unknown opcode") != std::string::npos)
      throw input_error(fmt::format("{}: LibTorch cannot read this torch.save() file ({}): a dict of one entry; "
                                    "save at least two ('x' and 'y', or 'x' and 'x_test' for unlabeled data)", path,
                                    short_message(pickle_error.what_without_backtrace())));
    try {
      auto module = torch::jit::load(path);
      for (const char* key : keys)
        if (module.hasattr(key)) found[key] = module.attr(key);
    } catch (const c10::Error&) {
      throw input_error(fmt::format("{}: neither a torch.save() dict nor a TorchScript module", path));
    }
  }
  if (!found.count("x")) throw input_error(fmt::format("{}: needs 'x' (and optionally 'y', 'x_test', 'y_test')", path));
  DataSplits s;
  s.train = tensor_split(found, path, "x", "y");
  s.test = found.count("x_test") ? tensor_split(found, path, "x_test", "y_test") : s.train;
  if (s.test.inputs.size() != s.train.inputs.size())
    throw input_error(fmt::format("{}: 'x' holds {} tensors, 'x_test' {}", path, s.train.inputs.size(),
                                  s.test.inputs.size()));
  for (const Dataset* d : {&s.train, &s.test})
    if (d->labeled()) s.num_classes = std::max(s.num_classes, d->labels.max().item<int64_t>() + 1);
  return s;
}

}  // namespace

void register_image_folder();  // plugins/image_folder.cpp

void register_builtin_datasets() {
  register_dataset_kind({"fashion-mnist", "Fashion-MNIST IDX files (gzipped or not) in a folder",
                         [](const std::string& p, const LoadOptions& o) { return load_idx(p, o, 0.2860, 0.3530); }});
  register_dataset_kind({"mnist", "MNIST IDX files (gzipped or not) in a folder",
                         [](const std::string& p, const LoadOptions& o) { return load_idx(p, o, 0.1307, 0.3081); }});
  register_dataset_kind({"cifar10", "CIFAR-10 binary batches (data_batch_*.bin, test_batch.bin) in a folder",
                         load_cifar10});
  register_dataset_kind({"tensors", "torch.save({'x','y'[,'x_test','y_test']}) file or TorchScript module",
                         load_tensors});
  register_image_folder();
}

}  // namespace ttq
