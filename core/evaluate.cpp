#include "core/evaluate.h"

#include <torch/nn/functional/loss.h>

#include "core/error.h"
#include "core/util.h"

namespace ttq {

torch::Tensor classifier_scores(const c10::IValue& output) {
  if (!output.isTensor())
    throw input_error(fmt::format("the model returns a {}, not a tensor of class scores: finetune and eval need a "
                                  "classifier whose forward returns [batch, classes]", output.tagKind()));
  const torch::Tensor t = output.toTensor();
  if (t.dim() != 2)
    throw input_error(fmt::format("the model's output has shape {}; finetune and eval need class scores of shape "
                                  "[batch, classes]", bracketed_shape(t.sizes().vec())));
  if (!torch::isfinite(t).all().item<bool>())
    throw input_error("the model's outputs are not finite (NaN or Inf): check the inputs (--mean/--std, the data) and "
                      "the model's weights");
  return t;
}

void check_labels(const torch::Tensor& labels, int64_t classes) {
  if (labels.numel() == 0) return;
  const int64_t lo = labels.min().item<int64_t>(), hi = labels.max().item<int64_t>();
  if (lo < 0) throw input_error(fmt::format("label {} is negative: labels are class indices 0..{}", lo, classes - 1));
  if (hi >= classes)
    throw input_error(fmt::format("label {} is out of range for the model's {} outputs", hi, classes));
}

void accumulate(Metrics& m, const torch::Tensor& logits, const torch::Tensor& labels, double loss_sum) {
  const int64_t k = std::min<int64_t>(5, logits.size(1));
  const auto topk = std::get<1>(logits.topk(k, 1));
  const auto hits = topk.eq(labels.unsqueeze(1));
  m.top1 += hits.select(1, 0).sum().item<double>();
  m.top5 += hits.any(1).sum().item<double>();
  m.loss += loss_sum;
  m.samples += labels.size(0);
}

Metrics averaged(Metrics m) {
  if (m.samples) m.loss /= m.samples, m.top1 /= m.samples, m.top5 /= m.samples;
  return m;
}

Metrics evaluate_sums(torch::jit::Module& module, const Dataset& data, const Preprocess& pre, int64_t batch_size,
                      int shard, int shards) {
  torch::NoGradGuard no_grad;
  const bool was_training = module.is_training();
  module.train(false);
  Metrics m;
  for (int64_t start = shard * batch_size; start < data.size(); start += shards * batch_size) {
    const auto idx = torch::arange(start, std::min(start + batch_size, data.size()), torch::kInt64);
    const auto x = prepare_inputs(data, idx, pre);
    const auto y = data.labels.index_select(0, idx);
    c10::IValue output;
    try {
      output = module.forward({x});
    } catch (const std::exception& e) {  // c10::Error, or the TorchScript interpreter's JITException
      throw input_error(fmt::format("the model rejects inputs of shape {}: {}", bracketed_shape(x.sizes().vec()),
                                    short_message(e.what())));
    }
    const torch::Tensor logits = classifier_scores(output);
    check_labels(y, logits.size(1));
    const double loss = torch::nn::functional::cross_entropy(
                            logits, y, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
                            .item<double>();
    accumulate(m, logits, y, loss);
    m.outputs = logits.size(1);
  }
  module.train(was_training);
  return m;
}

}  // namespace ttq
