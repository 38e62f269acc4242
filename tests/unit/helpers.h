// What several unit test files need: the real TorchScript fixtures (scripts/make_fixtures.py), a
// scratch folder, and the kind and message of the ttq::Error a call throws.
#pragma once
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>

#include "catch.h"
#include "core/error.h"
#include "core/ops/kernels.h"
#include "formats/torchscript.h"

namespace ttq::test {

inline std::string fixture_path(const std::string& name) { return std::string(TTQ_FIXTURES) + "/" + name; }

inline torch::jit::Module fixture(const std::string& name) { return load_torchscript(fixture_path(name)).module; }

// An empty folder of the temporary directory, for one test's files.
inline std::filesystem::path fresh_folder(const std::string& name) {
  const auto dir = std::filesystem::temp_directory_path() / ("ttq_unit_" + name);
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

inline ErrorKind kind_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.kind();
  }
  FAIL("no ttq::Error thrown");
  return ErrorKind::Runtime;
}

// TTQ_KERNEL as a test sets it (or unsets it: nullptr), put back as it was at the scope's end.
class KernelVariable {
 public:
  KernelVariable() {
    if (const char* v = std::getenv("TTQ_KERNEL")) saved_ = v;
  }
  explicit KernelVariable(const char* value) : KernelVariable() { set(value); }
  ~KernelVariable() { saved_ ? setenv("TTQ_KERNEL", saved_->c_str(), 1) : unsetenv("TTQ_KERNEL"); }
  KernelVariable(const KernelVariable&) = delete;
  KernelVariable& operator=(const KernelVariable&) = delete;
  void set(const char* value) { value ? setenv("TTQ_KERNEL", value, 1) : unsetenv("TTQ_KERNEL"); }

 private:
  std::optional<std::string> saved_;
};

// Every kernel path this CPU can run, portable first.
inline std::vector<ops::KernelPath> runnable_paths() {
  std::vector<ops::KernelPath> out;
  for (const auto p : {ops::KernelPath::Portable, ops::KernelPath::Avx2, ops::KernelPath::Avx512})
    if (ops::cpu_supports(p)) out.push_back(p);
  return out;
}

// A weight of `shape` whose values are +wp, 0 or -wn, drawn with `seed`.
inline torch::Tensor ternary_weight(const std::vector<int64_t>& shape, float wp, float wn, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  const auto codes = torch::randint(-1, 2, shape, gen);
  return torch::where(codes > 0, torch::full({}, wp), torch::where(codes < 0, torch::full({}, -wn), torch::zeros({})));
}

}  // namespace ttq::test
