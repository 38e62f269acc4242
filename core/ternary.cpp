#include "core/ternary.h"

#include <torch/autograd.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace ttq {

void validate(const ThresholdSpec& spec) {
  const double v = spec.value;
  if (spec.mode == ThresholdMode::MaxScaled && !(v > 0.0 && v < 1.0))
    throw usage_error(fmt::format("--threshold must be in (0, 1), got {}", v));
  if (spec.mode == ThresholdMode::Sparsity && !(v >= 0.0 && v < 1.0))
    throw usage_error(fmt::format("--sparsity must be in [0, 1), got {}", v));
}

float compute_threshold(const torch::Tensor& x, const ThresholdSpec& spec) {
  torch::NoGradGuard no_grad;
  if (spec.mode == ThresholdMode::MaxScaled && x.device().is_cpu() && x.scalar_type() == torch::kFloat) {
    // One pass, no temporaries: this runs for every layer at every training step.
    const auto xc = x.detach().contiguous();
    const float* v = xc.data_ptr<float>();
    float m = 0.0f;
    for (int64_t i = 0, n = xc.numel(); i < n; ++i) m = std::max(m, std::abs(v[i]));
    return static_cast<float>(spec.value * static_cast<double>(m));
  }
  const auto magnitude = x.detach().abs().flatten();
  if (spec.mode == ThresholdMode::MaxScaled)
    return static_cast<float>(spec.value * magnitude.max().item<double>());
  const int64_t k = static_cast<int64_t>(std::floor(spec.value * static_cast<double>(x.numel())));
  if (k == 0) return 0.0f;  // only exact zeros (ties at 0) become zero
  return std::get<0>(magnitude.kthvalue(k)).item<float>();
}

Scales init_scales(const torch::Tensor& x, float delta, ScaleInit init) {
  if (init == ScaleInit::Ones) return {1.0f, 1.0f};
  torch::NoGradGuard no_grad;
  const auto v = x.detach().to(torch::kFloat);
  const auto pos = v > delta;
  const auto neg = v < -delta;
  const int64_t n_pos = pos.sum().item<int64_t>();
  const int64_t n_neg = neg.sum().item<int64_t>();
  // Sum in double: float accumulation drifts on layers with millions of weights.
  const double sum_pos = v.masked_select(pos).sum(torch::kDouble).item<double>();
  const double sum_neg = -v.masked_select(neg).sum(torch::kDouble).item<double>();
  if (n_pos == 0 && n_neg == 0) return {0.0f, 0.0f};
  const float wp = n_pos ? static_cast<float>(sum_pos / n_pos) : static_cast<float>(sum_neg / n_neg);
  const float wn = n_neg ? static_cast<float>(sum_neg / n_neg) : wp;
  return {wp, wn};
}

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

// The fused path: contiguous float32 CPU tensors, the case of every training step here. One pass
// forward (codes and values) and one pass backward, instead of a dozen tensor ops a layer; the
// generic path below serves every other device and dtype with the same rule.
bool fused(const torch::Tensor& x) { return x.device().is_cpu() && x.scalar_type() == torch::kFloat; }

