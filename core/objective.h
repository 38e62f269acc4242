// What training minimizes and evaluation measures: cross-entropy on class labels, distillation
// from a frozen teacher (TernaryBERT's and BitDistill's pairing of a ternary student with its
// full-precision model), or both; the metrics of a split or an epoch (Metrics), and evaluation:
// used by the trainer after each epoch and by `ttq eval` for any model.
#pragma once
#include <torch/script.h>

#include <optional>
#include <string>
#include <vector>

#include "core/choices.h"
#include "core/data.h"

namespace ttq {

enum class DistillLoss { Auto, Kl, Mse };
inline constexpr Choice<DistillLoss> kDistillLosses[] = {
    {"auto", DistillLoss::Auto, "kl when the data has labels, mse otherwise"},
    {"kl", DistillLoss::Kl, "T²·KL(softmax(teacher/T) ‖ softmax(student/T)) over the last dimension (class scores)"},
    {"mse", DistillLoss::Mse, "mean squared error of the raw outputs (regression, embeddings, any tensor)"}};
constexpr const auto& choices(DistillLoss) { return kDistillLosses; }

// The flags of the objective (finetune; eval takes --teacher and --model-output).
struct ObjectiveOptions {
  std::string output;        // --model-output: a dict key or a tuple index; empty: every floating tensor
  bool distill = false;      // --distill: the input model teaches
  std::string teacher;       // --teacher FILE (implies distillation)
  DistillLoss loss = DistillLoss::Auto;
  double temperature = 4;    // of kl
  double alpha = -1;         // weight of the distillation loss; < 0: 1 without labels, 0.5 with them
  bool distilling() const { return distill || !teacher.empty(); }
};

// The options with `auto` values decided for data with or without labels; usage errors for
// values out of range.
ObjectiveOptions resolve(ObjectiveOptions options, bool labeled);

// Sums over the samples of a split or an epoch; averaged() turns them into means.
struct Metrics {
  double loss = 0;             // the objective
  double ce = 0, distill = 0;  // its terms: cross-entropy on labels, distillation loss
  double top1 = 0, top5 = 0;   // hits on labeled samples
  int64_t samples = 0, labeled = 0;
  // Against the teacher: positions whose top-1 agrees, positions compared (class-score outputs
  // only), and the squared error with the sums of the teacher's values for its spread.
  double agree = 0, positions = 0, sq_err = 0, t_sum = 0, t_sq = 0, t_count = 0;
  int64_t outputs = 0;  // the number of classes, when labeled
  // Evaluation: samples left out of every sum above because their batch's outputs were not finite
  // (a one-shot model whose BatchNorm statistics no longer fit its weights can overflow).
  double nonfinite = 0;
  // Set by averaged(): agreement = agree / positions; rel_mse = ‖y_s − y_t‖² / ‖y_t − mean(y_t)‖².
  std::optional<double> agreement, rel_mse;

