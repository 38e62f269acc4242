// ttq stats RUN.jsonl|MODEL [RUN2|MODEL2]: trajectories of a run, final states side by side, and
// --expect checks for CI (man/ttq-stats.1).
#include "cli/stats.h"

#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <regex>

#include "cli/commands.h"
#include "core/error.h"
#include "formats/archive.h"
#include "formats/atomic_file.h"
#include "formats/metadata.h"
#include "formats/torchscript.h"

namespace ttq::cli {

double layer_metric(const LoggedLayer& l, const std::string& metric) {
  if (metric == "wp") return l.wp;
  if (metric == "wn") return l.wn;
  if (metric == "delta") return l.delta;
  if (metric == "sparsity") return l.zero;
  if (metric == "neg") return l.neg;
  if (metric == "pos") return l.pos;
  throw std::logic_error("unknown layer metric " + metric);
}

std::string StatsRun::title() const {
  if (!from_log) {
    std::string t = fmt::format("{} ternary layer{}, written by {}", layers.size(), layers.size() == 1 ? "" : "s", tool);
    if (!data.empty()) t += fmt::format(", trained on {} for {} steps", data, points.back().step);
    return t;
  }
  int completed = 0;
  for (const auto& e : epochs) completed += e.partial ? 0 : 1;
  return fmt::format("{} on {}, {} of {} epochs, {} steps ({})", model, data, completed,
                     epochs_planned > 0 ? std::to_string(epochs_planned) : "?",
                     points.empty() ? 0 : points.back().step, tool);
}

namespace {

struct StatsArgs {
  std::string file, other;
  std::vector<std::string> layers;
  std::string format = "text";
  bool json = false;
  std::string plot;
  std::vector<std::string> expect;
  std::string sparklines = "auto";
};

// A model file (TorchScript or .ttqz) as a run with one point: its final state.
StatsRun run_from_model(const std::string& path) {
  std::optional<ModelMetadata> meta;
  if (is_archive(path)) {
    const auto bytes = read_file(path);
    const auto archive = parse_archive(bytes, path);
    if (!archive.ttq_json.empty()) meta = metadata_from_json(archive.ttq_json, path);
  } else {
    meta = read_torchscript_metadata(path);
  }
  if (!meta)
    throw input_error(fmt::format("{}: no TTQ metadata (not written by ttq quantize or finetune); "
                                  "'ttq inspect' reads any model", path));
  StatsRun run;
  run.source = path;
  run.tool = fmt::format("ttq {} {}", meta->tool_version, meta->command);
  LoggedPoint point;
  for (const auto& l : meta->layers) {
    const double n = std::max<double>(1, static_cast<double>(l.counts.total()));
    point.layers.push_back({l.name, l.wp, l.wn, l.delta, l.counts.neg / n, l.counts.zero / n, l.counts.pos / n});
  }
  if (!meta->run_json.empty()) {
    const auto r = nlohmann::json::parse(meta->run_json);
    run.data = r.value("data", "");
    point.step = r.value("steps", int64_t{0});
    for (const auto& [key, metric] : {std::pair{"val_top1", "top1"}, {"val_top5", "top5"}, {"val_loss", "val_loss"}})
      if (r.contains(key) && r[key].is_number()) run.final[metric] = r[key].get<double>();
  }
  run.points.push_back(std::move(point));
  return run;
}

StatsRun run_from_log(const std::string& path) {
  RunHistory h = read_run_log(path);
  StatsRun run;
  run.source = path;
  run.from_log = true;
  run.model = h.model;
  run.data = h.data;
  run.tool = h.tool;
  run.epochs_planned = h.epochs_planned;
  run.steps_per_epoch = h.steps_per_epoch;
  run.points = std::move(h.points);
  run.epochs = std::move(h.epochs);
  if (!run.epochs.empty()) {
    const auto& e = run.epochs.back();
    run.final = {{"top1", e.val_top1}, {"top5", e.val_top5}, {"val_loss", e.val_loss},
                 {"train_top1", e.train_top1}, {"loss", e.loss}, {"lr", e.lr}};
  }
  return run;
}

// Models are zip files (TorchScript) or .ttqz archives; everything else is read as a log, which
// reports its own errors.
bool is_model_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  char magic[4] = {};
  return (in.read(magic, 4) && std::string(magic, 4) == std::string("PK\x03\x04", 4)) || is_archive(path);
}

// Keeps the layers whose name matches one of the regexes (all when none), in every point.
void choose_layers(StatsRun& run, const std::vector<std::string>& patterns) {
  std::vector<std::regex> regexes;
  for (const auto& p : patterns) regexes.push_back(compile_regex(p));
  for (auto& point : run.points) {
    std::vector<LoggedLayer> kept;
    for (auto& l : point.layers)
      if (regexes.empty() || matches_any(l.name, regexes)) kept.push_back(std::move(l));
    point.layers = std::move(kept);
  }
  // Layers are the same in every record of a run; the last point names them.
  if (!run.points.empty())
    for (const auto& l : run.points.back().layers) run.layers.push_back(l.name);
  for (const auto& point : run.points)
    if (point.layers.size() != run.layers.size())
      throw input_error(fmt::format("{}: the records do not all log the same layers", run.source));
  if (!patterns.empty() && run.layers.empty())
    throw usage_error(fmt::format("--layers matches no layer of {}", run.source));
}

Expectation parse_expectation(const std::string& text) {
  static const std::regex form(R"(^\s*([A-Za-z_0-9]+)\s*(>=|<=|==|!=|=|>|<)\s*([^\s%]+)\s*(%?)\s*$)");
  std::smatch m;
  if (!std::regex_match(text, m, form))
    throw usage_error(fmt::format("--expect '{}': write METRIC OP VALUE, e.g. 'sparsity>=0.3'", text));
  Expectation e{text, m[1].str(), m[2].str() == "=" ? "==" : m[2].str(), 0};
  const auto known = [](const std::vector<std::string>& names, const std::string& name) {
    return std::find(names.begin(), names.end(), name) != names.end();
  };
  if (e.metric == "zero") e.metric = "sparsity";
  if (!known(kLayerMetrics, e.metric) && !known(kRunMetrics, e.metric))
    throw usage_error(fmt::format("--expect '{}': unknown metric '{}'; layer metrics: {}; run metrics: {}", text,
                                  e.metric, fmt::join(kLayerMetrics, ", "), fmt::join(kRunMetrics, ", ")));
  char* end = nullptr;
  const std::string value = m[3].str();
  e.value = std::strtod(value.c_str(), &end);
  if (value.empty() || *end != '\0' || !std::isfinite(e.value))
    throw usage_error(fmt::format("--expect '{}': '{}' is not a number", text, value));
  if (!m[4].str().empty()) e.value /= 100;
  return e;
}

bool holds(double v, const std::string& op, double bound) {
  if (op == ">=") return v >= bound;
  if (op == "<=") return v <= bound;
  if (op == ">") return v > bound;
  if (op == "<") return v < bound;
  if (op == "==") return v == bound;
  return v != bound;
}

// Checks each expectation on every run's final state: run metrics once, layer metrics per layer.
std::vector<ExpectationResult> check(const std::vector<Expectation>& expectations, const std::vector<StatsRun>& runs) {
  std::vector<ExpectationResult> results;
  for (const auto& e : expectations) {
    ExpectationResult r{e, {}};
    for (const auto& run : runs) {
      const std::string who = runs.size() > 1 ? run.source + ": " : "";
      if (std::find(kRunMetrics.begin(), kRunMetrics.end(), e.metric) != kRunMetrics.end()) {
        const auto it = run.final.find(e.metric);
        if (it == run.final.end())
          r.failures.push_back(fmt::format("{}{} is not recorded", who, e.metric));
        else if (!holds(it->second, e.op, e.value))
          r.failures.push_back(fmt::format("{}{} = {:.6g}", who, e.metric, it->second));
        continue;
      }
      if (run.points.empty() || run.layers.empty()) {
        r.failures.push_back(fmt::format("{}{}", who, run.points.empty() ? "no layer record yet" : "no ternary layer to check"));
        continue;
      }
      for (const auto& l : run.points.back().layers) {
        const double v = layer_metric(l, e.metric);
        if (!holds(v, e.op, e.value)) r.failures.push_back(fmt::format("{}{} {} = {:.6g}", who, l.name, e.metric, v));
      }
    }
    results.push_back(std::move(r));
  }
  return results;
}

void write_plot(const StatsRun& run, const std::string& path) {
  AtomicOutput out(path);
  {
    std::ofstream f(out.temp_path(), std::ios::binary);
    f << stats_svg(run);
    if (!f.flush()) throw runtime_error(fmt::format("cannot write {}", path));
  }
  out.commit();
}

void run_stats(StatsArgs& a) {
  if (a.json) a.format = "json";
  std::vector<Expectation> expectations;
  for (const auto& text : a.expect) expectations.push_back(parse_expectation(text));
  if (!a.plot.empty()) check_writable(a.plot);

  std::vector<StatsRun> runs;
  std::vector<std::string> files{a.file};
  if (!a.other.empty()) files.push_back(a.other);
  for (const auto& path : files) {
    runs.push_back(is_model_file(path) ? run_from_model(path) : run_from_log(path));
    choose_layers(runs.back(), a.layers);
  }
  if (!a.plot.empty()) {
    if (runs.size() != 1 || !runs[0].from_log || runs[0].points.empty())
      throw usage_error("--plot draws the trajectories of one run log (finetune --log) with at least one record");
    write_plot(runs[0], a.plot);
    spdlog::info("wrote {}", a.plot);
  }

  const auto results = check(expectations, runs);
  if (a.format == "json") {
    print_stats_json(runs, results);
  } else if (a.format == "csv") {
    print_stats_csv(runs);
  } else {
    const char* no_color = std::getenv("NO_COLOR");
    print_stats_text(runs, a.sparklines == "always" || (a.sparklines == "auto" && isatty(STDOUT_FILENO) &&
                                                        !(no_color && *no_color)));
  }
  std::cout.flush();

  size_t failed = 0;
  for (const auto& r : results) {
    if (r.failures.empty()) continue;
    ++failed;
    for (const auto& f : r.failures) std::cerr << fmt::format("ttq: expect '{}' failed: {}\n", r.expectation.text, f);
  }
  if (failed) throw runtime_error(fmt::format("{} of {} expectations failed", failed, results.size()));
  if (!results.empty()) spdlog::info("all {} expectations hold", results.size());
}

}  // namespace

