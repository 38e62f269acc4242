#include "core/quantize.h"

namespace ttq {

std::vector<LayerRecord> quantize_module(torch::jit::Module& module, const QuantizeOptions& options) {
  validate(options.threshold);
  auto candidates = find_candidates(module);
  apply_selection(candidates, options.selection);

  torch::NoGradGuard no_grad;
  std::vector<LayerRecord> layers;
  for (auto& c : candidates) {
    if (!c.selected) continue;
    check_finite(c.name, c.weight);
    LayerRecord r = plan_layer(c.name, c.weight, options.threshold, options.init);
    const auto wp = torch::full({}, r.wp, c.weight.options());
    const auto wn = torch::full({}, r.wn, c.weight.options());
    c.weight.copy_(ternarize(c.weight, wp, wn, r.delta));  // the parameter is shared with module
    spdlog::debug("{}: delta={:.6g} wp={:.6g} wn={:.6g} sparsity={:.3f}", r.name, r.delta, r.wp,
                  r.wn, r.counts.sparsity());
    layers.push_back(std::move(r));
  }
  return layers;
}

}  // namespace ttq
