#include "core/sensitivity.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <optional>
#include <stdexcept>

#include "core/distributed.h"
#include "core/error.h"
#include "core/objective.h"
#include "core/report.h"

namespace ttq {
namespace {

// The FP model's outputs on each batch, which the variants are compared with: held while they fit
// in `limit` bytes, and beyond that computed again by a copy of the FP model.
class Reference {
 public:
  explicit Reference(int64_t limit) : limit_(limit) {}
  void hold(const std::vector<torch::Tensor>& outputs, const torch::jit::Module& fp) {
    if (fp_) return;
    for (const auto& t : outputs) bytes_ += t.numel() * static_cast<int64_t>(t.element_size());
    if (bytes_ <= limit_)
      batches_.push_back(outputs);
    else
      fp_ = fp.clone();
  }
  std::vector<torch::Tensor> outputs(size_t batch, const std::vector<torch::Tensor>& inputs,
                                     const std::string& select) {
    if (batch < batches_.size()) return batches_[batch];
    return output_tensors(run_model(*fp_, inputs), select);
  }

 private:
  std::vector<std::vector<torch::Tensor>> batches_;
  std::optional<torch::jit::Module> fp_;
  int64_t limit_, bytes_ = 0;
};

ObjectiveOptions output_only(const std::string& output) {
  ObjectiveOptions o;
  o.output = output;
  return o;
}

class Evaluator {
 public:
  Evaluator(const Dataset& data, const Preprocess& pre, const SensitivityOptions& o)
      : data_(data), pre_(pre), batch_size_(o.batch_size), objective_(output_only(o.output)),
        reference_(o.reference_bytes) {}

  // The sums over all the data. The first call, on the FP model, sets the reference when `compare`.
  Metrics sums(torch::jit::Module& module, bool compare) {
    torch::NoGradGuard no_grad;
    const bool was_training = module.is_training();
    module.train(false);
    Metrics m;
    const bool first = !measured_;
    measured_ = true;
    size_t batch = 0;
    for (int64_t start = 0; start < data_.size(); start += batch_size_, ++batch) {
      const auto idx = torch::arange(start, std::min(start + batch_size_, data_.size()), torch::kInt64);
      const auto inputs = prepare_inputs(data_, idx, pre_);
      const c10::IValue output = run_model(module, inputs);
      const auto outputs = output_tensors(output, objective_.options().output);
      if (first && compare) reference_.hold(outputs, module);
      if (!all_finite(outputs)) {
        m.nonfinite += static_cast<double>(idx.size(0));
        continue;
      }
      if (data_.labeled())
        objective_(output, inputs, data_.labels.index_select(0, idx), m, false);
      else
        m.samples += idx.size(0);
      if (compare) compare_outputs(outputs, reference_.outputs(batch, inputs, objective_.options().output), m);
    }
    module.train(was_training);
    return m;
  }

