// Plain SVG 1.1 charts with inline attributes only, so that browsers, rsvg and Inkscape agree:
// round axes, a framed panel with curves and bands, a legend. `stats --plot` and
// `sensitivity --plot` draw with these.
#pragma once
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <tuple>
#include <vector>

namespace ttq::cli {

inline std::string escape(const std::string& s) {
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

// The document's opening: its size and a white background.
inline std::string svg_open(double width, double height) {
  return fmt::format(
      R"(<?xml version="1.0" encoding="UTF-8"?>)" "\n"
      R"(<svg xmlns="http://www.w3.org/2000/svg" width="{0:.0f}" height="{1:.0f}" viewBox="0 0 {0:.0f} {1:.0f}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">)" "\n"
      R"(<rect width="100%" height="100%" fill="white"/>)" "\n",
      width, height);
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
  Panel(std::string& svg, double x, double y, Axis ax, Axis ay, double width = 290, double height = 160)
      : svg_(svg), x_(x), y_(y), ax_(ax), ay_(ay), width_(width), height_(height) {}

  double px(double v) const { return x_ + (v - ax_.lo) / (ax_.hi - ax_.lo) * width_; }
  double py(double v) const { return y_ + height_ - (v - ay_.lo) / (ay_.hi - ay_.lo) * height_; }

  // Grid, ticks, tick labels, title and axis names. `y_scale` turns fractions into percents.
  void frame(const std::string& title, const std::string& x_name, const std::string& y_name, double y_scale = 1) {
    for (const double t : ay_.ticks) {
      svg_ += fmt::format(R"(<line x1="{:.1f}" y1="{:.1f}" x2="{:.1f}" y2="{:.1f}" stroke="#e6e6e6"/>)" "\n", x_,
                          py(t), x_ + width_, py(t));
      svg_ += fmt::format(R"(<text x="{:.1f}" y="{:.1f}" text-anchor="end" font-size="11">{}</text>)" "\n", x_ - 6,
                          py(t) + 4, ay_.label(t, y_scale));
    }
    for (const double t : ax_.ticks) {
      svg_ += fmt::format(R"(<line x1="{:.1f}" y1="{:.1f}" x2="{:.1f}" y2="{:.1f}" stroke="#e6e6e6"/>)" "\n", px(t),
                          y_, px(t), y_ + height_);
      svg_ += fmt::format(R"(<text x="{:.1f}" y="{:.1f}" text-anchor="middle" font-size="11">{}</text>)" "\n",
                          px(t), y_ + height_ + 15, ax_.label(t));
    }
    svg_ += fmt::format(R"(<rect x="{:.1f}" y="{:.1f}" width="{}" height="{}" fill="none" stroke="#444"/>)" "\n", x_,
                        y_, width_, height_);
    svg_ += fmt::format(R"(<text x="{:.1f}" y="{:.1f}" text-anchor="middle" font-size="13" font-weight="bold">{}</text>)" "\n",
                        x_ + width_ / 2, y_ - 9, escape(title));
    svg_ += fmt::format(R"(<text x="{:.1f}" y="{:.1f}" text-anchor="middle" font-size="11">{}</text>)" "\n",
                        x_ + width_ / 2, y_ + height_ + 31, escape(x_name));
    svg_ += fmt::format(R"svg(<text transform="translate({:.1f},{:.1f}) rotate(-90)" text-anchor="middle" font-size="11">{}</text>)svg" "\n",
                        x_ - 48, y_ + height_ / 2, escape(y_name));
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

  // A point drawn as a ring with a label beside it (the notable points of a curve), above or below
  // it so that two close points keep their labels apart.
  void marker(double x, double y, const char* color, const std::string& label, bool below = false) {
    svg_ += fmt::format(R"(<circle cx="{:.1f}" cy="{:.1f}" r="5.5" fill="none" stroke="{}" stroke-width="2"/>)" "\n",
                        px(x), py(y), color);
    const bool right_half = px(x) > x_ + width_ / 2;
    svg_ += fmt::format(R"(<text x="{:.1f}" y="{:.1f}" text-anchor="{}" font-size="11" fill="{}">{}</text>)" "\n",
                        px(x) + (right_half ? -9 : 9), py(y) + (below ? 18 : -8), right_half ? "end" : "start", color,
                        escape(label));
  }

  void note(const std::string& text) {
    svg_ += fmt::format(R"(<text x="{:.1f}" y="{:.1f}" text-anchor="middle" font-size="12" fill="#666">{}</text>)" "\n",
                        x_ + width_ / 2, y_ + height_ / 2, escape(text));
  }

 private:
  std::string& svg_;
  double x_, y_;
  Axis ax_, ay_;
  double width_, height_;
};

inline Axis axis_of(const std::vector<std::vector<double>>& curves, double floor_lo = NAN) {
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

inline void legend(std::string& svg, double y, const std::vector<std::tuple<const char*, const char*, bool>>& items) {
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

}  // namespace ttq::cli
