// Data sources for finetune and eval. A dataset is named by a spec "KIND:PATH"; each kind has a
// loader that decodes the files once into in-memory tensors (images as uint8 N×C×H×W or float
// N×..., labels int64). Further kinds come from shared libraries (plugins/plugin_api.h).
#pragma once
#include <torch/types.h>

#include <functional>
#include <string>
#include <vector>

namespace ttq {

struct Dataset {
  torch::Tensor inputs;  // uint8 images N×C×H×W (scaled to [0,1] then normalized), or float
  torch::Tensor labels;  // int64 N
  int64_t size() const { return labels.size(0); }
};

// Per-kind preprocessing defaults; flags override them.
struct DataDefaults {
  std::vector<double> mean;  // per channel, for uint8 images in [0,1]; empty for float inputs
  std::vector<double> std;
  bool flip = false;         // random horizontal flip while training
  int crop_padding = 0;      // random crop with this zero padding while training
};

struct DataSplits {
  std::string name;  // the spec
  Dataset train;
  Dataset test;
  int64_t num_classes = 0;
  DataDefaults defaults;
};

// Settings a loader may use.
struct LoadOptions {
  int image_size = 32;  // imagefolder: shorter side resized to this, then center-cropped square
};

// A loader reads PATH (a folder or a file) and returns both splits; input errors for anything
// missing or malformed.
using DatasetLoader = std::function<DataSplits(const std::string& path, const LoadOptions& options)>;

struct DatasetKind {
  std::string name;
  std::string help;
  DatasetLoader load;
};

// The registry of kinds: the built-in ones, plus those plugins register.
std::vector<DatasetKind>& dataset_kinds();
void register_dataset_kind(DatasetKind kind);

// Parses "KIND:PATH" and loads it (input error naming the spec on failure).
DataSplits load_dataset(const std::string& spec, const LoadOptions& options = {});

// Loads a shared library that registers more kinds through plugins/plugin_api.h.
void load_plugin(const std::string& path);

// The embedded default: Fashion-MNIST from the Debian package, when installed.
inline constexpr const char* kDefaultDataDir = "/usr/share/datasets/fashion-mnist";
std::string default_dataset_spec();  // "" when the default data is missing

}  // namespace ttq