 private:
  const Dataset& data_;
  const Preprocess& pre_;
  int64_t batch_size_;
  Objective objective_;
  Reference reference_;
  bool measured_ = false;
};

bool compares(SensitivityMetric metric) {
  return metric == SensitivityMetric::Agreement || metric == SensitivityMetric::RelMse;
}

double value_of(const Metrics& m, SensitivityMetric metric) {
  switch (metric) {
    case SensitivityMetric::Top1: return m.top1;
    case SensitivityMetric::Loss: return m.loss;
    case SensitivityMetric::Agreement: return m.agreement.value_or(0);
    case SensitivityMetric::RelMse: return m.rel_mse.value_or(0);
    case SensitivityMetric::Auto: break;
  }
  return 0;
}

// The drop from `fp`, higher worse: points for fractions and the relative MSE, the loss's units.
double drop_of(double value, double fp, SensitivityMetric metric) {
  switch (metric) {
    case SensitivityMetric::Top1:
    case SensitivityMetric::Agreement: return (fp - value) * 100;
    case SensitivityMetric::RelMse: return (value - fp) * 100;
    default: return value - fp;
  }
}

// The metric asked for, or auto's choice, checked against what the data and outputs give.
SensitivityMetric decide_metric(SensitivityMetric asked, bool labeled, const Metrics& fp) {
  const bool class_scores = fp.positions > 0;
  if (asked == SensitivityMetric::Auto)
    return labeled ? SensitivityMetric::Top1 : class_scores ? SensitivityMetric::Agreement : SensitivityMetric::RelMse;
  if (!labeled && (asked == SensitivityMetric::Top1 || asked == SensitivityMetric::Loss))
    throw usage_error(fmt::format("--metric {} needs labels and the data has none: use agreement or rel_mse",
                                  choice_name(asked)));
  if (asked == SensitivityMetric::Agreement && !class_scores)
    throw usage_error("--metric agreement needs one output of class scores (its last dimension): use rel_mse");
  return asked;
}

Measured measured(const Metrics& m, SensitivityMetric metric, double fp_value) {
  Measured r;
  r.nonfinite = m.nonfinite / (m.nonfinite + static_cast<double>(m.samples));
  r.value = m.nonfinite > 0 ? std::nan("") : value_of(averaged(m), metric);
  r.drop = m.nonfinite > 0 ? std::numeric_limits<double>::infinity() : drop_of(r.value, fp_value, metric);
  return r;
}

struct Layers {
  std::vector<LayerRecord> plans;
  std::vector<torch::Tensor> weights, originals;
  std::vector<LayerReport> reports;  // for the sizes, all full precision
};

Layers plan_measured(const torch::jit::Module& module, const QuantizeOptions& options) {
  QuantizeOptions every = options;
  every.selection.quantize_first = every.selection.quantize_last = true;
  LayerPlan plan = plan_layers(module, every, PlanPurpose::Quantize);
  Layers l;
  l.plans = plan.layers;
  l.weights = plan.weights;
  for (size_t i = 0; i < plan.layers.size(); ++i) {
    l.originals.push_back(plan.weights[i].detach().clone());
    LayerReport r;
    r.layer = plan.layers[i];
    r.numel = plan.weights[i].numel();
    l.reports.push_back(r);
  }
  return l;
}

// Least drop per byte saved first; drops at or below zero are free and go by bytes saved.
std::vector<size_t> frontier_order(const std::vector<LayerSensitivity>& layers) {
  std::vector<size_t> order(layers.size());
  std::iota(order.begin(), order.end(), size_t{0});
  const auto cost = [&](size_t i) {
    const auto& l = layers[i];
    if (std::isinf(l.alone.drop) || l.bytes_saved <= 0) return std::numeric_limits<double>::infinity();
    return std::max(l.alone.drop, 0.0) / static_cast<double>(l.bytes_saved);
  };
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    if (cost(a) != cost(b)) return cost(a) < cost(b);
    return layers[a].bytes_saved > layers[b].bytes_saved;
  });
  return order;
}

// One run of measure_sensitivity. With ranks, evaluation e (after the FP model's, which every
// rank needs) is rank e % world's, and sums over ranks give every rank all the numbers.
class Measurement {
 public:
  Measurement(torch::jit::Module& module, const Dataset& data, const Preprocess& pre, const SensitivityOptions& o,
              const SensitivityProgress& progress, Communicator* ranks)
      : module_(module), data_(data), options_(o), progress_(progress), evaluator_(data, pre, o),
        layers_(plan_measured(module, o.quantize)), rank_(ranks ? ranks->rank() : 0),
        world_(ranks ? ranks->world_size() : 1), ranks_(ranks) {
    const size_t evaluations = 2 * layers_.plans.size() + 1;
    for (size_t e = 0; e < evaluations; ++e) total_ += owns(e);
  }

  SensitivityReport run() {
    SensitivityReport r = measure_fp();
    const LayerPlan rule = plan_layers(module_, options_.quantize, PlanPurpose::DryRun);
    const size_t n = layers_.plans.size();
    for (size_t i = 0; i < n; ++i) {
      LayerSensitivity l;
      l.layer = layers_.plans[i];
      l.numel = layers_.reports[i].numel;
      l.bytes_saved = l.numel * 4 - ternary_bound_bytes(l.layer.counts);
      l.in_rule = find_layer(rule.layers, l.layer.name) != nullptr;
      l.alone = measure(r, {i}, l.layer.name).measured;
      r.layers.push_back(std::move(l));
    }
    std::vector<Measured*> shared;
    for (auto& l : r.layers) shared.push_back(&l.alone);
    share(shared);  // the order needs every layer's drop
    r.order = frontier_order(r.layers);
    std::vector<size_t> set;
    for (const size_t i : r.order) {
      set.push_back(i);
      r.frontier.push_back(measure(r, set, "+ " + layers_.plans[i].name));
    }
    std::vector<size_t> rule_set;
    for (size_t i = 0; i < n; ++i)
      if (r.layers[i].in_rule) rule_set.push_back(i);
    r.rule = measure(r, rule_set, "quantize's selection");
    restore();
    shared.clear();
    for (auto& p : r.frontier) shared.push_back(&p.measured);
    shared.push_back(&r.rule.measured);
    share(shared);
    if (!std::isnan(options_.max_drop)) walk(r);
    return r;
  }

