// --lr auto's probe (core/train.h): a learning-rate range test (L. Smith, "Cyclical Learning Rates
// for Training Neural Networks", 2017, section 3.3; fastai's lr_find) on the training data before
// the run. The rate grows geometrically step by step from the start's state; the training loss,
// smoothed, falls and then blows up; the chosen rate sits below where it fell fastest. Everything
// the probe moved (weights, scales, buffers, optimizer state, the random generator) is put back, and
// its batches come from an order of their own, so the run that follows is the run that would have
// followed with that --lr given.
#include <ATen/CPUGeneratorImpl.h>
#include <torch/optim/optimizer.h>

#include <chrono>
#include <cmath>

#include "core/distributed.h"
#include "core/train.h"

namespace ttq {
namespace {

constexpr int64_t kProbeMaxSteps = 200;
constexpr double kProbeEpochShare = 0.08;  // of an epoch's steps, at most (with its set-up: ~10% of its time)
constexpr int64_t kProbeMinSteps = 30;    // fewer cannot cover the range: the starting rate stays
constexpr double kProbeSmoothing = 0.8;   // the loss averaged over ~5 steps, bias-corrected
constexpr double kProbeBlowUp = 4.0;      // the smoothed loss past 4x its lowest: the range ends there
// The rate chosen is the one where the smoothed loss was lowest, divided by this: the range test's
// loss at a rate reflects the steps before it too, so its lowest point is already near the edge for
// a whole run. Measured on the zoo (tests/cli/test_zoo.py; one epoch, Adam): a quarter of it gave
// within 1.5 pp of FP on every family where a tenth fell short on the depthwise-separable CNN
// (86.0% against 87.0% at 0.004, FP 88.2%) and on the BatchNorm CNN with SGD.
constexpr double kProbeBackOff = 4.0;

struct Range {
  double low, high;
};
// Four decades around each optimizer's usual fine-tuning rates.
Range probe_range(Optimizer optimizer) { return optimizer == Optimizer::Adam ? Range{1e-5, 1e-1} : Range{1e-4, 1.0}; }

}  // namespace

int64_t Trainer::lr_probe_steps() const {
  const auto steps = std::min<int64_t>(kProbeMaxSteps, static_cast<int64_t>(kProbeEpochShare * steps_per_epoch()));
  return steps < kProbeMinSteps ? 0 : steps;
}

LrProbe Trainer::probe_lr(const std::function<void(const LrProbeStep&)>& on_step, const std::atomic<bool>& stop) {
  LrProbe probe;
  if (!lr_to_probe_ || position_.global_step > 0) return probe;  // given, or resumed with the probed rate
  lr_to_probe_ = false;
  const int64_t steps = lr_probe_steps();
  if (steps == 0) {
    probe.reason = fmt::format("{}'s usual rate: the probe needs {} steps, more than 8% of an epoch of {}",
                               choice_name(options_.optimizer), kProbeMinSteps, steps_per_epoch());
    use_lr(options_.lr, probe.reason);
    return probe;
  }
  const auto t0 = Clock::now();
  std::vector<torch::Tensor> saved;
  for (const auto& [name, t] : state_tensors()) saved.push_back(t.detach().clone());
  at::Generator generator = at::detail::getDefaultCPUGenerator();
  const torch::Tensor rng = generator.get_state();
  // An order of the probe's own: the epochs' orders depend on the seed and the epoch only.
  auto gen = at::detail::createCPUGenerator(~(options_.seed * 1000003ull));
  const auto order = torch::randperm(data_.train.size(), gen, torch::TensorOptions().dtype(torch::kInt64));
  const Range range = probe_range(options_.optimizer);
  double average = 0, lowest = INFINITY;
  for (int64_t s = 0; s < steps; ++s) {
    const double lr = range.low * std::pow(range.high / range.low, static_cast<double>(s) / static_cast<double>(steps - 1));
    set_lr(lr / options_.lr);
    Metrics step = train_step(next_batch(order, -1, s % steps_per_epoch()));
    bool stopping = stop.load();
    if (comm_) stopping = synchronize(step, stopping);
    if (stopping) throw Interrupted();
    const double loss = step.loss / static_cast<double>(step.samples);
    if (!std::isfinite(loss)) break;
    optimizer_->step();
    average = kProbeSmoothing * average + (1 - kProbeSmoothing) * loss;
    const double smoothed = average / (1 - std::pow(kProbeSmoothing, static_cast<double>(s + 1)));
    probe.lrs.push_back(lr);
    probe.losses.push_back(smoothed);
    if (on_step) on_step({s + 1, steps, lr, smoothed});
    lowest = std::min(lowest, smoothed);
    if (smoothed > kProbeBlowUp * lowest) break;
  }
  {
    torch::NoGradGuard no_grad;
    auto state = state_tensors();
    for (size_t i = 0; i < state.size(); ++i) state[i].second.copy_(saved[i]);
  }
  generator.set_state(rng);
  optimizer_->state().clear();
  probe.lr = choose_probed_lr(probe.lrs, probe.losses);
  if (comm_) {  // rank 0 decides (every rank measured the same losses: the steps are synchronized)
    auto chosen = torch::tensor({probe.lr}, torch::kFloat64);
    comm_->broadcast({chosen});
    probe.lr = chosen.item<double>();
  }
  probe.seconds = seconds_since(t0);
  probe.reason = fmt::format("a range test of {} steps from {:g} to {:g}, {:.1f} s", probe.lrs.size(), range.low,
                             range.high, probe.seconds);
  use_lr(probe.lr, probe.reason);
  return probe;
}

void Trainer::use_lr(double lr, const std::string& why) {
  options_.lr = lr;  // every group's rate follows (base_lr)
  lr_to_probe_ = false;
  lr_reason_ = why;
  recipe_lr_ = fmt::format("--lr auto: {:.3g} ({})", lr, why);
}


// The rate to train at, from the smoothed losses of the steps the probe ran (the last may have
// blown up): kProbeBackOff below the lowest, and never below the first rate (a loss that only rose
// says the start wants the smallest steps).
double choose_probed_lr(const std::vector<double>& lrs, const std::vector<double>& smoothed) {
  if (lrs.empty()) return 0;
  const size_t lowest = static_cast<size_t>(std::min_element(smoothed.begin(), smoothed.end()) - smoothed.begin());
  return std::max(lrs.front(), lrs[lowest] / kProbeBackOff);
}

}  // namespace ttq
