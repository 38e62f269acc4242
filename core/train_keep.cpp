// What a run keeps and where it goes back to (core/train.h): the start, measured before the first
// step; the best state so far, which --keep best writes; and the divergence watch, which goes
// back to that state with a lower rate (--on-divergence recover), stops there, or warns.
#include <torch/optim/optimizer.h>

#include <cmath>
#include <limits>

#include "core/train.h"

namespace ttq {
namespace {

// A loss is "far above where it started" past this multiple of the start's, plus kLossRiseMargin
// (so that a loss near 0, a model that fits its data, still needs a real rise); the training loss
// is averaged over about 1 / (1 - kLossSmoothing) steps first, so that one hard batch is not a divergence.
constexpr double kLossRiseLimit = 4.0;
constexpr double kLossRiseMargin = 1.0;
constexpr double kLossSmoothing = 0.8;

}  // namespace

bool Trainer::tracks_best() const {
  return options_.keep == Keep::Best || options_.on_divergence != OnDivergence::Continue;
}

double Trainer::lr_scale() const { return std::pow(kRecoveryLrFactor, position_.recoveries); }

void Trainer::measure_start(const TrainHooks& hooks) {
  const Metrics val = evaluate();
  position_.start_score = validation_score(val);  // minus infinity when not finite: any epoch beats it
  position_.start_loss = val.nonfinite > 0 ? std::numeric_limits<double>::infinity() : val.loss;
  if (options_.fp) require_finite_outputs(val);  // the model as given: its inputs are the likely cause
  if (val.nonfinite > 0)
    spdlog::warn("the one-shot model's outputs are not finite on {:.0f} of {:.0f} validation samples in eval mode "
                 "(its BatchNorm statistics are the FP weights'; training mode uses each batch's own): training "
                 "goes on, with no epoch judged against the start", val.nonfinite,
                 val.nonfinite + static_cast<double>(val.samples));
  consider(0, val);
  if (hooks.on_start) hooks.on_start(val);
}

void Trainer::consider(int epoch, const Metrics& val) {
  if (!tracks_best()) return;
  const double score = validation_score(val);
  if (position_.best_epoch >= 0 && !(score > position_.best_score)) return;  // ties keep the earlier state
  position_.best_epoch = epoch;
  position_.best_step = position_.global_step;
  position_.best_score = score;
  keep_current_as_best();
}

void Trainer::keep_current_as_best() {
  best_tensors_.clear();
  for (const auto& [name, t] : state_tensors()) best_tensors_.push_back(t.detach().clone());
}

void Trainer::restore_best() {
  torch::NoGradGuard no_grad;
  auto state = state_tensors();
  for (size_t i = 0; i < state.size(); ++i) state[i].second.copy_(best_tensors_[i]);
}

void Trainer::end_on_kept_state() {
  if (options_.keep != Keep::Best || best_tensors_.empty()) return;
  restore_best();
  ended_on_best_ = true;
}

std::optional<std::string> Trainer::watch_loss(double loss, int epoch) {
  auto& p = position_;
  // The first step's loss is the start's too, in training mode: the smaller is where it started
  // (a one-shot model's BatchNorm statistics can make its validation loss absurd, 1805 on one here).
  if (p.global_step == 0) p.start_loss = std::min(p.start_loss, loss);
  p.loss_average = kLossSmoothing * p.loss_average + (1 - kLossSmoothing) * loss;
  ++p.loss_steps;
  const double smoothed = p.loss_average / (1 - std::pow(kLossSmoothing, static_cast<double>(p.loss_steps)));
  if (!(smoothed > kLossRiseLimit * p.start_loss + kLossRiseMargin)) return std::nullopt;
  return fmt::format("the training loss rose to {:.4g} at step {} (epoch {}), over {:g} times the start's {:.4g} plus {:g}",
                     smoothed, p.global_step + 1, epoch + 1, kLossRiseLimit, p.start_loss, kLossRiseMargin);
}

std::optional<std::string> Trainer::watch_validation(const Metrics& val, int epoch) const {
  if (val.nonfinite > 0)
    return fmt::format("epoch {} ended with outputs that are not finite on {:.0f} validation samples", epoch + 1,
                       val.nonfinite);
  const char* metric = validation_metric(val);
  const double score = validation_score(val), start = position_.start_score;
  // Below the start by more than the validation samples' noise: two standard errors of a
  // proportion (top-1, agreement), else 5% of the start's value (relative MSE, loss).
  const double margin = is_fraction(metric)
                            ? 2 * std::sqrt(std::max(start * (1 - start), 1e-4) / std::max<double>(1, val.samples))
                            : 0.05 * std::abs(start);
  if (!(score < start - margin)) return std::nullopt;
  return fmt::format("epoch {} ended at {}, below the start's {}", epoch + 1, describe_score(metric, score),
                     describe_score(metric, start));
}

bool Trainer::handle_divergence(const std::string& kind, const std::string& what) {
  auto& p = position_;
  if (options_.on_divergence == OnDivergence::Continue) {
    if (warned_divergence_.insert(kind).second) spdlog::warn("{}; --on-divergence continue: training on", what);
    return false;
  }
  if (options_.on_divergence == OnDivergence::Stop || p.recoveries == kMaxRecoveries) {
    restore_best();
    ended_on_best_ = true;
    throw Diverged(options_.on_divergence == OnDivergence::Stop
                       ? fmt::format("{} (--on-divergence stop)", what)
                       : fmt::format("{}, after {} recoveries", what, kMaxRecoveries));
  }
  restore_best();
  ++p.recoveries;
  const int64_t steps = steps_per_epoch();
  p.global_step = p.best_step;
  p.epoch = static_cast<int>(p.best_step / steps);
  p.step_in_epoch = p.best_step % steps;
  p.train = {};
  p.loss_average = 0;
  p.loss_steps = 0;
  optimizer_->state().clear();  // momentum and Adam's moments carry the divergence: they start afresh
  spdlog::warn("{}: back to {} with {:g} times the rate (recovery {} of {}; --on-divergence)", what,
               p.best_epoch == 0 ? std::string("the start") : fmt::format("the end of epoch {}", p.best_epoch),
               lr_scale(), p.recoveries, kMaxRecoveries);
  return true;
}

}  // namespace ttq
