// `ttq stats` as text (tables and sparklines), JSON and long-format CSV.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "cli/stats.h"
#include "formats/json.h"

namespace ttq::cli {
namespace {

using nlohmann::json;

// A metric's values for one layer over the run's points.
std::vector<double> series(const StatsRun& run, size_t layer, const std::string& metric) {
  std::vector<double> v;
  for (const auto& p : run.points) v.push_back(layer_metric(p.layers[layer], metric));
  return v;
}

struct Range {
  double first, last, min, max;
};
Range range_of(const std::vector<double>& v) {
  const auto [lo, hi] = std::minmax_element(v.begin(), v.end());
  return {v.front(), v.back(), *lo, *hi};
}

// Eight block heights; the series is sampled at `width` evenly spaced points (first and last kept).
std::string sparkline(const std::vector<double>& v, size_t width = 24) {
  static const char* kBlocks[] = {"▁", "▂", "▃", "▄", "▅", "▆", "▇", "█"};
  const Range r = range_of(v);
  const size_t n = std::min(width, v.size());
  std::string out;
  for (size_t i = 0; i < n; ++i) {
    const size_t at = n == 1 ? 0 : (i * (v.size() - 1) + (n - 1) / 2) / (n - 1);
    const double span = r.max - r.min;
    const int level = span <= 1e-12 * std::max(1.0, std::abs(r.max))
                          ? 3
                          : static_cast<int>(std::lround((v[at] - r.min) / span * 7));
    out += kBlocks[std::clamp(level, 0, 7)];
  }
  return out;
}

std::string num(double v) { return fmt::format("{:.4g}", v); }
std::string percent(double v) { return fmt::format("{:.2f}%", 100 * v); }

size_t name_width(const std::vector<std::string>& names, size_t at_least) {
  for (const auto& n : names) at_least = std::max(at_least, n.size());
  return at_least;
}

// One column per measured metric (the last epoch's: labels, teacher), headed by its CSV name.
void print_epochs(const StatsRun& run) {
  if (run.epochs.empty()) return;
  std::vector<std::string> columns;
  for (const auto& m : epoch_metrics(run.epochs.back())) columns.push_back(m.first);
  const auto width = [](const std::string& c) { return std::max<size_t>(c.size(), 9); };
  fmt::print("\n{:>6}  {:>8}  {:>10}", "epoch", "step", "lr");
  for (const auto& c : columns) fmt::print("  {:>{}}", c, width(c));
  fmt::print("\n");
  for (const auto& e : run.epochs) {
    std::map<std::string, double> values;
    for (const auto& [name, v] : epoch_metrics(e)) values[name] = v;
    fmt::print("{:>6}  {:>8}  {:>10.4g}", fmt::format("{}{}", e.epoch, e.partial ? "*" : ""), e.step, e.lr);
    for (const auto& c : columns) {
      const auto it = values.find(c);
      const std::string cell = it == values.end()                    ? "-"
                               : c == "seconds"                     ? fmt::format("{:.1f} s", it->second)
                               : is_fraction(c)                     ? percent(it->second)
                                                                    : num(it->second);
      fmt::print("  {:>{}}", cell, width(c));
    }
    fmt::print("{}\n", e.epoch == run.kept_epoch ? "  <- kept" : "");
  }
  if (run.epochs.back().partial) fmt::print("(* partial epoch: stopped by --max-steps or an interrupt)\n");
  if (run.kept_epoch == 0) fmt::print("(kept: the start, which no epoch beat; the output holds it)\n");
}

void print_trajectories(const StatsRun& run, bool sparklines) {
  if (run.layers.empty() || run.points.size() < 2) return;
  const size_t w = name_width(run.layers, 5);
  fmt::print("\n{:<{}}  {:<8}  {:>10}  {:>10}  {:>10}  {:>10}{}\n", "layer", w, "metric", "first", "last", "min",
             "max", sparklines ? "  trajectory" : "");
  for (size_t i = 0; i < run.layers.size(); ++i)
    for (const std::string metric : {"wp", "wn", "delta", "sparsity"}) {
      const auto v = series(run, i, metric);
      const Range r = range_of(v);
      fmt::print("{:<{}}  {:<8}  {:>10}  {:>10}  {:>10}  {:>10}{}\n", metric == "wp" ? run.layers[i] : "", w, metric,
                 num(r.first), num(r.last), num(r.min), num(r.max), sparklines ? "  " + sparkline(v) : "");
    }
}

void print_final_layers(const StatsRun& run) {
  if (run.points.empty()) {
    fmt::print("\nno layer record yet (the run has logged nothing since it started)\n");
    return;
  }
  if (run.layers.empty()) {
    fmt::print("\nno ternary layer{}\n", run.from_log ? " in this run (a --fp baseline?)" : "");
    return;
  }
  const size_t w = name_width(run.layers, 5);
  fmt::print("\n{:<{}}  {:>10}  {:>10}  {:>10}  {:>7}  {:>7}  {:>7}\n", "final", w, "wp", "wn", "delta", "neg", "zero",
             "pos");
  for (const auto& l : run.points.back().layers)
    fmt::print("{:<{}}  {:>10}  {:>10}  {:>10}  {:>7.4f}  {:>7.4f}  {:>7.4f}\n", l.name, w, num(l.wp), num(l.wn),
               num(l.delta), l.counts.fraction(l.counts.neg), l.counts.sparsity(), l.counts.fraction(l.counts.pos));
}

std::string format_run_metric(const std::string& metric, double v) {
  return is_fraction(metric) ? percent(v) : num(v);
}

void print_run(const StatsRun& run, bool sparklines) {
  fmt::print("{}: {}\n", run.source, run.title());
  print_epochs(run);
  print_trajectories(run, sparklines);
  print_final_layers(run);
  if (!run.from_log && !run.final.empty()) {
    std::vector<std::string> parts;
    for (const auto& m : kRunMetrics)
      if (run.final.count(m)) parts.push_back(fmt::format("{} {}", m, format_run_metric(m, run.final.at(m))));
    fmt::print("\nvalidation after training: {}\n", fmt::join(parts, ", "));
  }
}

// Final states side by side: run metrics, then every metric of every layer either run has.
void print_comparison(const StatsRun& a, const StatsRun& b) {
  fmt::print("A  {}: {}\nB  {}: {}\n", a.source, a.title(), b.source, b.title());
  const auto cell = [](const std::optional<double>& v, const std::string& metric) {
    return v ? format_run_metric(metric, *v) : std::string("-");
  };
  const auto diff = [](const std::optional<double>& x, const std::optional<double>& y, bool pp) {
    if (!x || !y) return std::string("-");
    return pp ? fmt::format("{:+.2f} pp", 100 * (*y - *x)) : fmt::format("{:+.4g}", *y - *x);
  };
  const auto final_of = [](const StatsRun& r, const std::string& m) -> std::optional<double> {
    const auto it = r.final.find(m);
    return it == r.final.end() ? std::nullopt : std::optional<double>(it->second);
  };
  bool any = false;
  for (const auto& m : kRunMetrics) {
    const auto x = final_of(a, m), y = final_of(b, m);
    if (!x && !y) continue;
    if (!any) fmt::print("\n{:<10}  {:>10}  {:>10}  {:>10}\n", "run", "A", "B", "B-A");
    any = true;
    const bool pp = is_fraction(m);
    fmt::print("{:<10}  {:>10}  {:>10}  {:>10}\n", m, cell(x, m), cell(y, m), diff(x, y, pp));
  }

  std::vector<std::string> names = a.layers;
  for (const auto& n : b.layers)
    if (std::find(names.begin(), names.end(), n) == names.end()) names.push_back(n);
  if (names.empty()) return;
  const auto layer_of = [](const StatsRun& r, const std::string& name) -> const LayerRecord* {
    if (r.points.empty()) return nullptr;
    for (const auto& l : r.points.back().layers)
      if (l.name == name) return &l;
    return nullptr;
  };
  const size_t w = name_width(names, 5);
  fmt::print("\n{:<{}}  {:<8}  {:>10}  {:>10}  {:>10}\n", "layer", w, "metric", "A", "B", "B-A");
  for (const auto& name : names) {
    const LayerRecord* la = layer_of(a, name);
    const LayerRecord* lb = layer_of(b, name);
    for (const auto& m : kLayerMetrics) {
      const auto x = la ? std::optional<double>(layer_metric(*la, m)) : std::nullopt;
      const auto y = lb ? std::optional<double>(layer_metric(*lb, m)) : std::nullopt;
      fmt::print("{:<{}}  {:<8}  {:>10}  {:>10}  {:>10}\n", m == kLayerMetrics.front() ? name : "", w, m,
                 x ? num(*x) : "-", y ? num(*y) : "-", diff(x, y, false));
    }
  }
}

json layer_values(const LayerRecord& l) {
  json j = json::object();
  for (const auto& m : kLayerMetrics) j[m] = layer_metric(l, m);
  return j;
}

json run_json(const StatsRun& run) {
  json epochs = json::array();
  for (const auto& e : run.epochs)
    epochs.push_back(e);
  json layers = json::array();
  for (size_t i = 0; i < run.layers.size(); ++i) {
    json first, last, lo, hi;
    for (const auto& m : kLayerMetrics) {
      const Range r = range_of(series(run, i, m));
      first[m] = r.first, last[m] = r.last, lo[m] = r.min, hi[m] = r.max;
    }
    layers.push_back({{"name", run.layers[i]}, {"first", first}, {"last", last}, {"min", lo}, {"max", hi}});
  }
  json points = json::array();
  for (const auto& p : run.points) {
    json pl = json::array();
    for (const auto& l : p.layers) {
      json v = layer_values(l);
      v["name"] = l.name;
      pl.push_back(v);
    }
    json point = {{"step", p.step}, {"position", run.position(p.step)}, {"layers", pl}};
    if (p.lr) point["lr"] = *p.lr;
    if (p.loss) point["loss"] = *p.loss;
    points.push_back(point);
  }
  return {{"source", run.source},
          {"kind", run.from_log ? "log" : "model"},
          {"model", run.model},
          {"data", run.data},
          {"tool", run.tool},
          {"epochs_planned", run.epochs_planned},
          {"steps_per_epoch", run.steps_per_epoch},
          {"position_unit", run.position_unit()},
          {"epochs", epochs},
          {"kept_epoch", run.kept_epoch},
          {"layers", layers},
          {"final", run.final},
          {"points", points}};
}

}  // namespace

void print_stats_text(const std::vector<StatsRun>& runs, bool sparklines) {
  if (runs.size() == 2)
    print_comparison(runs[0], runs[1]);
  else
    print_run(runs.front(), sparklines);
}

void print_stats_json(const std::vector<StatsRun>& runs, const std::vector<ExpectationResult>& results) {
  json doc = {{"runs", json::array()}, {"expectations", json::array()}};
  for (const auto& run : runs) doc["runs"].push_back(run_json(run));
  for (const auto& r : results)
    doc["expectations"].push_back(
        {{"condition", r.expectation.text}, {"passed", r.failures.empty()}, {"failures", r.failures}});
  fmt::print("{}\n", doc.dump(2));
}

// Long format, one value a row: epoch (the position in epochs; the step when the steps per epoch
// are unknown), step, layer (empty for run metrics), metric, value. With two inputs a leading
// `run` column names the file.
void print_stats_csv(const std::vector<StatsRun>& runs) {
  const bool several = runs.size() > 1;
  const auto quote = [](const std::string& s) {
    if (s.find_first_of(",\"\n") == std::string::npos) return s;
    std::string q = "\"";
    for (const char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
    return q + "\"";
  };
  fmt::print("{}epoch,step,layer,metric,value\n", several ? "run," : "");
  for (const auto& run : runs) {
    const std::string prefix = several ? quote(run.source) + "," : "";
    const auto row = [&](int64_t step, const std::string& layer, const std::string& metric, double value) {
      fmt::print("{}{:.6g},{},{},{},{:.9g}\n", prefix, run.position(step), step, quote(layer), metric, value);
    };
    size_t next_epoch = 0;
    for (const auto& p : run.points) {
      for (const auto& l : p.layers)
        for (const auto& m : kLayerMetrics) row(p.step, l.name, m, layer_metric(l, m));
      if (p.loss) row(p.step, "", "loss", *p.loss);
      if (p.lr) row(p.step, "", "lr", *p.lr);
      // Each epoch's metrics follow the point of its last step.
      for (; next_epoch < run.epochs.size() && run.epochs[next_epoch].step <= p.step; ++next_epoch) {
        const auto& e = run.epochs[next_epoch];
        if (!p.lr) row(e.step, "", "lr", e.lr);
        for (const auto& [metric, value] : epoch_metrics(e)) row(e.step, "", metric, value);
      }
    }
    if (!run.from_log)
      for (const auto& [metric, value] : run.final) row(run.points.back().step, "", metric, value);
  }
}

}  // namespace ttq::cli
