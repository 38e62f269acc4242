// Training progress on stderr: a redrawn line when stderr is a terminal (a few redraws a
// second), nothing otherwise; per-epoch summaries go through the log instead.
#pragma once
#include <chrono>
#include <string>

#include "core/train.h"

namespace ttq::cli {

class Progress {
 public:
  explicit Progress(bool enabled) : enabled_(enabled) {}
  ~Progress() { clear(); }
  void update(const StepProgress& p, int epochs, int64_t total_steps);
  void update(const LrProbeStep& p);  // --lr auto's probe
  void update(size_t done, size_t total, const std::string& what);  // a count of evaluations
  void clear();  // before any other line is printed

 private:
  bool enabled_;
  bool drawn_ = false;
  bool started_ = false;
  std::chrono::steady_clock::time_point last_{}, start_{};
  int64_t start_step_ = 0;
};

}  // namespace ttq::cli
