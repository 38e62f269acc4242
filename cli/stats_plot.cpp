// `ttq stats --plot OUT.svg`: the paper's figure for a run. Per layer, Wp and −Wn against epochs
// over the stacked fractions of negative, zero and positive weights; first, the run's accuracy and
// loss. Plain SVG 1.1 with inline attributes only, so browsers, rsvg and Inkscape agree.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "cli/stats.h"

namespace ttq::cli {
namespace {

constexpr const char* kPositive = "#1f77b4";
constexpr const char* kNegative = "#d62728";
constexpr const char* kZero = "#c7c7c7";
constexpr const char* kTrain = "#ff7f0e";
constexpr const char* kValidation = "#2ca02c";
constexpr const char* kStepLoss = "#9a9a9a";

constexpr double kCellWidth = 380, kCellHeight = 470, kHeader = 78;
constexpr double kPanelLeft = 66, kPanelWidth = 290, kPanelHeight = 160, kPanelTop = 30, kPanelGap = 235;
constexpr int kColumns = 4;

std::string escape(const std::string& s) {
  std::string out;
  for (const char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

// An axis with round tick values (1, 2 or 5 times a power of ten) that covers [lo, hi].
struct Axis {
  double lo = 0, hi = 1, step = 0.2;
  std::vector<double> ticks;

  static Axis covering(double lo, double hi, int target_ticks = 5) {
    if (!(hi > lo)) {  // a constant: widen around it
      const double pad = std::abs(lo) > 0 ? std::abs(lo) * 0.1 : 0.5;
      lo -= pad, hi += pad;
    }
    const double raw = (hi - lo) / target_ticks;
    const double power = std::pow(10.0, std::floor(std::log10(raw)));
    double step = power;
    for (const double m : {1.0, 2.0, 5.0, 10.0})
      if (raw <= m * power) {
        step = m * power;
        break;
      }
    Axis a;
    a.step = step;
    a.lo = std::floor(lo / step + 1e-9) * step;
    a.hi = std::ceil(hi / step - 1e-9) * step;
    for (double t = a.lo; t <= a.hi + step * 1e-6; t += step) a.ticks.push_back(std::abs(t) < step * 1e-9 ? 0.0 : t);
    return a;
  }
  std::string label(double v, double scale = 1) const {
    const int decimals = std::max(0, static_cast<int>(-std::floor(std::log10(step * scale) + 1e-9)));
    return fmt::format("{:.{}f}", v * scale, decimals);
  }
};

// One chart: its frame in the SVG and the data ranges it maps.
class Panel {
 public:
  Panel(std::string& svg, double x, double y, Axis ax, Axis ay) : svg_(svg), x_(x), y_(y), ax_(ax), ay_(ay) {}

  double px(double v) const { return x_ + (v - ax_.lo) / (ax_.hi - ax_.lo) * kPanelWidth; }
  double py(double v) const { return y_ + kPanelHeight - (v - ay_.lo) / (ay_.hi - ay_.lo) * kPanelHeight; }

  // Grid, ticks, tick labels, title and axis names. `y_scale` turns fractions into percents.
  void frame(const std::string& title, const std::string& x_name, const std::string& y_name, double y_scale = 1) {
    for (const double t : ay_.ticks) {
      svg_ += fmt::format(R"(<line x1="{:.1f}" y1="{:.1f}" x2="{:.1f}" y2="{:.1f}" stroke="#e6e6e6"/>)" "\n", x_,
                          py(t), x_ + kPanelWidth, py(t));
      svg_ += fmt::format(R"(<text x="{:.1f}" y="{:.1f}" text-anchor="end" font-size="11">{}</text>)" "\n", x_ - 6,
                          py(t) + 4, ay_.label(t, y_scale));
    }
    for (const double t : ax_.ticks) {
      svg_ += fmt::format(R"(<line x1="{:.1f}" y1="{:.1f}" x2="{:.1f}" y2="{:.1f}" stroke="#e6e6e6"/>)" "\n", px(t),
                          y_, px(t), y_ + kPanelHeight);
      svg_ += fmt::format(R"(<text x="{:.1f}" y="{:.1f}" text-anchor="middle" font-size="11">{}</text>)" "\n",
                          px(t), y_ + kPanelHeight + 15, ax_.label(t));
    }
    svg_ += fmt::format(R"(<rect x="{:.1f}" y="{:.1f}" width="{}" height="{}" fill="none" stroke="#444"/>)" "\n", x_,
                        y_, kPanelWidth, kPanelHeight);
    svg_ += fmt::format(R"(<text x="{:.1f}" y="{:.1f}" text-anchor="middle" font-size="13" font-weight="bold">{}</text>)" "\n",
                        x_ + kPanelWidth / 2, y_ - 9, escape(title));
    svg_ += fmt::format(R"(<text x="{:.1f}" y="{:.1f}" text-anchor="middle" font-size="11">{}</text>)" "\n",
                        x_ + kPanelWidth / 2, y_ + kPanelHeight + 31, escape(x_name));
    svg_ += fmt::format(R"svg(<text transform="translate({:.1f},{:.1f}) rotate(-90)" text-anchor="middle" font-size="11">{}</text>)svg" "\n",
                        x_ - 48, y_ + kPanelHeight / 2, escape(y_name));
  }

  // A curve; `markers` dots each point when there are few (one per epoch).
  void line(const std::vector<double>& xs, const std::vector<double>& ys, const char* color, double width = 2,
            const char* dash = nullptr, bool markers = true) {
    if (xs.empty()) return;
    std::string points;
    for (size_t i = 0; i < xs.size(); ++i) points += fmt::format("{:.1f},{:.1f} ", px(xs[i]), py(ys[i]));
    svg_ += fmt::format(R"(<polyline points="{}" fill="none" stroke="{}" stroke-width="{}"{}/>)" "\n", points, color,
                        width, dash ? fmt::format(R"( stroke-dasharray="{}")", dash) : "");
    if (markers && xs.size() <= 30)
      for (size_t i = 0; i < xs.size(); ++i)
        svg_ += fmt::format(R"(<circle cx="{:.1f}" cy="{:.1f}" r="2.5" fill="{}"/>)" "\n", px(xs[i]), py(ys[i]), color);
  }

  // The band between two curves.
  void band(const std::vector<double>& xs, const std::vector<double>& lower, const std::vector<double>& upper,
            const char* color) {
    if (xs.empty()) return;
    std::string points;
    for (size_t i = 0; i < xs.size(); ++i) points += fmt::format("{:.1f},{:.1f} ", px(xs[i]), py(upper[i]));
    for (size_t i = xs.size(); i-- > 0;) points += fmt::format("{:.1f},{:.1f} ", px(xs[i]), py(lower[i]));
    svg_ += fmt::format(R"(<polygon points="{}" fill="{}" fill-opacity="0.85" stroke="none"/>)" "\n", points, color);
  }

  void note(const std::string& text) {
    svg_ += fmt::format(R"(<text x="{:.1f}" y="{:.1f}" text-anchor="middle" font-size="12" fill="#666">{}</text>)" "\n",
                        x_ + kPanelWidth / 2, y_ + kPanelHeight / 2, escape(text));
  }

 private:
  std::string& svg_;
  double x_, y_;
  Axis ax_, ay_;
};

Axis axis_of(const std::vector<std::vector<double>>& curves, double floor_lo = NAN) {
  double lo = INFINITY, hi = -INFINITY;
  for (const auto& c : curves)
    for (const double v : c) lo = std::min(lo, v), hi = std::max(hi, v);
  if (!std::isfinite(lo)) lo = 0, hi = 1;
  // A margin, so that curves on a round value do not run along the frame; none below an anchor.
  const double pad = 0.04 * (hi - lo);
  lo -= pad, hi += pad;
  if (!std::isnan(floor_lo)) {
    if (lo + pad >= floor_lo) lo = std::min(lo + pad, floor_lo);
    lo = std::min(lo, floor_lo), hi = std::max(hi, floor_lo);
  }
  return Axis::covering(lo, hi);
}

void legend(std::string& svg, double y, const std::vector<std::tuple<const char*, const char*, bool>>& items) {
  double x = 24;
  for (const auto& [label, color, area] : items) {
    if (area)
      svg += fmt::format(R"(<rect x="{:.1f}" y="{:.1f}" width="18" height="10" fill="{}" fill-opacity="0.85"/>)" "\n", x,
                         y - 9, color);
    else
      svg += fmt::format(R"(<line x1="{:.1f}" y1="{:.1f}" x2="{:.1f}" y2="{:.1f}" stroke="{}" stroke-width="2.5"/>)" "\n",
                         x, y - 4, x + 18, y - 4, color);
    svg += fmt::format(R"(<text x="{:.1f}" y="{:.1f}" font-size="12">{}</text>)" "\n", x + 24, y, label);
    x += 34 + 7.0 * std::string(label).size();
  }
}

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

  std::string svg = fmt::format(
      R"(<?xml version="1.0" encoding="UTF-8"?>)" "\n"
      R"(<svg xmlns="http://www.w3.org/2000/svg" width="{0:.0f}" height="{1:.0f}" viewBox="0 0 {0:.0f} {1:.0f}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">)" "\n"
      R"(<rect width="100%" height="100%" fill="white"/>)" "\n",
      width, height);
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
