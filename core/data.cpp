#include "core/data.h"

#include <fmt/format.h>

#include <atomic>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>

#include "core/error.h"
#include "core/precision.h"

namespace ttq {
namespace {

// splitmix64: per-sample randomness keyed by (seed, epoch, sample), independent of batching.
uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Runs task(i) for 0 <= i < count on `threads` threads (the caller's among them), and rethrows
// the first error. Threads are started per batch: against decoding images their start is noise,
// and at::parallel_for's threads are the ones training computes on, busy during a prefetch.
void run_parallel(int threads, int64_t count, const std::function<void(int64_t)>& task) {
  std::atomic<int64_t> next{0};
  std::exception_ptr error;
  std::mutex error_mutex;
  auto work = [&] {
    for (int64_t i; (i = next++) < count;) try {
        task(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!error) error = std::current_exception();
        next = count;
      }
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < std::min<int64_t>(threads, count); ++t) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
  if (error) std::rethrow_exception(error);
}

// Samples `idx` of a source, `finish`ed (converted, augmented), in chunks spread over the source's
// threads: a few chunks per thread, so that slow images even out. Every step is per sample, so the
// result does not depend on the chunks.
std::vector<torch::Tensor> load_in_parallel(
    const SampleSource& source, const torch::Tensor& idx, const std::optional<AugmentKey>& augment,
    const std::function<std::vector<torch::Tensor>(std::vector<torch::Tensor>, const torch::Tensor&)>& finish) {
  const int64_t n = idx.numel(), threads = std::max(1, source.threads());
  const int64_t chunk = std::max<int64_t>(1, n / (4 * threads)), chunks = (n + chunk - 1) / chunk;
  std::vector<std::vector<torch::Tensor>> parts(chunks);
  run_parallel(static_cast<int>(threads), chunks, [&](int64_t c) {
    const auto sub = idx.slice(0, c * chunk, std::min(n, (c + 1) * chunk));
    parts[c] = finish(source.load(sub, augment), sub);
  });
  if (chunks == 1) return parts.front();
  std::vector<torch::Tensor> out;
  for (size_t input = 0; input < parts.front().size(); ++input) {
    std::vector<torch::Tensor> pieces;
    for (const auto& part : parts) pieces.push_back(part[input]);
    out.push_back(torch::cat(pieces));
  }
  return out;
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
  if (source) d.inputs = load_in_parallel(*source, idx, std::nullopt, [](auto x, const auto&) { return x; });
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
  const auto* ids = idx.data_ptr<int64_t>();
  const auto draw = [&](int64_t i) { return mix(mix(augment.seed ^ (uint64_t(augment.epoch) << 40)) ^ uint64_t(ids[i])); };
  if (p == 0) {  // flips only: in place, sample by sample (no second batch-sized tensor)
    for (int64_t i = 0; i < x.size(0); ++i)
      if ((draw(i) >> 32) & 1) x[i].copy_(x[i].flip({2}));
    return x;
  }
  const auto padded = torch::constant_pad_nd(x, {p, p, p, p});
  auto out = torch::empty_like(x);
  for (int64_t i = 0; i < x.size(0); ++i) {
    const uint64_t r = draw(i);
    auto sample = padded[i].narrow(1, int64_t(r % (2 * p + 1)), h).narrow(2, int64_t((r >> 16) % (2 * p + 1)), w);
    if (pre.flip && ((r >> 32) & 1)) sample = sample.flip({2});
    out[i].copy_(sample);
  }
  return out;
}

}  // namespace

std::vector<torch::Tensor> prepare_inputs(const Dataset& d, const torch::Tensor& idx, const Preprocess& pre,
                                          const std::optional<AugmentKey>& augment) {
  const auto finish = [&](std::vector<torch::Tensor> stored, const torch::Tensor& ids) {
    std::vector<torch::Tensor> out;
    for (auto& batch : stored) {
      torch::Tensor x = image_input(std::move(batch), pre);
      if (augment && x.dim() == 4 && x.is_floating_point() && (pre.flip || pre.crop_padding > 0))
        x = augmented(x, ids, pre, *augment);
      if (pre.channels_last && x.is_floating_point()) x = in_channels_last(x);
      out.push_back(std::move(x));
    }
    return out;
  };
  // Decoded data: the conversion and augmentation run on the loader's threads too.
  if (d.source) return load_in_parallel(*d.source, idx, augment, finish);
  std::vector<torch::Tensor> stored;
  for (const auto& x : d.inputs) stored.push_back(x.index_select(0, idx));
  return finish(std::move(stored), idx);
}

}  // namespace ttq
