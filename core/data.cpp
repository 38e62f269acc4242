#include "core/data.h"

#include <fmt/format.h>

#include "core/error.h"

namespace ttq {
namespace {

// splitmix64: per-sample randomness keyed by (seed, epoch, sample), independent of batching.
uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

}  // namespace

Preprocess apply_overrides(Preprocess p, const PreprocessOverrides& o) {
  if (!o.mean.empty()) p.mean = o.mean;
  if (!o.std.empty()) p.std = o.std;
  if (p.mean.size() != p.std.size()) throw usage_error("--mean and --std need the same number of values");
  for (const double s : p.std)
    if (!(s > 0)) throw usage_error("--std values must be positive");
  if (o.flip) p.flip = *o.flip;
  if (o.crop_padding) p.crop_padding = *o.crop_padding;
  return p;
}

Dataset Dataset::select(const torch::Tensor& idx) const {
  Dataset d;
  if (source) d.inputs = source->load(idx, std::nullopt);
  for (const auto& x : inputs) d.inputs.push_back(x.index_select(0, idx));
  if (labeled()) d.labels = labels.index_select(0, idx);
  return d;
}

Dataset Dataset::first(int64_t n) const {
  const int64_t k = std::min(n, size());
  Dataset d;
  if (source) d.source = source->first(k);
  for (const auto& x : inputs) d.inputs.push_back(x.narrow(0, 0, k));
  if (labeled()) d.labels = labels.narrow(0, 0, k);
  return d;
}

void keep_first(DataSplits& splits, int64_t n) {
  splits.train = splits.train.first(n);
  splits.test = splits.test.first(n);
}

namespace {

torch::Tensor image_input(torch::Tensor x, const Preprocess& pre) {
  if (x.scalar_type() == torch::kUInt8) {
    x = x.to(torch::kFloat).div_(255.0);
    if (!pre.mean.empty()) {
      const int64_t c = x.size(1);
      auto mean = torch::tensor(std::vector<float>(pre.mean.begin(), pre.mean.end()));
      auto std = torch::tensor(std::vector<float>(pre.std.begin(), pre.std.end()));
      if (mean.numel() == 1) mean = mean.expand({c}), std = std.expand({c});
      x.sub_(mean.view({1, c, 1, 1})).div_(std.view({1, c, 1, 1}));
    }
  }
  return x;
}

torch::Tensor augmented(const torch::Tensor& x, const torch::Tensor& idx, const Preprocess& pre,
                        const AugmentKey& augment) {
  const int64_t p = pre.crop_padding, h = x.size(2), w = x.size(3);
  const auto padded = p ? torch::constant_pad_nd(x, {p, p, p, p}) : x;
  auto out = torch::empty_like(x);
  const auto* ids = idx.data_ptr<int64_t>();
  for (int64_t i = 0; i < x.size(0); ++i) {
    const uint64_t r = mix(mix(augment.seed ^ (uint64_t(augment.epoch) << 40)) ^ uint64_t(ids[i]));
    const int64_t dy = p ? int64_t(r % (2 * p + 1)) : 0, dx = p ? int64_t((r >> 16) % (2 * p + 1)) : 0;
    auto sample = padded[i].narrow(1, dy, h).narrow(2, dx, w);
    if (pre.flip && ((r >> 32) & 1)) sample = sample.flip({2});
    out[i].copy_(sample);
  }
  return out;
}

}  // namespace

std::vector<torch::Tensor> prepare_inputs(const Dataset& d, const torch::Tensor& idx, const Preprocess& pre,
                                          const std::optional<AugmentKey>& augment) {
  std::vector<torch::Tensor> out;
  std::vector<torch::Tensor> stored;
  if (d.source)
    stored = d.source->load(idx, augment);
  else
    for (const auto& x : d.inputs) stored.push_back(x.index_select(0, idx));
  for (auto& batch : stored) {
    torch::Tensor x = image_input(std::move(batch), pre);
    if (augment && x.dim() == 4 && x.is_floating_point() && (pre.flip || pre.crop_padding > 0))
      x = augmented(x, idx, pre, *augment);
    out.push_back(std::move(x));
  }
  return out;
}

}  // namespace ttq
