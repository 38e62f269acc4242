#include "plugins/dataset.h"

#include <dlfcn.h>
#include <fmt/format.h>

#include <filesystem>

#include "core/error.h"
#include "plugins/plugin_api.h"

namespace ttq {

void register_builtin_datasets();  // plugins/builtin_datasets.cpp

namespace {

std::vector<DatasetKind>& registry() {
  static std::vector<DatasetKind> kinds;
  return kinds;
}

// The built-in kinds come first, before any other is registered (so that a name of theirs is
// refused to others). Registration runs on the main thread; the flag is set before the built-ins
// register themselves through register_dataset_kind, which calls this again.
void ensure_builtins() {
  static bool registered = false;
  if (registered) return;
  registered = true;
  register_builtin_datasets();
}

}  // namespace

const std::vector<DatasetKind>& dataset_kinds() {
  ensure_builtins();
  return registry();
}

void register_dataset_kind(DatasetKind kind) {
  ensure_builtins();
  for (auto& k : registry())
    if (k.name == kind.name) throw usage_error(fmt::format("dataset kind '{}' is registered twice", kind.name));
  registry().push_back(std::move(kind));
}

DataSplits load_dataset(const std::string& spec, const LoadOptions& options) {
  const auto colon = spec.find(':');
  std::string names;
  for (const auto& k : dataset_kinds()) names += (names.empty() ? "" : ", ") + k.name;
  if (colon == std::string::npos || colon == 0 || colon + 1 == spec.size())
    throw usage_error(fmt::format("dataset '{}' is not KIND:PATH (kinds: {})", spec, names));
  const std::string kind = spec.substr(0, colon), path = spec.substr(colon + 1);
  for (const auto& k : dataset_kinds()) {
    if (k.name != kind) continue;
    DataSplits splits;
    try {
      splits = k.load(path, options);
    } catch (const Error&) {
      throw;
    } catch (const std::exception& e) {  // plugins throw what they like; LibTorch adds backtraces
      throw input_error(fmt::format("{}: {}", spec, short_message(e.what())));
    }
    if (splits.train.size() == 0 && !options.test_split_only)
      throw input_error(fmt::format("{}: the training split is empty", spec));
    if (splits.train.size() == 0 && splits.test.size() == 0) throw input_error(fmt::format("{}: holds no samples", spec));
    return splits;
  }
  throw usage_error(fmt::format("unknown dataset kind '{}' (kinds: {})", kind, names));
}

void load_plugin(const std::string& path) {
  ensure_builtins();
  if (!std::filesystem::exists(path)) throw input_error(fmt::format("{}: no such plugin file", path));
  // RTLD_GLOBAL: the plugin uses the LibTorch symbols of this process.
  void* handle = dlopen(std::filesystem::absolute(path).c_str(), RTLD_NOW | RTLD_GLOBAL);
  if (!handle) throw input_error(fmt::format("{}: cannot load plugin: {}", path, dlerror()));
  auto entry = reinterpret_cast<PluginEntryPoint>(dlsym(handle, kPluginEntryPoint));
  if (!entry) throw input_error(fmt::format("{}: not a ttq plugin (no {} function)", path, kPluginEntryPoint));
  struct Registrar : PluginRegistrar {
    void add(const std::string& kind, const std::string& help, DatasetLoader loader) override {
      register_dataset_kind({kind, help, std::move(loader)});
    }
  } registrar;
  entry(&registrar);
}

std::string default_dataset_spec() {
  std::error_code ec;
  return std::filesystem::is_directory(kDefaultDataDir, ec) ? std::string("fashion-mnist:") + kDefaultDataDir : "";
}

}  // namespace ttq
