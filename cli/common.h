// What several subcommands share: the command table entry, option helpers (choices from the
// tables in core/, flag groups for layer selection, thresholds and data), the display settings,
// and the printing of a model report.
#pragma once
#include <CLI/CLI.hpp>

#include <fmt/format.h>

#include <functional>
#include <map>
#include <optional>
#include <string>

#include "plugins/dataset.h"
#include "core/objective.h"
#include "core/precision.h"
#include "core/quantize.h"
#include "core/report.h"
#include "core/sensitivity.h"
#include "formats/metadata.h"
#include "formats/ttqz.h"

namespace ttq::cli {

// A registered subcommand: main() runs `run` for the one the user named.
struct Command {
  CLI::App* app = nullptr;
  std::function<void()> run;
};

// An option whose values are the names in E's choice table (core/choices.h): CLI11 checks and maps
// them, and the help lists each with its meaning. The target's current value is the default.
template <class E>
CLI::Option* add_choice_option(CLI::App* app, const std::string& name, E& target, const std::string& help) {
  std::map<std::string, E> names;
  std::string text = help + ":";
  for (const auto& c : choices(target)) {
    names.emplace(c.name, c.value);
    text += fmt::format(" '{}': {};", c.name, c.help);
  }
  text.back() = '.';
  return app->add_option(name, target, text)
      ->transform(CLI::CheckedTransformer(names).description(""))
      ->type_name("{" + choice_names<E>() + "}")
      ->default_str(choice_name(target));
}

// --threshold/--sparsity, --init and the layer selection, bound to `target` (whose values are the
// defaults), or to options of its own. Call `resolve` after parsing: it sets the threshold mode and
// validates.
struct QuantizeFlags {
  double threshold = ThresholdSpec{}.value;
  double sparsity = 0.5;
  CLI::Option* sparsity_option = nullptr;
  QuantizeOptions own;
  QuantizeOptions* options = &own;  // hence not copyable

  QuantizeFlags() = default;
  QuantizeFlags(const QuantizeFlags&) = delete;
  QuantizeFlags& operator=(const QuantizeFlags&) = delete;

  void add_to(CLI::App* app, QuantizeOptions* target = nullptr);
  const QuantizeOptions& resolve();  // validates ranges (usage error)
};

// Which command takes the data flags: finetune trains on them (augmentation flags; data decoded per
// batch is prefetched while a step computes), eval measures on them, bench runs a model on the first
// samples of their test split (no --val or --subset; random input without --data), export calibrates
// on the first samples of their training split (no --data: the command binds its --calibrate to
// `data`; no --val or --subset; every other flag a usage error without it).
enum class DataUse { Bench, Eval, Finetune, Calibrate };

// --data, --val, --plugin, --subset, --threads, the image-folder flags and the preprocessing flags.
struct DataFlags {
  std::string data, val;
  std::vector<std::string> plugins;
  int64_t subset = 0;
  int threads = 0;  // 0: one per core
  PreprocessOverrides overrides;
  LoadOptions load_options;
  std::optional<int> workers;  // --workers; not given: load() chooses by the cores
  DataUse use = DataUse::Eval;
  std::vector<CLI::Option*> added;

