#include "core/quantize.h"

#include <algorithm>

namespace ttq {
namespace {

// Why `auto` picks what it picks, naming the first layer no normalization follows.
std::string normalization_reason(const std::vector<Candidate>& candidates) {
  std::vector<std::string> bare;
  size_t selected = 0;
  for (const auto& c : candidates) {
    if (!c.selected) continue;
    ++selected;
    if (!c.normalized) bare.push_back(c.name);
  }
  if (bare.empty()) return "a normalization follows every ternary layer";
  return fmt::format("no normalization takes the output of {} of {} ternary layers ({}{})", bare.size(), selected,
                     bare.front(), bare.size() > 1 ? ", ..." : "");
}

}  // namespace

LayerPlan plan_layers(const torch::jit::Module& module, const QuantizeOptions& options, PlanPurpose purpose) {
  validate(options.threshold);
  LayerPlan plan;
  plan.candidates = find_candidates(module);
  if (purpose == PlanPurpose::DryRun)
    mark_selected(plan.candidates, options.selection);
  else
    apply_selection(plan.candidates, options.selection);
  plan.every_layer_normalized = std::all_of(plan.candidates.begin(), plan.candidates.end(),
                                            [](const Candidate& c) { return !c.selected || c.normalized; });
  plan.init_reason = normalization_reason(plan.candidates);
  plan.init = options.init;
  if (plan.init == ScaleInit::Auto)
    plan.init = purpose == PlanPurpose::Finetune && plan.every_layer_normalized ? ScaleInit::Ones : ScaleInit::Mean;
  for (const auto& c : plan.candidates) {
    if (!c.selected) continue;
    if (purpose != PlanPurpose::DryRun) check_finite(c.name, c.weight);
    plan.layers.push_back(plan_layer(c.name, c.weight, options.threshold, plan.init));
    plan.weights.push_back(c.weight);
  }
  return plan;
}

void ternarize_in_place(torch::Tensor weight, const LayerRecord& r) {
  torch::NoGradGuard no_grad;
  const auto wp = torch::full({}, r.wp, weight.options());
  const auto wn = torch::full({}, r.wn, weight.options());
  weight.copy_(ternarize(weight, wp, wn, r.delta));
}

std::vector<LayerRecord> quantize_module(torch::jit::Module& module, const QuantizeOptions& options) {
  LayerPlan plan = plan_layers(module, options, PlanPurpose::Quantize);
  for (size_t i = 0; i < plan.layers.size(); ++i) {
    const LayerRecord& r = plan.layers[i];
    ternarize_in_place(plan.weights[i], r);  // the parameter, shared with module
    spdlog::debug("{}: delta={:.6g} wp={:.6g} wn={:.6g} sparsity={:.3f}", r.name, r.delta, r.wp, r.wn,
                  r.counts.sparsity());
  }
  return plan.layers;
}

}  // namespace ttq
