#include "core/util.h"

#include <fmt/format.h>

#include <malloc.h>
#include <torch/csrc/jit/passes/tensorexpr_fuser.h>
#include <torch/version.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include "core/error.h"

namespace ttq {
namespace {

// LibTorch 2.x fuses TorchScript's elementwise operations on the CPU with NNC, compiled by LLVM;
// Debian 13's LibTorch 2.6 never returns from compiling some of those kernels (a scripted
// `torch.relu(x @ w1) @ w2` hangs on its second call, in Debian's PyTorch too). ttq's models gain
// little from that fusion, so every process that links ttq runs without it (LibTorch 1.13 on the
// CPU has none).
[[maybe_unused]] const bool kNoTensorExprFusion = [] {
  torch::jit::setTensorExprFuserEnabled(false);
  return true;
}();

}  // namespace

std::regex compile_regex(const std::string& pattern) {
  try {
    return std::regex(pattern, std::regex::ECMAScript);
  } catch (const std::regex_error& e) {
    throw usage_error(fmt::format("invalid regex '{}': {}", pattern, e.what()));
  }
}

std::vector<std::regex> compile_regexes(const std::vector<std::string>& patterns) {
  std::vector<std::regex> out;
  for (const auto& p : patterns) out.push_back(compile_regex(p));
  return out;
}

bool matches_any(const std::string& name, const std::vector<std::regex>& regexes) {
  for (const auto& re : regexes)
    if (std::regex_search(name, re)) return true;
  return false;
}

std::string join_shape(const std::vector<int64_t>& shape, std::string_view separator) {
  if (shape.empty()) return "scalar";
  std::string s;
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? std::string(separator) : "") + std::to_string(shape[i]);
  return s;
}

void check_readable(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (!fs::exists(path, ec)) throw input_error(fmt::format("{}: no such file", path));
  if (!fs::is_regular_file(path, ec)) throw input_error(fmt::format("{}: not a regular file", path));
  if (!std::ifstream(path).good()) throw input_error(fmt::format("{}: cannot be read", path));
}

std::vector<uint8_t> read_file(const std::string& path) {
  check_readable(path);
  std::ifstream in(path, std::ios::binary);
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  if (ec) throw input_error(fmt::format("{}: cannot be read ({})", path, ec.message()));
  std::vector<uint8_t> bytes(size);
  in.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(size));
  if (!in) throw input_error(fmt::format("{}: read failed", path));
  return bytes;
}

std::string libtorch_version() { return TORCH_VERSION; }

int cpu_cores() { return static_cast<int>(std::max(1u, std::thread::hardware_concurrency())); }

void release_free_memory() {
#ifdef __GLIBC__
  malloc_trim(0);
#endif
}

void keep_freed_memory_for_reuse() {
#ifdef __GLIBC__
  mallopt(M_MMAP_THRESHOLD, 32 << 20);  // glibc's largest: bigger blocks are mapped on their own
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
#endif
}

}  // namespace ttq