  bool has_labels() const { return labeled > 0; }
  // Every sum in one vector (all-reduce, checkpoints), and back (with the output width, which is
  // not a sum).
  std::vector<double> sums() const;
  static Metrics from_sums(const std::vector<double>& v, int64_t outputs = 0);
  Metrics& operator+=(const Metrics& other);
};
// The sums turned into means: loss terms per sample, hits per labeled sample.
Metrics averaged(Metrics m);

// One number a split measured: the one table behind the JSON of the metadata and the run log, the
// summary lines and stats (a new metric is one row in measured_metrics).
struct MetricValue {
  const char* name;  // after the split's prefix ("val_", "train_"): "loss", "top1", "rel_mse"
  double value;
  bool fraction;     // shown as a percent
  bool headline;     // also shown where a training split shows only its main numbers
};
// The metrics `m` (averaged) holds, in their one order: loss, top1 and top5 with labels, the loss's
// terms ce (with labels) and distill when `terms` and distilling (training splits), agreement and
// rel_mse against a teacher.
std::vector<MetricValue> measured_metrics(const Metrics& m, bool terms);
// The number a run's states are judged by on validation (--keep best), higher better: top-1 with
// labels, else the agreement with the teacher (class scores), else minus the relative MSE, else
// minus the loss; minus infinity when some outputs were not finite. `validation_metric` names it
// ("top1", "agreement", "rel_mse", "loss").
double validation_score(const Metrics& averaged);
const char* validation_metric(const Metrics& averaged);
// Whether a metric's name, with or without its split's prefix, is a fraction (top1, val_agreement).
bool is_fraction(const std::string& metric);
// "val top-1 86.19%", "val rel_mse 0.0123": a validation_score as the summary lines show its metric.
std::string describe_score(const char* metric, double score);

// The floating tensors of a model's output: a tensor, a tuple or list, or a dict with string keys
// (in its order). `select` ("KEY" or "INDEX", --model-output) picks one; an input error when it
// names nothing.
std::vector<torch::Tensor> output_tensors(const c10::IValue& output, const std::string& select);
// Whether every value of `outputs` is finite.
bool all_finite(const std::vector<torch::Tensor>& outputs);
// Adds to `m` the squared error of `student` against `target` (the same tensors, in order) and
// the sums of the target's values for its spread, and the top-1 agreement when the one output
// holds class scores in its last dimension.
void compare_outputs(const std::vector<torch::Tensor>& student, const std::vector<torch::Tensor>& target, Metrics& m);
// The one output tensor that holds class scores [batch, classes]; an input error saying what the
// model returns instead.
torch::Tensor classifier_scores(const std::vector<torch::Tensor>& outputs);
// Input error unless every label is a class index in 0..classes-1.
void check_labels(const torch::Tensor& labels, int64_t classes);

class Objective {
 public:
  // `options` resolved; `teacher` when distilling or comparing with a teacher (eval --teacher).
  explicit Objective(ObjectiveOptions options, std::optional<torch::jit::Module> teacher = std::nullopt);

  // The loss of a batch whose model output is `output` (with autograd when the output has it):
  // cross-entropy on `labels` when defined, the distillation loss against the teacher's output on
  // the same `inputs` when there is a teacher, weighted by alpha. Adds the batch to `m`; with
  // `compare`, also its agreement and squared error against the teacher (evaluation: the training
  // step does not report them and skips that work).
  torch::Tensor operator()(const c10::IValue& output, const std::vector<torch::Tensor>& inputs,
                           const torch::Tensor& labels, Metrics& m, bool compare = true) const;
  bool has_teacher() const { return teacher_.has_value(); }
  const ObjectiveOptions& options() const { return options_; }

 private:
  torch::Tensor distillation(const std::vector<torch::Tensor>& student,
                             const std::vector<torch::Tensor>& teacher) const;

  ObjectiveOptions options_;
  mutable std::optional<torch::jit::Module> teacher_;  // forward is not const; it is not changed
};

// The model's output for `inputs`, with an input error naming their shapes when it rejects them.
c10::IValue run_model(torch::jit::Module& module, const std::vector<torch::Tensor>& inputs);

// Sums over batches shard, shard + shards, ... of `data`, in eval mode without gradients: the
// ranks of a data-parallel group each take their shard and add the sums up. A batch whose outputs
// are not finite is counted in `nonfinite` only (the trainer judges such a state; eval refuses it).
// Input errors, one line, for inputs the model rejects and labels beyond its outputs.
Metrics evaluate_sums(torch::jit::Module& module, const Dataset& data, const Preprocess& pre,
                      const Objective& objective, int64_t batch_size, int shard = 0, int shards = 1);

// An input error when some of the outputs `m` summed were not finite.
void require_finite_outputs(const Metrics& m);
// Means over the whole split; an input error when some outputs are not finite.
Metrics evaluate_module(torch::jit::Module& module, const Dataset& data, const Preprocess& pre,
                        const Objective& objective, int64_t batch_size);

}  // namespace ttq