 private:
  bool owns(size_t evaluation) const { return static_cast<int>(evaluation % world_) == rank_; }
  void step(const std::string& what) {
    if (progress_) progress_(++done_, total_, what);
  }
  void restore() {
    for (size_t i = 0; i < layers_.weights.size(); ++i) layers_.weights[i].detach().copy_(layers_.originals[i]);
  }

  SensitivityReport measure_fp() {
    SensitivityReport r;
    r.model_bytes = compute_totals(module_, layers_.reports).model_bytes;
    const bool labeled = data_.labeled();
    const bool compare = options_.metric == SensitivityMetric::Auto ? !labeled : compares(options_.metric);
    const Metrics sums = evaluator_.sums(module_, compare);
    require_finite_outputs(sums);
    const Metrics fp = averaged(sums);
    r.metric = decide_metric(options_.metric, labeled, fp);
    r.samples = fp.samples;
    r.fp_value = value_of(fp, r.metric);
    ++total_;
    step("full precision");
    return r;
  }

  // The set's sizes on every rank; its evaluation on the rank that owns it (zeros elsewhere).
  SetPoint measure(const SensitivityReport& r, const std::vector<size_t>& set, const std::string& what) {
    SetPoint point;
    auto reports = layers_.reports;
    for (const size_t i : set) reports[i].kind = LayerKind::Planned;
    for (size_t i = 0; i < reports.size(); ++i)
      if (reports[i].coded()) point.layers.push_back(layers_.plans[i].name);
    const Totals sizes = compute_totals(module_, reports);
    point.bytes_2bit = sizes.bytes_2bit, point.bytes_entropy = sizes.bytes_entropy;
    if (!owns(evaluation_++)) return point;
    restore();
    for (const size_t i : set) ternarize_in_place(layers_.weights[i], layers_.plans[i]);
    point.measured = measured(evaluator_.sums(module_, compares(r.metric)), r.metric, r.fp_value);
    step(what);
    return point;
  }

  // Each set the walk tries is shared at once: the next set depends on it.
  void walk(SensitivityReport& r) {
    r.walk = walk_budget(r, options_.max_drop, [&](const std::vector<size_t>& set) {
      total_ += owns(evaluation_);
      SetPoint p = measure(r, set, "budget: + " + layers_.plans[set.back()].name);
      share({&p.measured});
      return p;
    });
    restore();
  }

  // The sum over ranks of values only their owner set: NaN and infinity survive adding zeros.
  void share(const std::vector<Measured*>& values) {
    if (!ranks_ || world_ == 1) return;
    auto t = torch::zeros({static_cast<int64_t>(values.size()), 3}, torch::kFloat64);
    auto a = t.accessor<double, 2>();
    for (size_t i = 0; i < values.size(); ++i)
      a[i][0] = values[i]->value, a[i][1] = values[i]->drop, a[i][2] = values[i]->nonfinite;
    ranks_->sum({t});
    for (size_t i = 0; i < values.size(); ++i) *values[i] = {a[i][0], a[i][1], a[i][2]};
  }

  torch::jit::Module& module_;
  const Dataset& data_;
  const SensitivityOptions& options_;
  const SensitivityProgress& progress_;
  Evaluator evaluator_;
  Layers layers_;
  int rank_, world_;
  Communicator* ranks_;
  size_t evaluation_ = 0, done_ = 0, total_ = 0;
};

}  // namespace

SensitivityReport measure_sensitivity(torch::jit::Module& module, const Dataset& data, const Preprocess& pre,
                                      const SensitivityOptions& options, const SensitivityProgress& progress,
                                      Communicator* ranks) {
  return Measurement(module, data, pre, options, progress, ranks).run();
}

Measured measure_against(torch::jit::Module& fp, torch::jit::Module& model, const Dataset& data, const Preprocess& pre,
                         const SensitivityOptions& options) {
  Evaluator evaluator(data, pre, options);
  const bool compare = compares(options.metric);
  const Metrics fp_sums = evaluator.sums(fp, compare);
  require_finite_outputs(fp_sums);
  const double fp_value = value_of(averaged(fp_sums), options.metric);
  return measured(evaluator.sums(model, compare), options.metric, fp_value);
}

