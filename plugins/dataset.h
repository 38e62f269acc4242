// Data sources for finetune and eval: the registry of dataset kinds. A dataset is named by a spec
// "KIND:PATH"; each kind has a loader that decodes the files once into the in-memory splits of
// core/data.h (images as uint8 N×C×H×W or float N×..., labels int64). Further kinds come from
// shared libraries (plugins/plugin_api.h).
#pragma once
#include <array>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "core/data.h"

namespace ttq {

// The image folder's settings (the imagefolder kind validates them when it loads one: usage errors).
struct ImageFolderOptions {
  int image_size = 32;                  // the side of the square crops
  int64_t max_image_pixels = 89478485;  // larger images are refused (PIL's default limit)
  int workers = 1;                      // decoding threads (finetune and eval choose by cores)
  bool skip_bad_images = false;         // a bad image is replaced by the next good one of its class
  bool cache_images = false;            // decoded images kept in memory (within a budget)
  double val_fraction = 0.1;            // without train/ and val/: held out, per class
  std::array<double, 2> crop_scale{0.08, 1.0};  // training: RandomResizedCrop's area range
  bool random_crop = true;              // training: false takes the evaluation crop
};

// Settings a loader may use, each kind's in its own group.
struct LoadOptions {
  ImageFolderOptions image_folder;
  // The caller reads the test split only (eval, bench, a budget's samples): a loader may leave the
  // training split empty rather than decode it (Fashion-MNIST's is a quarter of eval's start-up).
  bool test_split_only = false;
};

// A loader reads PATH (a folder or a file) and returns both splits (or the test split alone, with
// test_split_only); input errors for anything missing or malformed.
using DatasetLoader = std::function<DataSplits(const std::string& path, const LoadOptions& options)>;

struct DatasetKind {
  std::string name;
  std::string help;
  DatasetLoader load;
};

// The registry of kinds: the built-in ones, plus those plugins registered so far.
const std::vector<DatasetKind>& dataset_kinds();
void register_dataset_kind(DatasetKind kind);

// Parses "KIND:PATH" and loads it (input error naming the spec on failure).
DataSplits load_dataset(const std::string& spec, const LoadOptions& options = {});

// Loads a shared library that registers more kinds through plugins/plugin_api.h.
void load_plugin(const std::string& path);

// The embedded default: Fashion-MNIST from the Debian package, when installed.
inline constexpr const char* kDefaultDataDir = "/usr/share/datasets/fashion-mnist";
std::string default_dataset_spec();  // "" when the default data is missing

}  // namespace ttq
