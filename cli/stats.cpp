// ttq stats RUN.jsonl|MODEL [RUN2|MODEL2]: trajectories of a run, final states side by side, and
// --expect checks for CI (man/ttq-stats.1).
#include "cli/stats.h"

#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <set>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "core/error.h"
#include "core/util.h"
#include "formats/atomic_file.h"
#include "formats/model_file.h"

namespace ttq::cli {

double layer_metric(const LayerRecord& l, const std::string& metric) {
  if (metric == "wp") return l.wp;
  if (metric == "wn") return l.wn;
  if (metric == "delta") return l.delta;
  if (metric == "sparsity") return l.counts.sparsity();
  if (metric == "neg") return l.counts.fraction(l.counts.neg);
  if (metric == "pos") return l.counts.fraction(l.counts.pos);
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

std::map<std::string, double> final_metrics(const Metrics& val, const EpochRecord* e) {
  std::map<std::string, double> out;
  for (const auto& v : measured_metrics(val, false)) out[v.name == std::string("loss") ? "val_loss" : v.name] = v.value;
  if (!e) return out;
  out["lr"] = e->lr;
  for (const auto& v : measured_metrics(e->train, true))
    if (v.headline) out[v.name == std::string("loss") ? "loss" : "train_" + std::string(v.name)] = v.value;
  return out;
}

std::vector<std::pair<std::string, double>> epoch_metrics(const EpochRecord& e) {
  std::vector<std::pair<std::string, double>> out;
  for (const auto& v : measured_metrics(e.train, true))
    if (v.headline) out.emplace_back("train_" + std::string(v.name), v.value);
  for (const auto& v : measured_metrics(e.val, false)) out.emplace_back("val_" + std::string(v.name), v.value);
  out.emplace_back("seconds", e.seconds);
  return out;
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
  const std::optional<ModelMetadata> meta = read_model_metadata(path);
  if (!meta)
    throw input_error(fmt::format("{}: no TTQ metadata (not written by ttq quantize or finetune); "
                                  "'ttq inspect' reads any model", path));
  StatsRun run;
  run.source = path;
  run.tool = fmt::format("ttq {} {}", meta->tool_version, meta->command);
  LoggedPoint point;
  point.layers = meta->layers;
  if (meta->run) {
    run.data = meta->run->data;
    point.step = meta->run->steps;
    run.kept_epoch = meta->run->kept_epoch;
    run.final = final_metrics(meta->run->val, nullptr);
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
  if (!run.epochs.empty()) run.final = final_metrics(run.epochs.back().val, &run.epochs.back());
  if (h.end) {  // the output as written: the kept epoch's metrics (with its lr and training split)
    run.kept_epoch = h.end->kept_epoch;
    const EpochRecord* kept = nullptr;
    for (const auto& e : run.epochs)
      if (e.epoch == run.kept_epoch || (run.kept_epoch < 0 && &e == &run.epochs.back())) kept = &e;
    run.final = final_metrics(h.end->val, kept);
  }
  return run;
}

// Keeps the layers whose name matches one of the regexes (all when none), in every point.
void choose_layers(StatsRun& run, const std::vector<std::string>& patterns) {
  const auto regexes = compile_regexes(patterns);
  for (auto& point : run.points) {
    std::vector<LayerRecord> kept;
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
        else if (!e.holds(it->second))
          r.failures.push_back(fmt::format("{}{} = {:.6g}", who, e.metric, it->second));
        continue;
      }
      if (run.points.empty() || run.layers.empty()) {
        r.failures.push_back(fmt::format("{}{}", who, run.points.empty() ? "no layer record yet" : "no ternary layer to check"));
        continue;
      }
      for (const auto& l : run.points.back().layers) {
        const double v = layer_metric(l, e.metric);
        if (!e.holds(v)) r.failures.push_back(fmt::format("{}{} {} = {:.6g}", who, l.name, e.metric, v));
      }
    }
    results.push_back(std::move(r));
  }
  return results;
}

void run_stats(StatsArgs& a) {
  if (a.json) a.format = "json";
  std::vector<Expectation> expectations;
  std::vector<std::string> metrics = kLayerMetrics;
  metrics.insert(metrics.end(), kRunMetrics.begin(), kRunMetrics.end());
  for (const auto& text : a.expect) expectations.push_back(parse_expectation(text, metrics));
  if (!a.plot.empty()) {
    check_writable(a.plot);
    refuse_overlaps({{"the first input", a.file}, {"the second input", a.other}}, {{"--plot", a.plot}});
  }

  std::vector<StatsRun> runs;
  std::vector<std::string> files{a.file};
  if (!a.other.empty()) files.push_back(a.other);
  for (const auto& path : files) {
    // Model files are told by their first bytes; anything else is read as a log, which names its own errors.
    runs.push_back(sniff_model_file(path) ? run_from_model(path) : run_from_log(path));
    choose_layers(runs.back(), a.layers);
  }
  if (!a.plot.empty()) {
    if (runs.size() != 1 || !runs[0].from_log || runs[0].points.empty())
      throw usage_error("--plot draws the trajectories of one run log (finetune --log) with at least one record");
    write_atomically(a.plot, [&](std::ostream& out) { out << stats_svg(runs[0]); });
    spdlog::info("wrote {}", a.plot);
  }

  const auto results = check(expectations, runs);
  if (a.format == "json") {
    print_stats_json(runs, results);
  } else if (a.format == "csv") {
    print_stats_csv(runs);
  } else {
    print_stats_text(runs, a.sparklines == "always" || (a.sparklines == "auto" && isatty(STDOUT_FILENO) && !no_color()));
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
                  "check the final state, e.g. 'sparsity>=0.3' (every layer), 'top1>=0.9', 'agreement>=0.95'; exit 1 "
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
