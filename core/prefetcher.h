#pragma once
// The batches of an epoch as the trainer takes them, one ahead where they are decoded per batch,
// and how well the loader kept up.

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <future>

namespace ttq {

using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// How data decoded per batch kept up with training; all zero for data held in memory.
struct LoaderStats {
  double images_per_second = 0;  // of the loader, while it works
  double waiting = 0;            // the fraction of the time training waited for data
};

// Sums behind LoaderStats, over the steps of an epoch.
class DataLoading {
 public:
  void add(int64_t images, double load_seconds, double wait_seconds) {
    images_ += images, load_seconds_ += load_seconds, wait_seconds_ += wait_seconds;
  }
  LoaderStats summary(double elapsed_seconds) const {
    if (images_ == 0) return {};
    return {static_cast<double>(images_) / std::max(1e-9, load_seconds_), wait_seconds_ / std::max(1e-9, elapsed_seconds)};
  }

 private:
  int64_t images_ = 0;
  double load_seconds_ = 0, wait_seconds_ = 0;
};

// The batches of an epoch, taken in step order. Data decoded per batch (an image folder: `streamed`)
// is prepared one batch ahead, on the loader's own threads, while the step before it runs; the time
// that takes and the time training waits for it are counted.
template <class Batch>
class Prefetcher {
 public:
  Prefetcher(std::function<Batch(int64_t)> load, bool streamed, int64_t steps)
      : load_(std::move(load)), streamed_(streamed), steps_(steps) {}

  Batch take(int64_t step) {
    if (!ahead_.valid()) ahead_ = fetch(step);
    const auto wait_start = Clock::now();
    Loaded loaded = ahead_.get();
    if (streamed_) loading_.add(loaded.batch.inputs.front().size(0), loaded.seconds, seconds_since(wait_start));
    if (step + 1 < steps_) ahead_ = fetch(step + 1);
    return std::move(loaded.batch);
  }
  const DataLoading& loading() const { return loading_; }

 private:
  struct Loaded {
    Batch batch;
    double seconds;
  };
  std::future<Loaded> fetch(int64_t step) {
    return std::async(streamed_ ? std::launch::async : std::launch::deferred, [this, step] {
      const auto start = Clock::now();
      Batch batch = load_(step);
      return Loaded{std::move(batch), seconds_since(start)};
    });
  }

  std::function<Batch(int64_t)> load_;
  bool streamed_;
  int64_t steps_;
  std::future<Loaded> ahead_;
  DataLoading loading_;
};

}  // namespace ttq
