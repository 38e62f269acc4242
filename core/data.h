// The data a model trains and is evaluated on: the in-memory splits every dataset kind produces,
// the preprocessing that turns stored samples into model inputs, and the per-sample augmentation.
// Loaders (built-in kinds and plugins) and their settings live in plugins/; they only fill these types.
#pragma once
#include <torch/types.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace ttq {

// Which random augmentation a training batch gets: keyed by (seed, epoch, sample index), so a
// sample's crop and flip do not depend on batching, world size or resume.
struct AugmentKey {
  uint64_t seed;
  int epoch;
};

// Samples decoded when a batch asks for them (an image folder of any size): the stored inputs of
// samples `idx` (uint8 N×C×H×W images), a training sample's random geometry keyed by `augment` and
// its index, so that it does not depend on the batch, the number of threads or the world size.
// load() runs on the calling thread and may be called from several at once; prepare_inputs()
// splits a batch among threads() of them.
class SampleSource {
 public:
  virtual ~SampleSource() = default;
  virtual int64_t size() const = 0;
  virtual int threads() const = 0;
  virtual std::vector<torch::Tensor> load(const torch::Tensor& idx, const std::optional<AugmentKey>& augment) const = 0;
  virtual std::shared_ptr<const SampleSource> first(int64_t n) const = 0;  // the first n samples
};

// One split: the model's inputs (one tensor per argument of forward, first dimension the sample)
// and class labels when the data has them.
struct Dataset {
  // uint8 images N×C×H×W (scaled to [0,1] then normalized), float tensors, or integer tensors
  // passed unchanged (token ids, attention masks).
  std::vector<torch::Tensor> inputs;
  std::shared_ptr<const SampleSource> source;  // set instead of `inputs` for data decoded per batch
  torch::Tensor labels;  // int64 N; undefined for unlabeled data

  Dataset() = default;
  Dataset(torch::Tensor x, torch::Tensor y) : inputs{std::move(x)}, labels(std::move(y)) {}
  Dataset(std::vector<torch::Tensor> xs, torch::Tensor y) : inputs(std::move(xs)), labels(std::move(y)) {}
  Dataset(std::shared_ptr<const SampleSource> s, torch::Tensor y) : source(std::move(s)), labels(std::move(y)) {}
  int64_t size() const { return source ? source->size() : inputs.empty() ? 0 : inputs.front().size(0); }
  bool labeled() const { return labels.defined(); }
  // Samples `idx` (int64; decoded, for a source), or the first n: every input and the labels.
  Dataset select(const torch::Tensor& idx) const;
  Dataset first(int64_t n) const;
};

// How stored samples become model inputs. A dataset kind gives its defaults; flags override them.
struct Preprocess {
  std::vector<double> mean;  // per channel (or one for all), for uint8 images in [0,1]; empty: none
  std::vector<double> std;
  bool flip = false;         // random horizontal flip while training
  int crop_padding = 0;      // random crop with this zero padding while training
  bool channels_last = false;  // 4-D float inputs in channels-last order (core/precision.h)
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
  Dataset train;
  Dataset test;
  int64_t num_classes = 0;
  Preprocess defaults;  // the kind's preprocessing
};

// --subset: the first n samples of each split.
void keep_first(DataSplits& splits, int64_t n);

// The model inputs for samples `idx` of `data`, in forward's order: uint8 images scaled and
// normalized, other tensors unchanged; with `augment`, each 4-D image cropped and flipped by its
// sample's key.
std::vector<torch::Tensor> prepare_inputs(const Dataset& data, const torch::Tensor& idx, const Preprocess& pre,
                             const std::optional<AugmentKey>& augment = std::nullopt);

}  // namespace ttq
