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
std::string frontier_svg(const SensitivityReport& r, const std::string& title, const std::string& subtitle) {
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
  std::string svg = svg_open(700, 475);
  svg += fmt::format(R"(<text x="24" y="28" font-size="16" font-weight="bold">{}</text>)" "\n", escape(title));
  svg += fmt::format(R"(<text x="24" y="46" font-size="11" fill="#666">{}</text>)" "\n", escape(subtitle));
  legend(svg, 68, {{"at the codes' entropy", "#1f77b4", false}, {"2-bit codes", "#9a9a9a", false}});
  Panel panel(svg, 90, 105, axis_of({all_x}, 0.0), axis_of({ys}), 580, 300);
  panel.frame("frontier: layers made ternary by least drop per byte saved", fmt::format("model size ({})", unit_name),
              choice_name(r.metric) + (scale > 1 ? " (%)" : ""), scale);
  panel.line(x2, ys, "#9a9a9a", 1.5, "5 3");
  panel.line(xs, ys, "#1f77b4");
  panel.marker(r.model_bytes / unit, r.fp_value, "#2ca02c", "full precision");
  if (!std::isnan(r.rule.measured.value))
    panel.marker(r.rule.bytes_entropy / unit, r.rule.measured.value, "#d62728", "quantize's selection");
  if (!r.frontier.empty() && !std::isnan(r.frontier.back().measured.value))
    panel.marker(r.frontier.back().bytes_entropy / unit, r.frontier.back().measured.value, "#ff7f0e", "every layer",
                 true);
  svg += "</svg>\n";
  return svg;
}

// The measurement behind a budget, with its progress line.
SensitivityReport measure_with_progress(torch::jit::Module& module, const Dataset& data, const Preprocess& pre,
                                        const SensitivityOptions& options, Communicator* ranks = nullptr) {
  Progress progress(!quiet() && isatty(STDERR_FILENO));
  const auto shown = [&](size_t done, size_t total, const std::string& what) { progress.update(done, total, what); };
  auto report = measure_sensitivity(module, data, pre, options, shown, ranks);
  progress.clear();
  return report;
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
  const SensitivityReport report = measure_with_progress(opened.module, data.test, pre, a.options);
  if (a.json)
    fmt::print("{}\n", report_json(report, a).dump(2));
  else
    print_table(report, a);
  std::fflush(stdout);
  if (!a.plot.empty()) {
    const std::string subtitle =
        fmt::format("one-shot {} on {} samples of {}", choice_name(report.metric), report.samples, a.data.spec());
    write_atomically(a.plot, [&](std::ostream& out) { out << frontier_svg(report, a.model, subtitle); });
    spdlog::info("wrote {}", a.plot);
  }
}

}  // namespace

void add_budget_options(CLI::App* app, Budget& budget) {
  auto* group = app->add_option_group("budget", "layers chosen by their measured one-shot drop (see 'Budgets' in man ttq-quantize)");
  auto* drop = group->add_option("--max-drop", budget.max_drop, "ternarize the largest set of layers whose one-shot drop "
                                 "of the metric on held-out samples (--data's test split) stays within PP points")
                   ->type_name("PP");
  group->add_option("--target-ratio", budget.target_ratio, "ternarize the least damaging set of layers that makes the "
                    "model X times smaller than FP32 at the codes' entropy")
      ->type_name("X")
      ->check(CLI::Range(1.0, 1e9))
      ->excludes(drop);
  add_choice_option(group, "--metric", budget.metric, "what a budget's drop is measured by");
  group->add_option("--budget-samples", budget.samples, "held-out samples a budget is measured on (0: the whole split)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
}

Dataset budget_samples(const Dataset& split, const Budget& budget) {
  return budget.samples > 0 ? split.first(budget.samples) : split;
}

BudgetChoice choose_layers(torch::jit::Module& module, const Dataset& held_out, const Preprocess& pre,
                           const std::string& spec, QuantizeOptions& options, const Budget& budget,
                           const std::string& model_output, Communicator* ranks) {
  SensitivityOptions measure;
  measure.quantize = options;
  measure.metric = budget.metric;
  measure.output = model_output;
  measure.max_drop = budget.max_drop;
  const SensitivityReport report = measure_with_progress(module, held_out, pre, measure, ranks);
  BudgetChoice choice = choose_by_budget(report, budget);
  choice.data = spec;
  options.selection.only = choice.ternary();
  spdlog::info("{}: {} of {} layers ternary, {:.2f}x at the codes' entropy, one-shot {} drop {:+.2f} on {} samples",
               choice.budget, options.selection.only.size(), choice.layers.size(), choice.ratio,
               choice_name(choice.metric), choice.drop, choice.samples);
  return choice;
}

std::optional<BudgetChoice> apply_budget(torch::jit::Module& module, const DataFlags& flags, QuantizeOptions& options,
                                         const Budget& budget) {
  if (!budget.active()) {
    if (!flags.data.empty()) throw usage_error("--data is read by a budget only: add --max-drop PP or --target-ratio X");
    return std::nullopt;
  }
  const DataSplits data = flags.load();
  return choose_layers(module, budget_samples(data.test, budget), flags.preprocess(data), flags.spec(), options, budget);
}

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
