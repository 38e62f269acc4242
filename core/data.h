// The data a model trains and is evaluated on: the in-memory splits every dataset kind produces,
// the preprocessing that turns stored samples into model inputs, and the per-sample augmentation.
// Loaders (built-in kinds and plugins) live in plugins/; they only fill these types.
#pragma once
#include <torch/types.h>

#include <optional>
#include <string>
#include <vector>

namespace ttq {

struct Dataset {
  torch::Tensor inputs;  // uint8 images N×C×H×W (scaled to [0,1] then normalized), or float
  torch::Tensor labels;  // int64 N
  int64_t size() const { return labels.size(0); }
};

// How stored samples become model inputs. A dataset kind gives its defaults; flags override them.
struct Preprocess {
  std::vector<double> mean;  // per channel (or one for all), for uint8 images in [0,1]; empty: none
  std::vector<double> std;
  bool flip = false;         // random horizontal flip while training
  int crop_padding = 0;      // random crop with this zero padding while training
};

// What the user asked to change (finetune/eval flags); unset fields keep the dataset's default.
struct PreprocessOverrides {
  std::vector<double> mean, std;
  std::optional<bool> flip;
  std::optional<int> crop_padding;
};
// The defaults with the overrides applied; usage errors for inconsistent values.
Preprocess apply_overrides(Preprocess defaults, const PreprocessOverrides& overrides);

struct DataSplits {
  std::string name;  // the spec, "KIND:PATH"
  Dataset train;
  Dataset test;
  int64_t num_classes = 0;
  Preprocess defaults;  // the kind's preprocessing
};

// Settings a loader may use.
struct LoadOptions {
  int image_size = 32;  // imagefolder: shorter side resized to this, then center-cropped square
  int64_t max_image_pixels = 89478485;  // imagefolder: larger images are refused (PIL's default limit)
};

// --subset: the first n samples of each split.
void keep_first(DataSplits& splits, int64_t n);

// Which random augmentation a training batch gets: keyed by (seed, epoch, sample index), so a
// sample's crop and flip do not depend on batching, world size or resume.
struct AugmentKey {
  uint64_t seed;
  int epoch;
};

// The model inputs for samples `idx` of `data`: uint8 images scaled and normalized, other integer
// inputs as float; with `augment`, each sample cropped and flipped by its own key.
torch::Tensor prepare_inputs(const Dataset& data, const torch::Tensor& idx, const Preprocess& pre,
                             const std::optional<AugmentKey>& augment = std::nullopt);

}  // namespace ttq