Command register_stats(CLI::App& app) {
  auto a = std::make_shared<StatsArgs>();
  auto* sub = app.add_subcommand("stats", "Show the Wp/Wn and sparsity trajectories of a run, compare two runs, "
                                          "check expectations");
  sub->add_option("FILE", a->file, "run log (finetune --log), or model written by ttq (.pt, .ttqz)")
      ->required()
      ->type_name("FILE");
  sub->add_option("OTHER", a->other, "a second run log or model: compare the final states")->type_name("FILE");
  sub->add_option("--layers", a->layers, "only layers whose name matches REGEX (repeatable)")->type_name("REGEX");
  auto* format = sub->add_option("--format", a->format, "text, json, or csv (long: epoch,step,layer,metric,value)")
                     ->check(CLI::IsMember({"text", "json", "csv"}))
                     ->type_name("FORMAT")
                     ->capture_default_str();
  sub->add_flag("--json", a->json, "same as --format json")->excludes(format);
  sub->add_option("--plot", a->plot, "also draw the run's trajectories as a self-contained SVG")->type_name("OUT.svg");
  sub->add_option("--expect", a->expect,
                  "check the final state, e.g. 'sparsity>=0.3' (every layer), 'top1>=0.9'; exit 1 "
                  "listing each failure (repeatable)")
      ->type_name("COND");
  sub->add_option("--sparklines", a->sparklines, "trajectory sparklines in the text table: auto (on a terminal, "
                                                 "unless NO_COLOR), always, never")
      ->check(CLI::IsMember({"auto", "always", "never"}))
      ->type_name("WHEN")
      ->capture_default_str();
  return {sub, [a] { run_stats(*a); }};
}

}  // namespace ttq::cli
