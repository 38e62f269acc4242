// ttq sensitivity MODEL: each layer's one-shot damage alone, and the frontier of size against the
// metric (man/ttq-sensitivity.1).
#include <unistd.h>

#include <cmath>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/progress.h"
#include "cli/svg.h"
#include "core/error.h"
#include "core/sensitivity.h"
#include "core/util.h"
#include "formats/atomic_file.h"
#include "formats/json.h"
#include "formats/model_file.h"

namespace ttq::cli {
namespace {

struct SensitivityArgs {
  std::string model;
  std::string plot;
  bool json = false;
  DataFlags data;
  QuantizeFlags quantize;
  SensitivityOptions options;
};

bool is_fraction(SensitivityMetric m) { return m == SensitivityMetric::Top1 || m == SensitivityMetric::Agreement; }

std::string show_value(double v, SensitivityMetric m) {
  if (std::isnan(v)) return "not finite";
  return is_fraction(m) ? fmt::format("{:.2f}%", 100 * v) : fmt::format("{:.4g}", v);
}
std::string show_drop(double d) { return std::isinf(d) ? "inf" : fmt::format("{:+.2f}", d); }
double ratio(int64_t fp, int64_t bytes) { return bytes ? static_cast<double>(fp) / static_cast<double>(bytes) : 0; }

nlohmann::json measured_json(const Measured& m) {
  return {{"value", m.value}, {"drop", m.drop}, {"nonfinite", m.nonfinite}};  // NaN and inf: null
}

nlohmann::json point_json(const SetPoint& p, int64_t model_bytes) {
  nlohmann::json j = measured_json(p.measured);
  j.update({{"layers", p.layers.size()}, {"bytes_2bit", p.bytes_2bit}, {"bytes_entropy", p.bytes_entropy},
            {"ratio_2bit", ratio(model_bytes, p.bytes_2bit)}, {"ratio_entropy", ratio(model_bytes, p.bytes_entropy)}});
  return j;
}

nlohmann::json report_json(const SensitivityReport& r, const SensitivityArgs& a) {
  nlohmann::json layers = nlohmann::json::array(), frontier = nlohmann::json::array();
  for (const auto& l : r.layers) {
    nlohmann::json j = l.layer;  // its one-shot record
    j.update(measured_json(l.alone));
    j.update({{"numel", l.numel}, {"sparsity", l.layer.counts.sparsity()}, {"bytes_saved", l.bytes_saved},
              {"in_rule", l.in_rule}});
    layers.push_back(std::move(j));
  }
  for (size_t k = 0; k < r.frontier.size(); ++k) {
    nlohmann::json j = point_json(r.frontier[k], r.model_bytes);
    j["added"] = r.layers[r.order[k]].layer.name;
    frontier.push_back(std::move(j));
  }
  nlohmann::json rule = point_json(r.rule, r.model_bytes);
  rule["names"] = r.rule.layers;
  return {{"model", a.model}, {"data", a.data.spec()}, {"samples", r.samples}, {"metric", choice_name(r.metric)},
          {"fp_value", r.fp_value}, {"model_bytes", r.model_bytes}, {"options", a.options.quantize},
          {"layers", layers}, {"frontier", frontier}, {"rule", rule}};
}

void print_point(const char* what, const SetPoint& p, const SensitivityReport& r) {
  fmt::print("{}: {} ternary layers, {} with 2-bit codes ({:.2f}x), {} at the codes' entropy ({:.2f}x); {} {}, drop {}\n",
             what, p.layers.size(), human_bytes(p.bytes_2bit), ratio(r.model_bytes, p.bytes_2bit),
             human_bytes(p.bytes_entropy), ratio(r.model_bytes, p.bytes_entropy), choice_name(r.metric),
             show_value(p.measured.value, r.metric), show_drop(p.measured.drop));
}

void print_table(const SensitivityReport& r, const SensitivityArgs& a) {
  const std::string metric = choice_name(r.metric);
  fmt::print("{}: {} {} on {} samples of {} (full precision, {})\n\n", a.model, metric,
             show_value(r.fp_value, r.metric), r.samples, a.data.spec(), human_bytes(r.model_bytes));
  size_t name_w = 5, shape_w = 5;
  for (const auto& l : r.layers) {
    name_w = std::max(name_w, l.layer.name.size());
    shape_w = std::max(shape_w, join_shape(l.layer.shape).size());
  }
  fmt::print("{:<{}}  {:<{}}  {:>8}  {:>8}  {:>10}  {:>8}  {:>9}  {}\n", "layer", name_w, "shape", shape_w, "params",
             "sparsity", metric, "drop", "saved", "quantize");
  for (const auto& l : r.layers)
    fmt::print("{:<{}}  {:<{}}  {:>8}  {:>8.3f}  {:>10}  {:>8}  {:>9}  {}\n", l.layer.name, name_w,
               join_shape(l.layer.shape), shape_w, human_count(l.numel), l.layer.counts.sparsity(),
               show_value(l.alone.value, r.metric), show_drop(l.alone.drop), human_bytes(l.bytes_saved),
               l.in_rule ? "ternary" : "fp");
  fmt::print("\nfrontier (layers added by least drop per byte saved):\n");
  fmt::print("{:>3}  {:<{}}  {:>9}  {:>9}  {:>7}  {:>10}  {:>8}\n", "#", "added", name_w, "2-bit", "entropy", "ratio",
             metric, "drop");
  for (size_t k = 0; k < r.frontier.size(); ++k) {
    const SetPoint& p = r.frontier[k];
    fmt::print("{:>3}  {:<{}}  {:>9}  {:>9}  {:>6.2f}x  {:>10}  {:>8}\n", k + 1, r.layers[r.order[k]].layer.name,
               name_w, human_bytes(p.bytes_2bit), human_bytes(p.bytes_entropy), ratio(r.model_bytes, p.bytes_entropy),
               show_value(p.measured.value, r.metric), show_drop(p.measured.drop));
  }
  fmt::print("\n");
  print_point("quantize's selection", r.rule, r);
  if (!r.frontier.empty()) print_point("every layer", r.frontier.back(), r);
}

// The frontier as size at the codes' entropy (and with 2-bit codes, dashed) against the metric,
// the FP model, quantize's selection and the all-ternary point marked.
std::string frontier_svg(const SensitivityReport& r, const std::string& title) {
  const double unit = r.model_bytes >= (1 << 20) ? 1 << 20 : r.model_bytes >= 1024 ? 1024 : 1;
  const char* unit_name = unit > 1024 ? "MiB" : unit > 1 ? "KiB" : "B";
  const double scale = is_fraction(r.metric) ? 100 : 1;
  const auto y_of = [&](const Measured& m) { return std::isnan(m.value) ? NAN : m.value; };
  std::vector<double> xs{r.model_bytes / unit}, x2{r.model_bytes / unit}, ys{r.fp_value};
  for (const auto& p : r.frontier) {
    if (std::isnan(p.measured.value)) continue;
    xs.push_back(p.bytes_entropy / unit), x2.push_back(p.bytes_2bit / unit), ys.push_back(y_of(p.measured));
  }
  std::vector<double> all_x = xs;
  all_x.insert(all_x.end(), x2.begin(), x2.end());
  std::string svg = svg_open(700, 460);
  svg += fmt::format(R"(<text x="24" y="28" font-size="16" font-weight="bold">{}</text>)" "\n", escape(title));
  legend(svg, 52, {{"at the codes' entropy", "#1f77b4", false}, {"2-bit codes", "#9a9a9a", false}});
  Panel panel(svg, 90, 90, axis_of({all_x}, 0.0), axis_of({ys}), 580, 300);
  panel.frame("frontier: layers made ternary by least drop per byte saved", fmt::format("model size ({})", unit_name),
              choice_name(r.metric) + (scale > 1 ? " (%)" : ""), scale);
  panel.line(x2, ys, "#9a9a9a", 1.5, "5 3");
  panel.line(xs, ys, "#1f77b4");
  panel.marker(r.model_bytes / unit, r.fp_value, "#2ca02c", "full precision");
  if (!std::isnan(r.rule.measured.value))
    panel.marker(r.rule.bytes_entropy / unit, r.rule.measured.value, "#d62728", "quantize's selection");
  if (!r.frontier.empty() && !std::isnan(r.frontier.back().measured.value))
    panel.marker(r.frontier.back().bytes_entropy / unit, r.frontier.back().measured.value, "#ff7f0e", "every layer");
  svg += "</svg>\n";
  return svg;
}

void run_sensitivity(SensitivityArgs& a) {
  a.options.quantize = a.quantize.resolve();
  if (!a.plot.empty()) check_writable(a.plot), refuse_same_file(a.model, a.plot);
  OpenedModel opened = open_model(a.model);
  if (opened.metadata)
    spdlog::warn("{} was already written by ttq {}: its ternary layers measure what ternarizing them again changes",
                 a.model, opened.metadata->command);
  const DataSplits data = a.data.load();
  const Preprocess pre = a.data.preprocess(data);
  Progress progress(!quiet() && isatty(STDERR_FILENO));
  const SensitivityReport report = measure_sensitivity(
      opened.module, data.test, pre, a.options,
      [&](size_t done, size_t total, const std::string& what) { progress.update(done, total, what); });
  progress.clear();
  if (a.json)
    fmt::print("{}\n", report_json(report, a).dump(2));
  else
    print_table(report, a);
  std::fflush(stdout);
  if (!a.plot.empty()) {
    write_atomically(a.plot, [&](std::ostream& out) { out << frontier_svg(report, a.model + " on " + a.data.spec()); });
    spdlog::info("wrote {}", a.plot);
  }
}

}  // namespace

Command register_sensitivity(CLI::App& app) {
  auto a = std::make_shared<SensitivityArgs>();
  auto* sub = app.add_subcommand("sensitivity", "Each layer's one-shot damage alone, and the frontier of size against accuracy");
  sub->add_option("MODEL", a->model, "TorchScript model (full precision)")->required()->type_name("FILE");
  a->data.add_to(sub, DataUse::Eval);
  sub->add_option("--batch-size", a->options.batch_size, "samples per forward pass")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  a->quantize.add_to(sub, &a->options.quantize);
  add_choice_option(sub, "--metric", a->options.metric, "what a layer's damage is measured by");
  sub->add_option("--model-output", a->options.output, "the output to measure: a dict key or a tuple index")
      ->type_name("KEY|INDEX");
  sub->add_option("--plot", a->plot, "also draw the frontier as a self-contained SVG")->type_name("OUT.svg");
  sub->add_flag("--json", a->json, "print the result as JSON on stdout");
  return {sub, [a] { run_sensitivity(*a); }};
}

}  // namespace ttq::cli
