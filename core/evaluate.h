// Accuracy and loss of a classifier on a split: used by the trainer after each epoch and by
// `ttq eval` for any model.
#pragma once
#include <torch/script.h>

#include "core/data.h"

namespace ttq {

struct Metrics {
  double loss = 0, top1 = 0, top5 = 0;
  int64_t samples = 0;
  int64_t outputs = 0;  // evaluate_module: the width of the model's output
};

// The model's output as class scores [batch, classes]; an input error saying what it is instead
// (a tuple, a dict, a tensor of another rank).
torch::Tensor classifier_scores(const c10::IValue& output);
// Input error unless every label is a class index in 0..classes-1.
void check_labels(const torch::Tensor& labels, int64_t classes);

// Adds a batch's summed loss and its top-1/top-5 hits to `m` (sums, not means).
void accumulate(Metrics& m, const torch::Tensor& logits, const torch::Tensor& labels, double loss_sum);
// The sums turned into means per sample.
Metrics averaged(Metrics m);

// Sums over batches shard, shard + shards, ... of `data`, in eval mode without gradients: the
// ranks of a data-parallel group each take their shard and add the sums up. Input errors, one
// line, for inputs the model rejects and labels beyond its outputs.
Metrics evaluate_sums(torch::jit::Module& module, const Dataset& data, const Preprocess& pre, int64_t batch_size,
                      int shard = 0, int shards = 1);

// Means over the whole split.
inline Metrics evaluate_module(torch::jit::Module& module, const Dataset& data, const Preprocess& pre,
                               int64_t batch_size) {
  return averaged(evaluate_sums(module, data, pre, batch_size));
}

}  // namespace ttq
