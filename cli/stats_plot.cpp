// `ttq stats --plot OUT.svg`: the paper's figure for a run. Per layer, Wp and −Wn against epochs
// over the stacked fractions of negative, zero and positive weights; first, the run's accuracy and
// loss. Plain SVG 1.1 with inline attributes only, so browsers, rsvg and Inkscape agree.
#include <fmt/format.h>

#include <algorithm>

#include "cli/stats.h"
#include "cli/svg.h"

namespace ttq::cli {
namespace {

constexpr const char* kPositive = "#1f77b4";
constexpr const char* kNegative = "#d62728";
constexpr const char* kZero = "#c7c7c7";
constexpr const char* kTrain = "#ff7f0e";
constexpr const char* kValidation = "#2ca02c";
constexpr const char* kStepLoss = "#9a9a9a";

constexpr double kCellWidth = 380, kCellHeight = 470, kHeader = 78;
constexpr double kPanelLeft = 66, kPanelTop = 30, kPanelGap = 235;
constexpr int kColumns = 4;

void run_cell(std::string& svg, const StatsRun& run, double x, double y, const Axis& ax, const std::string& x_name) {
  // Without labels the upper panel shows validation agreement with the teacher instead of accuracy.
  const bool labeled = run.epochs.empty() || run.epochs.back().val.has_labels();
  std::vector<double> ex, train_top1, val_top1, train_loss, val_loss, sx, step_loss;
  for (const auto& e : run.epochs) {
    ex.push_back(run.position(e.step));
    if (labeled) train_top1.push_back(e.train.top1);
    val_top1.push_back(labeled ? e.val.top1 : e.val.agreement.value_or(0));
    train_loss.push_back(e.train.loss), val_loss.push_back(e.val.loss);
  }
  const bool distilled = !run.epochs.empty() && run.epochs.back().train.distill != 0;
  for (const auto& p : run.points)
    if (p.loss) sx.push_back(run.position(p.step)), step_loss.push_back(*p.loss);

  Panel acc(svg, x, y, ax, ex.empty() ? Axis::covering(0, 1) : axis_of({train_top1, val_top1}));
  acc.frame(labeled ? "accuracy (top-1)" : "agreement with the teacher (top-1)", x_name, "%", 100);
  if (labeled) acc.line(ex, train_top1, kTrain);
  acc.line(ex, val_top1, kValidation);
  if (ex.empty()) acc.note("no epoch finished");

  Panel loss(svg, x, y + kPanelGap, ax, axis_of({train_loss, val_loss, step_loss}, 0.0));
  loss.frame(distilled ? "loss (with distillation)" : "loss (cross-entropy)", x_name, "loss");
  loss.line(sx, step_loss, kStepLoss, 1, nullptr, false);
  loss.line(ex, train_loss, kTrain);
  loss.line(ex, val_loss, kValidation);
}

void layer_cell(std::string& svg, const StatsRun& run, size_t layer, double x, double y, const Axis& ax,
                const std::string& x_name) {
  std::vector<double> xs, wp, neg_wn, zeros, neg, neg_zero, ones;
  for (const auto& p : run.points) {
    const auto& l = p.layers[layer];
    xs.push_back(run.position(p.step));
    wp.push_back(l.wp), neg_wn.push_back(-l.wn);
    const double n = l.counts.fraction(l.counts.neg);
    zeros.push_back(0), neg.push_back(n), neg_zero.push_back(n + l.counts.sparsity()), ones.push_back(1);
  }
  Panel scales(svg, x, y, ax, axis_of({wp, neg_wn}, 0.0));
  scales.frame(run.layers[layer], x_name, "scale");
  scales.line({ax.lo, ax.hi}, {0, 0}, "#888", 1, "4 3", false);
  scales.line(xs, wp, kPositive);
  scales.line(xs, neg_wn, kNegative);

  Panel fractions(svg, x, y + kPanelGap, ax, Axis::covering(0, 1));
  fractions.band(xs, zeros, neg, kNegative);
  fractions.band(xs, neg, neg_zero, kZero);
  fractions.band(xs, neg_zero, ones, kPositive);
  fractions.frame("weights −/0/+", x_name, "% of weights", 100);
}

}  // namespace

std::string stats_svg(const StatsRun& run) {
  const size_t cells = 1 + run.layers.size();
  const size_t columns = std::min<size_t>(kColumns, cells);
  const size_t rows = (cells + columns - 1) / columns;
  const double width = 20 + kCellWidth * static_cast<double>(columns);
  const double height = kHeader + kCellHeight * static_cast<double>(rows);

  std::vector<double> positions;
  for (const auto& p : run.points) positions.push_back(run.position(p.step));
  const Axis ax = Axis::covering(positions.front(), positions.back());  // steps ascend
  const std::string x_name = run.steps_per_epoch > 0 ? "epochs" : "steps";

  std::string svg = svg_open(width, height);
  svg += fmt::format(R"(<text x="24" y="28" font-size="16" font-weight="bold">{}</text>)" "\n",
                     escape(run.source + ": " + run.title()));
  legend(svg, 56, {{"Wp", kPositive, false}, {"−Wn", kNegative, false}, {"negative", kNegative, true},
                   {"zero", kZero, true}, {"positive", kPositive, true}, {"train", kTrain, false},
                   {"validation", kValidation, false}, {"loss per logged step", kStepLoss, false}});
  for (size_t c = 0; c < cells; ++c) {
    const double x = 10 + kCellWidth * static_cast<double>(c % columns) + kPanelLeft;
    const double y = kHeader + kCellHeight * static_cast<double>(c / columns) + kPanelTop;
    if (c == 0)
      run_cell(svg, run, x, y, ax, x_name);
    else
      layer_cell(svg, run, c - 1, x, y, ax, x_name);
  }
  svg += "</svg>\n";
  return svg;
}

}  // namespace ttq::cli
