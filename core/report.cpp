#include "core/report.h"

#include <algorithm>

namespace ttq {
namespace {

// A tensor is ternary when its values are exactly {a < 0, 0, b > 0} (zero may be absent).
// With TTQ metadata the levels are the recorded -Wn and +Wp; otherwise min and max.
std::optional<LayerReport> read_ternary(const torch::Tensor& w, const LayerRecord* record) {
  torch::NoGradGuard no_grad;
  LayerReport r;
  if (record) r.layer = *record;
  r.layer.wp = record ? record->wp : w.max().item<float>();
  r.layer.wn = record ? record->wn : -w.min().item<float>();
  if (!record && !(r.layer.wp > 0.0f && r.layer.wn > 0.0f)) return std::nullopt;
  CodeCounts& c = r.layer.counts;
  c.pos = (w == r.layer.wp).sum().item<int64_t>();
  c.neg = (w == -r.layer.wn).sum().item<int64_t>();
  c.zero = (w == 0).sum().item<int64_t>();
  if (c.total() != w.numel()) return std::nullopt;
  r.kind = LayerKind::Ternary;
  r.delta_known = record != nullptr;
  return r;
}

}  // namespace

Totals compute_totals(const torch::jit::Module& module, const std::vector<LayerReport>& layers) {
  Totals t;
  for (const auto& x : module_tensors(module)) {
    if (x.is_parameter) t.parameters += x.value.numel();
    t.model_bytes += x.value.numel() * static_cast<int64_t>(x.value.element_size());
  }
  t.bytes_2bit = t.model_bytes;
  t.bytes_entropy = t.model_bytes;
  for (const auto& l : layers) {
    if (!l.coded()) continue;
    ++t.coded_layers;
    t.coded_parameters += l.numel;
    t.bytes_2bit += l.bytes_2bit() + kScaleBytes - l.bytes_fp32();
    t.bytes_entropy += ternary_bound_bytes(l.layer.counts) - l.bytes_fp32();
  }
  return t;
}

std::string to_string(LayerKind kind) {
  switch (kind) {
    case LayerKind::Ternary: return "ternary";
    case LayerKind::Planned: return "planned";
    case LayerKind::FullPrecision: break;
  }
  return "fp";
}

double Totals::ratio_2bit() const { return bytes_2bit ? double(model_bytes) / bytes_2bit : 0.0; }
double Totals::ratio_entropy() const { return bytes_entropy ? double(model_bytes) / bytes_entropy : 0.0; }

ModelReport inspect_module(const torch::jit::Module& module, const std::optional<std::vector<LayerRecord>>& recorded,
                           const QuantizeOptions& options) {
  ModelReport report;
  LayerUses uses = analyze_layers(module);
  auto& candidates = uses.candidates;
  report.excluded = uses.excluded;

  bool any_ternary = false;
  for (const auto& c : candidates) {
    const LayerRecord* record = recorded ? find_layer(*recorded, c.name) : nullptr;
    // Without metadata, two-valued or three-valued weights are recognised by value alone.
    auto ternary = (record || !recorded) ? read_ternary(c.weight, record) : std::nullopt;
    if (record && !ternary)
      spdlog::warn("{}: listed as ternary in the TTQ metadata but its weights are not {{-Wn, 0, +Wp}}", c.name);
    LayerReport r = ternary.value_or(LayerReport{});
    r.layer.name = c.name;
    r.layer.shape = c.weight.sizes().vec();
    r.numel = c.weight.numel();
    any_ternary |= r.kind == LayerKind::Ternary;
    report.layers.push_back(std::move(r));
  }

  if (!any_ternary && !candidates.empty()) {
    report.dry_run = true;
    const LayerPlan plan = plan_layers(module, options, PlanPurpose::DryRun);  // what quantize would do
    for (const LayerRecord& planned : plan.layers) {
      const auto row = std::find_if(report.layers.begin(), report.layers.end(),
                                    [&](const LayerReport& r) { return r.layer.name == planned.name; });
      row->layer = planned;
      row->kind = LayerKind::Planned;
      row->delta_known = true;
    }
  }
  report.totals = compute_totals(module, report.layers);
  return report;
}

}  // namespace ttq