  void add_to(CLI::App* app, DataUse use);
  // The flags add_to added that were given ("--image-size"), for a command that takes them only with
  // another (export's --calibrate).
  std::vector<std::string> given() const;
  // LibTorch's threads: --threads, else one per core (LibTorch's own default can be a single thread,
  // seen with Debian's build).
  void set_threads() const;
  // The data's spec: --data, or the embedded default (an input error when that is not installed).
  std::string spec() const;
  // Sets the thread count, loads plugins and the data of spec().
  DataSplits load() const;
  Preprocess preprocess(const DataSplits& data) const { return apply_overrides(data.defaults, overrides); }
};

// --max-drop, --target-ratio, --metric and --budget-samples (quantize, inspect, finetune), bound to `budget`.
void add_budget_options(CLI::App* app, Budget& budget);
// The held-out samples of a budget: the first budget.samples of `split` (all with 0).
Dataset budget_samples(const Dataset& split, const Budget& budget);
// Measures the layers of `module` on `held_out` (as ttq sensitivity, with a progress line; each
// of `ranks` a share),
// chooses by the budget, sets options.selection.only to the choice and returns it (said on stderr).
BudgetChoice choose_layers(torch::jit::Module& module, const Dataset& held_out, const Preprocess& pre,
                           const std::string& spec, QuantizeOptions& options, const Budget& budget,
                           const std::string& model_output = "", Communicator* ranks = nullptr);
// quantize and inspect: with a budget, choose_layers on the data's test split; without one,
// nullopt, and a usage error when --data is given.
std::optional<BudgetChoice> apply_budget(torch::jit::Module& module, const DataFlags& data, QuantizeOptions& options,
                                         const Budget& budget);
// "top1 86.95%", "rel_mse 0.0123": a sensitivity metric's value; "+1.25", "inf": its drop.
std::string show_value(double value, SensitivityMetric metric);
std::string show_drop(double drop);

// --distill, --teacher, --distill-loss/-temperature/-alpha (finetune) and --model-output; eval
// takes the teacher and the output only (`training` false).
void add_objective_options(CLI::App* app, ObjectiveOptions& target, bool training);
// The teacher a run compares with or distills from: --teacher FILE, else (--distill) `model`.
std::optional<torch::jit::Module> load_teacher(const ObjectiveOptions& options, const std::string& model);
// --precision and --memory-format (finetune, eval, bench), and --precision's value with auto decided for this CPU (said on stderr).
void add_precision_options(CLI::App* app, Precision& precision, MemoryFormat& memory_format);
Precision decided_precision(Precision asked);
// As decided_precision, for a model to evaluate: a packed model's ternary layers run ttq's kernels on
// float32 (or int8) activations, so it takes fp32 (auto) or refuses bf16 (usage_error).
Precision model_precision(Precision asked, bool packed, const std::string& path);
// "top-1 91.20%, top-5 99.80%, loss 0.2466" (labeled data), then "agreement 99.10%, rel_mse 0.0123"
// (against a teacher): the measured parts only.
std::string describe_metrics(const Metrics& m);

// Display settings shared by every command (zstd's single display level): -q leaves warnings
// and errors only, and hides progress lines too; NO_COLOR (https://no-color.org: set and not
// empty) turns off colour and other decoration.
bool quiet();
bool no_color();

// SIGINT/SIGTERM outside finetune's training loop: removes the output being written, says so in one
// line and exits 130 at once (async-signal-safe). main() installs it; finetune puts it back after
// its first, graceful, interrupt.
extern "C" void interrupt_now(int signal);
// Installs interrupt_now, and ignores SIGXFSZ so that a file-size limit is a write error (EFBIG)
// reported like a full disk instead of killing the process with a partial file.
void install_signal_handlers();

// Prints the report on stdout: an aligned table with totals, or one JSON document. `output`
// names the file just written, when there is one.
// With `budget` (inspect's dry run under a budget), or the metadata's, also what the budget chose.
void print_report(const ModelReport& report, const std::optional<ModelMetadata>& metadata, const std::string& source,
                  bool json, const std::string& output = "", const std::optional<BudgetChoice>& budget = std::nullopt);

// Prints what a .ttqz archive holds and how close it is to the entropy bound. With `input`
// (export), also the input file and the compression ratio.
struct ExportInput {
  std::string path;
  uint64_t bytes = 0;
};
void print_archive(const ttqz::Archive& archive, const std::string& source, bool json,
                   const std::optional<ExportInput>& input = std::nullopt);

// Sizes for people: "44.7 MiB", and counts: "11.2M".
std::string human_bytes(double bytes);
std::string human_count(int64_t n);

}  // namespace ttq::cli
