// What several subcommands share: the command table entry, the option groups for layer selection
// and thresholds, and the printing of a model report as text or JSON.
#pragma once
#include <CLI/CLI.hpp>

#include <functional>
#include <string>

#include "core/quantize.h"
#include "core/report.h"
#include "core/train.h"
#include "formats/ttqz.h"
#include "plugins/dataset.h"

namespace ttq::cli {

// A registered subcommand: main() runs `run` for the one the user named.
struct Command {
  CLI::App* app = nullptr;
  std::function<void()> run;
};

// --threshold/--sparsity and --init. Call `resolve` after parsing to fill the options.
struct QuantizeFlags {
  double threshold = 0.05;
  double sparsity = 0.5;
  std::string init = "mean";
  CLI::Option* sparsity_option = nullptr;
  QuantizeOptions options;

  void add_to(CLI::App* app, const std::string& default_init = "mean");
  const QuantizeOptions& resolve();  // validates ranges (usage error)
};

// --data, --val, --plugin, --subset, --threads and the preprocessing flags (finetune, eval).
struct DataFlags {
  std::string data, val;
  std::vector<std::string> plugins;
  int64_t subset = 0;
  int threads = 0;  // 0: LibTorch's default, one per core
  std::vector<double> mean, std;
  CLI::Option* flip = nullptr;
  CLI::Option* no_flip = nullptr;
  int crop_padding = -1;  // -1: the dataset's default
  LoadOptions load_options;

  void add_to(CLI::App* app, bool training);
  // Sets the thread count, loads plugins and the data (the embedded default when --data is absent).
  DataSplits load() const;
  Preprocess preprocess(const DataSplits& data) const;
};

// Prints the report on stdout: an aligned table with totals, or one JSON document. `output`
// names the file just written, when there is one.
void print_report(const ModelReport& report, const std::string& source, bool json,
                  const std::string& output = "");

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
std::string join_shape(const std::vector<int64_t>& shape);

}  // namespace ttq::cli
