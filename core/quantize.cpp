#include "core/quantize.h"

#include "core/error.h"

namespace ttq {

const LayerRecord* ModelMetadata::find(const std::string& name) const {
  for (const auto& layer : layers)
    if (layer.name == name) return &layer;
  return nullptr;
}

LayerRecord plan_layer(const std::string& name, const torch::Tensor& weight,
                       const ThresholdSpec& threshold, ScaleInit init) {
  LayerRecord r;
  r.name = name;
  r.shape = weight.sizes().vec();
  r.threshold = threshold;
  r.delta = compute_threshold(weight, threshold);
  const Scales s = init_scales(weight, r.delta, init);
  r.wp = s.wp;
  r.wn = s.wn;
  r.counts = count_codes(weight, r.delta);
  return r;
}

ModelMetadata quantize_module(torch::jit::Module& module, const QuantizeOptions& options) {
  validate(options.threshold);
  auto candidates = find_candidates(module);
  apply_selection(candidates, options.selection);

  torch::NoGradGuard no_grad;
  ModelMetadata meta;
  meta.options = options;
  for (auto& c : candidates) {
    if (!c.selected) continue;
    LayerRecord r = plan_layer(c.name, c.weight, options.threshold, options.init);
    const auto wp = torch::full({}, r.wp, c.weight.options());
    const auto wn = torch::full({}, r.wn, c.weight.options());
    c.weight.copy_(ternarize(c.weight, wp, wn, r.delta));  // the parameter is shared with module
    spdlog::debug("{}: delta={:.6g} wp={:.6g} wn={:.6g} sparsity={:.3f}", r.name, r.delta, r.wp,
                  r.wn, r.counts.sparsity());
    meta.layers.push_back(std::move(r));
  }
  return meta;
}

}  // namespace ttq