struct TernarizeFunction : public torch::autograd::Function<TernarizeFunction> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& wp,
                               const torch::Tensor& wn, double delta) {
    if (fused(x)) {
      const auto xc = x.contiguous();
      auto out = torch::empty_like(xc);
      auto codes = torch::empty(xc.sizes(), xc.options().dtype(torch::kInt8));
      const float d = static_cast<float>(delta), p = wp.item<float>(), n = -wn.item<float>();
      const float* in = xc.data_ptr<float>();
      float* o = out.data_ptr<float>();
      int8_t* c = codes.data_ptr<int8_t>();
      at::parallel_for(0, xc.numel(), 1 << 16, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          const int8_t code = static_cast<int8_t>((in[i] > d) - (in[i] < -d));
          c[i] = code;
          o[i] = code > 0 ? p : code < 0 ? n : 0.0f;
        }
      });
      ctx->save_for_backward({codes, wp, wn});
      return out;
    }
    const auto pos = x > delta;
    const auto neg = x < -delta;
    ctx->save_for_backward({pos, neg, wp, wn});
    const auto zero = torch::zeros({}, x.options());
    return torch::where(pos, wp.reshape({}), torch::where(neg, -wn.reshape({}), zero));
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    if (saved.size() == 3) return fused_backward(saved, grad_outputs[0].contiguous());
    const auto& pos = saved[0];
    const auto& neg = saved[1];
    const auto& wp = saved[2];
    const auto& wn = saved[3];
    const auto& g = grad_outputs[0];
    const auto one = torch::ones({}, g.options());
    // Straight-through to the latent weights, scaled by the level's magnitude; no clipping.
    const auto scale = torch::where(pos, wp.reshape({}), torch::where(neg, wn.reshape({}), one));
    const auto grad_x = g * scale;
    const auto grad_wp = (g * pos).sum().reshape(wp.sizes());
    // The minus is real: w_t = -Wn on the negative set (the paper's Eq. 7 drops it).
    const auto grad_wn = -(g * neg).sum().reshape(wn.sizes());
    return {grad_x, grad_wp, grad_wn, torch::Tensor()};
  }

  static tensor_list fused_backward(const tensor_list& saved, const torch::Tensor& g) {
    const auto& codes = saved[0];
    const auto& wp = saved[1];
    const auto& wn = saved[2];
    auto grad_x = torch::empty_like(g);
    const float scale[3] = {wn.item<float>(), 1.0f, wp.item<float>()};
    const float* gi = g.data_ptr<float>();
    const int8_t* c = codes.data_ptr<int8_t>();
    float* gx = grad_x.data_ptr<float>();
    // Sequential sums in double: the same result whatever the thread count.
    double sum_pos = 0.0, sum_neg = 0.0;
    for (int64_t i = 0, n = g.numel(); i < n; ++i) {
      gx[i] = gi[i] * scale[c[i] + 1];
      sum_pos += c[i] > 0 ? gi[i] : 0.0f;
      sum_neg += c[i] < 0 ? gi[i] : 0.0f;
    }
    // The minus is real: w_t = -Wn on the negative set (the paper's Eq. 7 drops it).
    return {grad_x, torch::full(wp.sizes(), sum_pos, wp.options()), torch::full(wn.sizes(), -sum_neg, wn.options()),
            torch::Tensor()};
  }
};

}  // namespace

torch::Tensor ternarize(const torch::Tensor& x, const torch::Tensor& wp, const torch::Tensor& wn,
                        float delta) {
  return TernarizeFunction::apply(x, wp, wn, static_cast<double>(delta));
}

CodeCounts count_codes(const torch::Tensor& x, float delta) {
  torch::NoGradGuard no_grad;
  CodeCounts c;
  c.pos = (x > delta).sum().item<int64_t>();
  c.neg = (x < -delta).sum().item<int64_t>();
  c.zero = x.numel() - c.pos - c.neg;
  return c;
}

LayerRecord measure_layer(const std::string& name, const torch::Tensor& weight, const ThresholdSpec& threshold,
                          Scales scales) {
  LayerRecord r;
  r.name = name;
  r.shape = weight.sizes().vec();
  r.threshold = threshold;
  r.delta = compute_threshold(weight, threshold);
  r.wp = scales.wp;
  r.wn = scales.wn;
  r.counts = count_codes(weight, r.delta);
  return r;
}

LayerRecord plan_layer(const std::string& name, const torch::Tensor& weight, const ThresholdSpec& threshold,
                       ScaleInit init) {
  LayerRecord r = measure_layer(name, weight, threshold, {});
  const Scales s = init_scales(weight, r.delta, init);
  r.wp = s.wp;
  r.wn = s.wn;
  return r;
}

void check_finite(const std::string& name, const torch::Tensor& weight) {
  torch::NoGradGuard no_grad;
  const int64_t bad = weight.numel() - torch::isfinite(weight).sum().item<int64_t>();
  if (bad > 0)
    throw input_error(fmt::format("layer {} has {} non-finite weight{} (NaN or Inf): fix the model, or keep the "
                                  "layer full precision with --exclude '{}'", name, bad, bad == 1 ? "" : "s", name));
}

const LayerRecord* find_layer(const std::vector<LayerRecord>& layers, const std::string& name) {
  for (const auto& layer : layers)
    if (layer.name == name) return &layer;
  return nullptr;
}

}  // namespace ttq
