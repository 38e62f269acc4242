#include "core/report.h"

#include <cmath>

namespace ttq {
namespace {

// A tensor is ternary when its values are exactly {a < 0, 0, b > 0} (zero may be absent).
// With TTQ metadata the levels are the recorded -Wn and +Wp; otherwise min and max.
std::optional<LayerReport> read_ternary(const torch::Tensor& w,
                                        const LayerRecord* record) {
  torch::NoGradGuard no_grad;
  const float wp = record ? record->wp : w.max().item<float>();
  const float wn = record ? record->wn : -w.min().item<float>();
  if (!record && !(wp > 0.0f && wn > 0.0f)) return std::nullopt;
  LayerReport r;
  r.counts.pos = (w == wp).sum().item<int64_t>();
  r.counts.neg = (w == -wn).sum().item<int64_t>();
  r.counts.zero = (w == 0).sum().item<int64_t>();
  if (r.counts.total() != w.numel()) return std::nullopt;
  r.kind = LayerKind::Ternary;
  r.wp = wp;
  r.wn = wn;
  if (record) r.delta = record->delta;
  return r;
}

Totals compute_totals(const torch::jit::Module& module, const std::vector<LayerReport>& layers) {
  Totals t;
  for (const auto& p : module.named_parameters(/*recurse=*/true)) {
    t.parameters += p.value.numel();
    t.model_bytes += p.value.numel() * static_cast<int64_t>(p.value.element_size());
  }
  for (const auto& b : module.named_buffers(/*recurse=*/true))
    t.model_bytes += b.value.numel() * static_cast<int64_t>(b.value.element_size());
  t.bytes_2bit = t.model_bytes;
  t.bytes_entropy = t.model_bytes;
  constexpr int64_t kScaleBytes = 2 * 4;  // Wp and Wn as fp32
  for (const auto& l : layers) {
    if (!l.coded()) continue;
    t.coded_parameters += l.numel;
    t.bytes_2bit += l.bytes_2bit() + kScaleBytes - l.bytes_fp32();
    const auto entropy_bytes = static_cast<int64_t>(std::ceil(l.bits() * l.numel / 8.0));
    t.bytes_entropy += entropy_bytes + kScaleBytes - l.bytes_fp32();
  }
  return t;
}

}  // namespace

std::string to_string(LayerKind kind) {
  switch (kind) {
    case LayerKind::Ternary: return "ternary";
    case LayerKind::Planned: return "planned";
    case LayerKind::FullPrecision: break;
  }
  return "fp";
}

double Totals::ratio_2bit() const { return bytes_2bit ? double(model_bytes) / bytes_2bit : 0.0; }
double Totals::ratio_entropy() const {
  return bytes_entropy ? double(model_bytes) / bytes_entropy : 0.0;
}

ModelReport inspect_module(const torch::jit::Module& module,
                           const std::optional<ModelMetadata>& metadata,
                           const QuantizeOptions& options) {
  ModelReport report;
  report.metadata = metadata;
  report.has_metadata = metadata.has_value();
  auto candidates = find_candidates(module);

  bool any_ternary = false;
  for (const auto& c : candidates) {
    const LayerRecord* record = metadata ? metadata->find(c.name) : nullptr;
    // Without metadata, two-valued or three-valued weights are recognised by value alone.
    auto ternary = (record || !metadata) ? read_ternary(c.weight, record) : std::nullopt;
    if (record && !ternary)
      spdlog::warn("{}: listed as ternary in the TTQ metadata but its weights are not {{-Wn, 0, +Wp}}",
                   c.name);
    LayerReport r = ternary.value_or(LayerReport{});
    r.name = c.name;
    r.shape = c.weight.sizes().vec();
    r.numel = c.weight.numel();
    any_ternary |= r.kind == LayerKind::Ternary;
    report.layers.push_back(std::move(r));
  }

  if (!any_ternary && !candidates.empty()) {
    report.dry_run = true;
    mark_selected(candidates, options.selection);
    for (size_t i = 0; i < candidates.size(); ++i) {
      if (!candidates[i].selected) continue;
      const auto& c = candidates[i];
      const LayerRecord plan = plan_layer(c.name, c.weight, options.threshold, options.init);
      auto& r = report.layers[i];
      r.kind = LayerKind::Planned;
      r.counts = plan.counts;
      r.wp = plan.wp;
      r.wn = plan.wn;
      r.delta = plan.delta;
    }
  }
  report.totals = compute_totals(module, report.layers);
  return report;
}

}  // namespace ttq