std::string Budget::describe() const {
  return std::isnan(max_drop) ? fmt::format("--target-ratio {:g}", target_ratio) : fmt::format("--max-drop {:g}", max_drop);
}

std::vector<std::string> BudgetChoice::ternary() const {
  std::vector<std::string> out;
  for (const auto& l : layers)
    if (l.ternary) out.push_back(l.name);
  return out;
}

BudgetWalk walk_budget(const SensitivityReport& r, double max_drop, const EvaluateSet& evaluate) {
  BudgetWalk w;
  w.tried.assign(r.layers.size(), std::nan(""));
  size_t prefix = 0;
  for (size_t k = 1; k <= r.frontier.size(); ++k)
    if (r.frontier[k - 1].measured.drop <= max_drop) prefix = k;
  w.chosen.assign(r.order.begin(), r.order.begin() + static_cast<std::ptrdiff_t>(prefix));
  if (prefix > 0) w.set = r.frontier[prefix - 1];
  for (size_t at = prefix; at < r.order.size(); ++at) {
    const size_t i = r.order[at];
    if (!(r.layers[i].alone.drop <= max_drop)) continue;  // infinite and NaN drops too
    auto with = w.chosen;
    with.push_back(i);
    SetPoint p = evaluate(with);
    w.tried[i] = p.measured.drop;
    if (p.measured.drop <= max_drop) w.chosen = std::move(with), w.set = std::move(p);
  }
  return w;
}

namespace {

double ratio_of(const SensitivityReport& r, const SetPoint& p) {
  return static_cast<double>(r.model_bytes) / static_cast<double>(p.bytes_entropy);
}

// --target-ratio: the frontier adds the least damage per byte first, so its first point that
// reaches the ratio; its layers are order's first k.
size_t ratio_count(const SensitivityReport& r, const Budget& b) {
  for (size_t k = 1; k <= r.frontier.size(); ++k)
    if (ratio_of(r, r.frontier[k - 1]) >= b.target_ratio) return k;
  throw usage_error(fmt::format("{}: every layer ternary makes the model only {:.2f}x smaller at the codes' entropy",
                                b.describe(), r.frontier.empty() ? 1.0 : ratio_of(r, r.frontier.back())));
}

// Why a layer the --max-drop walk left out stays full precision.
std::string walk_reason(const LayerSensitivity& l, double tried, const Budget& b) {
  if (std::isinf(l.alone.drop)) return "its outputs are not finite alone";
  if (std::isnan(tried)) return fmt::format("beyond {:g} alone", b.max_drop);
  return fmt::format("the set with it drops {:.2f}, beyond {:g}", tried, b.max_drop);
}

}  // namespace

BudgetChoice choose_by_budget(const SensitivityReport& r, const Budget& b) {
  std::vector<size_t> chosen;
  const SetPoint* point = nullptr;
  if (!std::isnan(b.max_drop)) {
    if (!r.walk) throw std::logic_error("a --max-drop budget needs the report's walk (SensitivityOptions::max_drop)");
    if (r.walk->chosen.empty()) {
      const auto least = std::min_element(r.layers.begin(), r.layers.end(), [](const auto& x, const auto& y) {
        return x.alone.drop < y.alone.drop;
      });
      throw usage_error(fmt::format("{}: no layer keeps the one-shot drop within it; the least damaging, {}, drops {:.2f} alone",
                                    b.describe(), least->layer.name, least->alone.drop));
    }
    chosen = r.walk->chosen, point = &r.walk->set;
  } else {
    const size_t k = ratio_count(r, b);
    chosen.assign(r.order.begin(), r.order.begin() + static_cast<std::ptrdiff_t>(k));
    point = &r.frontier[k - 1];
  }
  BudgetChoice c;
  c.budget = b.describe();
  c.metric = r.metric;
  c.samples = r.samples;
  c.fp_value = r.fp_value;
  c.drop = point->measured.drop;
  c.ratio = ratio_of(r, *point);
  for (const auto& l : r.layers) c.layers.push_back({l.layer.name, l.alone.drop, false, ""});
  for (const size_t i : chosen) c.layers[i].ternary = true;
  for (size_t i = 0; i < r.layers.size(); ++i) {
    if (c.layers[i].ternary) continue;
    c.layers[i].reason = std::isnan(b.max_drop) ? fmt::format("not needed: {:.2f}x is reached without it", c.ratio)
                                                : walk_reason(r.layers[i], r.walk->tried[i], b);
  }
  return c;
}

}  // namespace ttq
