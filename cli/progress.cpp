#include "cli/progress.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdio>

namespace ttq::cli {

void Progress::update(const StepProgress& p, int epochs, int64_t total_steps) {
  if (!enabled_) return;
  const auto now = std::chrono::steady_clock::now();
  if (drawn_ && now - last_ < std::chrono::milliseconds(250) && p.step_in_epoch != p.steps_per_epoch) return;
  last_ = now;
  if (!started_) started_ = true, start_ = now, start_step_ = p.global_step - 1;
  // ETA from this run's own pace (a resumed run starts timing at its first step).
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  const double per_step = elapsed / std::max<int64_t>(1, p.global_step - start_step_);
  const auto eta = static_cast<int64_t>(per_step * static_cast<double>(total_steps - p.global_step));
  constexpr int kWidth = 24;
  const int filled = static_cast<int>(kWidth * p.step_in_epoch / std::max<int64_t>(1, p.steps_per_epoch));
  fmt::print(stderr, "\r\033[Kepoch {}/{} [{}{}] {}/{}  {:.0f} img/s  loss {:.4f}  lr {:.3g}  ETA {}:{:02}", p.epoch,
             epochs, std::string(filled, '='), std::string(kWidth - filled, ' '), p.step_in_epoch, p.steps_per_epoch,
             p.samples_per_second, p.loss, p.lr, eta / 60, eta % 60);
  if (p.loading.images_per_second > 0)
    fmt::print(stderr, "  loader {:.0f} img/s, waits {:.0f}%", p.loading.images_per_second, 100 * p.loading.waiting);
  std::fflush(stderr);
  drawn_ = true;
}

void Progress::update(const LrProbeStep& p) {
  if (!enabled_) return;
  const auto now = std::chrono::steady_clock::now();
  if (drawn_ && now - last_ < std::chrono::milliseconds(250) && p.step != p.steps) return;
  last_ = now;
  constexpr int kWidth = 24;
  const int filled = static_cast<int>(kWidth * p.step / std::max<int64_t>(1, p.steps));
  fmt::print(stderr, "\r\033[Kprobing lr [{}{}] {}/{}  lr {:.3g}  loss {:.4f}", std::string(filled, '='),
             std::string(kWidth - filled, ' '), p.step, p.steps, p.lr, p.loss);
  std::fflush(stderr);
  drawn_ = true;
}

void Progress::update(size_t done, size_t total, const std::string& what) {
  if (!enabled_) return;
  const auto now = std::chrono::steady_clock::now();
  if (drawn_ && now - last_ < std::chrono::milliseconds(250) && done != total) return;
  last_ = now;
  constexpr int kWidth = 24;
  const int filled = static_cast<int>(kWidth * done / std::max<size_t>(1, total));
  fmt::print(stderr, "\r\033[K[{}{}] {}/{}  {}", std::string(filled, '='), std::string(kWidth - filled, ' '), done,
             total, what);
  std::fflush(stderr);
  drawn_ = true;
}

void Progress::clear() {
  if (!drawn_) return;
  fmt::print(stderr, "\r\033[K");
  std::fflush(stderr);
  drawn_ = false;
}

}  // namespace ttq::cli
