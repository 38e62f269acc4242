// `ttq stats` (man/ttq-stats.1): what its three files share. stats.cpp reads the inputs and checks
// --expect; stats_report.cpp prints text, JSON and CSV; stats_plot.cpp draws the SVG.
#pragma once
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "core/expect.h"
#include "formats/run_log.h"

namespace ttq::cli {

// One input, a run log or a model's TTQ metadata, reduced to the chosen layers.
struct StatsRun {
  std::string source;     // the path given
  bool from_log = false;  // false: a model file's metadata, a single final point
  std::string model, data, tool;
  int epochs_planned = 0;
  int64_t steps_per_epoch = 0;  // 0: unknown, positions are shown in steps
  std::vector<std::string> layers;  // the chosen layers, in the run's order
  std::vector<LoggedPoint> points;  // each point's layers are exactly `layers`, in that order
  std::vector<EpochRecord> epochs;
  int kept_epoch = -1;  // the epoch whose end the output is (0: the start); -1: the last, or unknown
  std::map<std::string, double> final;  // run metrics of the final state (see kRunMetrics)

  // Position of a step on the x axis: epochs when the steps per epoch are known, else steps.
  double position(int64_t step) const {
    return steps_per_epoch > 0 ? static_cast<double>(step) / static_cast<double>(steps_per_epoch)
                               : static_cast<double>(step);
  }
  const char* position_unit() const { return steps_per_epoch > 0 ? "epoch" : "step"; }
  std::string title() const;  // "small_cnn.pt on fashion-mnist, 3 of 3 epochs, 1404 steps"
};

// Per-layer metrics, in display order, and their value in a logged layer.
inline const std::vector<std::string> kLayerMetrics = {"wp", "wn", "delta", "sparsity", "neg", "pos"};
double layer_metric(const LayerRecord& layer, const std::string& metric);
// Run-level metrics of the final state, for the comparison table and --expect; a run has those it
// measured (top1 with labels, agreement and rel_mse against a teacher, train_ce and train_distill
// when distilling).
inline const std::vector<std::string> kRunMetrics = {"top1",       "top5", "val_loss", "agreement", "rel_mse",
                                                     "train_top1", "loss", "train_ce", "train_distill", "lr"};
std::map<std::string, double> final_metrics(const Metrics& val, const EpochRecord* last_epoch);
// An epoch's measured numbers, named as in the CSV: train_loss, train_top1, ..., val_rel_mse, seconds.
std::vector<std::pair<std::string, double>> epoch_metrics(const EpochRecord& e);

// An --expect condition (core/expect.h) checked against the final state.
struct ExpectationResult {
  Expectation expectation;
  std::vector<std::string> failures;  // one line each: which run/layer, the value found
};

// One run: its epochs, each layer's trajectory (first, last, min, max, and a sparkline when asked)
// and final state. Two runs: their final states side by side.
void print_stats_text(const std::vector<StatsRun>& runs, bool sparklines);
void print_stats_json(const std::vector<StatsRun>& runs, const std::vector<ExpectationResult>& results);
void print_stats_csv(const std::vector<StatsRun>& runs);
// A self-contained SVG: Wp and −Wn and the stacked −/0/+ fractions per layer, accuracy and loss.
std::string stats_svg(const StatsRun& run);

}  // namespace ttq::cli
