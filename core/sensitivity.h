// Which layers to make ternary, measured (`ttq sensitivity`): each candidate layer ternarized
// alone, one-shot, and the change of a metric on held-out samples against the FP model; then the
// frontier, layers added in order of least damage per byte saved, each point evaluated.
#pragma once
#include <torch/script.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "core/choices.h"
#include "core/data.h"
#include "core/quantize.h"

namespace ttq {

class Communicator;

enum class SensitivityMetric { Auto, Top1, Loss, Agreement, RelMse };
inline constexpr Choice<SensitivityMetric> kSensitivityMetrics[] = {
    {"auto", SensitivityMetric::Auto, "top1 with labels; without them agreement for class scores, else rel_mse"},
    {"top1", SensitivityMetric::Top1, "top-1 accuracy on the labels (drop in points)"},
    {"loss", SensitivityMetric::Loss, "cross-entropy on the labels (drop: the increase)"},
    {"agreement", SensitivityMetric::Agreement, "top-1 agreement with the FP model's outputs (drop in points)"},
    {"rel_mse", SensitivityMetric::RelMse, "relative MSE against the FP model's outputs (drop: 100 times it)"}};
constexpr const auto& choices(SensitivityMetric) { return kSensitivityMetrics; }
// Whether the metric is a fraction (shown as a percent; its drop in points).
inline bool is_fraction(SensitivityMetric m) {
  return m == SensitivityMetric::Top1 || m == SensitivityMetric::Agreement;
}

struct SensitivityOptions {
  // The threshold and scales of the one-shot ternarization; the selection is the one quantize
  // would make (the rule point), and every candidate its --include/--exclude leave is measured,
  // the first and last layers too.
  QuantizeOptions quantize;
  SensitivityMetric metric = SensitivityMetric::Auto;
  std::string output;  // --model-output
  int64_t batch_size = 256;
  // Without labels: the FP model's outputs are held up to this many bytes, and computed again by
  // a copy of the FP model past it (a language model's logits over many samples would not fit).
  int64_t reference_bytes = int64_t{1} << 30;
  // --max-drop's budget: with it, the report has the budget's walk (BudgetWalk) too.
  double max_drop = std::numeric_limits<double>::quiet_NaN();
};

// One evaluation: the metric's value and its drop from the FP model, higher worse, in points for
// fractions (top1, agreement; rel_mse as 100 times its value) and in the loss's units for loss.
// Outputs that are not finite on some samples make the value NaN and the drop infinite.
struct Measured {
  double value = 0;
  double drop = 0;
  double nonfinite = 0;  // fraction of the samples whose outputs were not finite
};

struct LayerSensitivity {
  LayerRecord layer;  // its one-shot plan, alone
  int64_t numel = 0;
  int64_t bytes_saved = 0;  // FP32 bytes less its bound at the codes' entropy
  bool in_rule = false;     // quantize with the same flags ternarizes it
  Measured alone;
};

// A set of ternary layers: its size (2-bit codes, and at the codes' entropy, as inspect counts)
// and what it measured.
struct SetPoint {
  std::vector<std::string> layers;  // forward order
  int64_t bytes_2bit = 0, bytes_entropy = 0;
  Measured measured;
};

// --max-drop's set: the frontier's largest set within the budget, then each further layer in the
// frontier's order whose drop alone is within it, tried and kept while the set stays within it.
// The frontier alone would stop at its first point past the budget, even when that point's layer
// breaks it alone and smaller layers after it would not.
struct BudgetWalk {
  std::vector<size_t> chosen;  // indices into the report's layers
  SetPoint set;                // the chosen set (no layers, drop 0, when none is within the budget)
  std::vector<double> tried;   // per layer: the drop of the set it was tried in; NaN when not tried
};

struct SensitivityReport {
  SensitivityMetric metric = SensitivityMetric::Auto;  // decided
  int64_t samples = 0;
  double fp_value = 0;
  int64_t model_bytes = 0;  // the FP model as stored
  std::vector<LayerSensitivity> layers;  // forward order
  // Point k ternarizes the first k+1 layers of `order` (indices into `layers`): least drop per
  // byte saved first, so sizes fall along the frontier and its last point is every layer.
  std::vector<size_t> order;
  std::vector<SetPoint> frontier;
  SetPoint rule;  // quantize's selection with the same flags
  std::optional<BudgetWalk> walk;  // with options.max_drop
};

// The walk of a --max-drop budget over a report's frontier, each set tried measured by `evaluate`.
using EvaluateSet = std::function<SetPoint(const std::vector<size_t>& layers)>;
BudgetWalk walk_budget(const SensitivityReport& report, double max_drop, const EvaluateSet& evaluate);

// Progress: `done` of `total` evaluations, the one just finished named.
using SensitivityProgress = std::function<void(size_t done, size_t total, const std::string& what)>;

// Measures on `data` (all of it, in batches; eval mode, no gradients). `module` is changed while
// measuring and restored bit for bit. Usage errors for a metric the data cannot give (top1 or
// loss without labels, agreement without class scores); input errors when the FP model's outputs
// are not finite.
// With `ranks` (finetune's data-parallel group), each rank evaluates a share and all get the report.
SensitivityReport measure_sensitivity(torch::jit::Module& module, const Dataset& data, const Preprocess& pre,
                                      const SensitivityOptions& options, const SensitivityProgress& progress = {},
                                      Communicator* ranks = nullptr);

// The drop of `model` from `fp` on `data` by options.metric (decided, not auto), measured as
// measure_sensitivity measures a set: finetune's check of its budget after training.
Measured measure_against(torch::jit::Module& fp, torch::jit::Module& model, const Dataset& data, const Preprocess& pre,
                         const SensitivityOptions& options);

// --max-drop and --target-ratio (quantize, inspect, finetune): which layers to make ternary, chosen from the
// frontier of a sensitivity report measured on held-out samples.
struct Budget {
  double max_drop = std::numeric_limits<double>::quiet_NaN();      // points of the metric (drop)
  double target_ratio = std::numeric_limits<double>::quiet_NaN();  // times smaller than FP at the codes' entropy
  SensitivityMetric metric = SensitivityMetric::Auto;
  int64_t samples = 2000;  // held-out samples measured; 0: all of the split
  bool active() const { return !std::isnan(max_drop) || !std::isnan(target_ratio); }
  std::string describe() const;  // "--max-drop 1", "--target-ratio 8"
};

// A layer as the budget saw it: its drop alone and, when it stays full precision, why.
struct BudgetLayer {
  std::string name;
  double drop = 0;
  bool ternary = false;
  std::string reason;  // empty when ternary
};

// What a budget chose, as the TTQ metadata stores it and inspect shows it.
struct BudgetChoice {
  std::string budget;  // Budget::describe()
  SensitivityMetric metric = SensitivityMetric::Auto;  // decided
  std::string data;    // the data spec of the samples measured
  int64_t samples = 0;
  double fp_value = 0;
  double drop = 0;   // the chosen set's, one-shot on those samples
  double ratio = 0;  // FP bytes over the chosen set's at the codes' entropy
  std::vector<BudgetLayer> layers;  // every layer measured, forward order
  std::vector<std::string> ternary() const;
};

// The set the budget picks: --max-drop, the report's walk (measured with options.max_drop);
// --target-ratio, the first frontier point (least damage per byte saved) that reaches it. A usage
// error when no set qualifies.
BudgetChoice choose_by_budget(const SensitivityReport& report, const Budget& budget);

}  // namespace ttq
