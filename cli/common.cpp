#include "cli/common.h"

#include "core/error.h"

#include <fmt/format.h>

#include <ATen/Parallel.h>

#include <cstdio>
#include <nlohmann/json.hpp>

namespace ttq::cli {
namespace {

// One table feeds the --init validator and its help text.
struct InitChoice {
  const char* name;
  ScaleInit value;
  const char* help;
};
constexpr InitChoice kInitChoices[] = {
    {"mean", ScaleInit::Mean, "Wp, Wn = mean |x| above / below the threshold, L2-optimal"},
    {"ones", ScaleInit::Ones, "Wp = Wn = 1, as the paper's authors (suits BatchNorm after each layer)"},
};

std::string init_help() {
  std::string help = "scale initialization:";
  for (const auto& c : kInitChoices) help += fmt::format(" '{}': {};", c.name, c.help);
  help.back() = '.';
  return help;
}

}  // namespace

void QuantizeFlags::add_to(CLI::App* app, const std::string& default_init) {
  init = default_init;
  auto* t = app->add_option("--threshold", threshold,
                            "max-scaled threshold: weights with |x| <= T*max|x| become 0, T in (0,1)")
                ->type_name("T")
                ->capture_default_str();
  sparsity_option = app->add_option("--sparsity", sparsity,
                                    "fixed sparsity: the S*n smallest |x| of each layer become 0, "
                                    "S in [0,1) (instead of --threshold)")
                        ->type_name("S");
  t->excludes(sparsity_option);
  std::vector<std::string> init_names;
  for (const auto& c : kInitChoices) init_names.push_back(c.name);
  app->add_option("--init", init, init_help())
      ->check(CLI::IsMember(init_names))
      ->type_name("INIT")
      ->capture_default_str();

  auto& sel = options.selection;
  app->add_option("--include", sel.include,
                  "quantize only weights whose name matches REGEX (repeatable)")
      ->type_name("REGEX");
  app->add_option("--exclude", sel.exclude, "keep weights whose name matches REGEX in full precision (repeatable)")
      ->type_name("REGEX");
  app->add_flag("--quantize-first", sel.quantize_first, "also quantize the first layer in forward order");
  app->add_flag("--quantize-last", sel.quantize_last, "also quantize the last layer in forward order");
}

void DataFlags::add_to(CLI::App* app, bool training) {
  app->add_option("--data", data, "dataset KIND:PATH (default: fashion-mnist:" + std::string(kDefaultDataDir) +
                                      "); kinds: fashion-mnist, mnist, cifar10, imagefolder, tensors, and those of --plugin")
      ->type_name("SPEC");
  app->add_option("--val", val, "validate on this dataset's test split instead")->type_name("SPEC");
  app->add_option("--plugin", plugins, "load dataset kinds from a shared library (repeatable)")->type_name("FILE.so");
  app->add_option("--subset", subset, "use only the first N samples of each split (quick runs)")
      ->type_name("N")
      ->check(CLI::NonNegativeNumber);
  app->add_option("--threads", threads, "CPU threads for LibTorch (default: one per core, the faster choice "
                                        "measured by scripts/bench_train.sh)")
      ->type_name("N")
      ->check(CLI::PositiveNumber);
  app->add_option("--image-size", load_options.image_size, "imagefolder: resize and center-crop images to N×N")
      ->type_name("N")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  app->add_option("--mean", mean, "per-channel normalization mean (default: the dataset's)")->type_name("M");
  app->add_option("--std", std, "per-channel normalization std (default: the dataset's)")->type_name("S");
  if (!training) return;
  flip = app->add_flag("--flip", "random horizontal flips while training (default: the dataset's)");
  no_flip = app->add_flag("--no-flip", "no random flips")->excludes(flip);
  app->add_option("--crop-padding", crop_padding,
                  "random crops with this zero padding while training, 0 for none (default: the dataset's)")
      ->type_name("P")
      ->check(CLI::NonNegativeNumber);
}

DataSplits DataFlags::load() const {
  if (threads > 0) at::set_num_threads(threads);
  for (const auto& p : plugins) load_plugin(p);
  std::string spec = data.empty() ? default_dataset_spec() : data;
  if (spec.empty())
    throw input_error(fmt::format("no --data given and the default Fashion-MNIST is not in {} "
                                  "(apt-get install dataset-fashion-mnist)", kDefaultDataDir));
  if (data.empty()) spdlog::info("data: {} (the default)", spec);
  DataSplits splits = load_dataset(spec, load_options);
  if (!val.empty()) splits.test = load_dataset(val, load_options).test;
  if (subset > 0) {
    for (Dataset* d : {&splits.train, &splits.test}) {
      const int64_t n = std::min(subset, d->size());
      *d = {d->inputs.narrow(0, 0, n), d->labels.narrow(0, 0, n)};
    }
  }
  return splits;
}

Preprocess DataFlags::preprocess(const DataSplits& splits) const {
  Preprocess p = default_preprocess(splits);
  if (!mean.empty()) p.mean = mean;
  if (!std.empty()) p.std = std;
  if (p.mean.size() != p.std.size()) throw usage_error("--mean and --std need the same number of values");
  for (const double s : p.std)
    if (!(s > 0)) throw usage_error("--std values must be positive");
  if (flip && flip->count()) p.flip = true;
  if (no_flip && no_flip->count()) p.flip = false;
  if (crop_padding >= 0) p.crop_padding = crop_padding;
  return p;
}

const QuantizeOptions& QuantizeFlags::resolve() {
  options.threshold = sparsity_option->count() ? ThresholdSpec{ThresholdMode::Sparsity, sparsity}
                                               : ThresholdSpec{ThresholdMode::MaxScaled, threshold};
  validate(options.threshold);
  for (const auto& c : kInitChoices)
    if (init == c.name) options.init = c.value;
  return options;
}

std::string join_shape(const std::vector<int64_t>& shape) {
  if (shape.empty()) return "scalar";
  std::string s;
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? "x" : "") + std::to_string(shape[i]);
  return s;
}

std::string human_bytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB"};
  int u = 0;
  while (bytes >= 1024.0 && u < 3) bytes /= 1024.0, ++u;
  return u == 0 ? fmt::format("{:.0f} B", bytes) : fmt::format("{:.1f} {}", bytes, units[u]);
}

std::string human_count(int64_t n) {
  if (n >= 1000000) return fmt::format("{:.2f}M", n / 1e6);
  if (n >= 10000) return fmt::format("{:.1f}K", n / 1e3);
  return std::to_string(n);
}

namespace {

nlohmann::json report_json(const ModelReport& report, const std::string& source) {
  using nlohmann::json;
  json layers = json::array();
  for (const auto& l : report.layers) {
    json j = {{"name", l.name}, {"shape", l.shape}, {"numel", l.numel}, {"kind", to_string(l.kind)},
              {"bits", l.bits()}, {"bytes_fp32", l.bytes_fp32()}, {"bytes_2bit", l.bytes_2bit()}};
    if (l.coded()) {
      j["sparsity"] = l.counts.sparsity();
      j["wp"] = l.wp;
      j["wn"] = l.wn;
      j["delta"] = l.delta ? json(*l.delta) : json(nullptr);
      j["counts"] = {{"neg", l.counts.neg}, {"zero", l.counts.zero}, {"pos", l.counts.pos}};
    } else {
      for (const char* k : {"sparsity", "wp", "wn", "delta", "counts"}) j[k] = nullptr;
    }
    layers.push_back(std::move(j));
  }
  const Totals& t = report.totals;
  json doc = {{"file", source},
              {"ttq_metadata", report.has_metadata},
              {"dry_run", report.dry_run},
              {"layers", layers},
              {"totals",
               {{"layers", report.layers.size()},
                {"coded_layers", std::count_if(report.layers.begin(), report.layers.end(),
                                               [](const LayerReport& l) { return l.coded(); })},
                {"parameters", t.parameters},
                {"coded_parameters", t.coded_parameters},
                {"model_bytes", t.model_bytes},
                {"bytes_2bit", t.bytes_2bit},
                {"bytes_entropy", t.bytes_entropy},
                {"ratio_2bit", t.ratio_2bit()},
                {"ratio_entropy", t.ratio_entropy()}}}};
  if (report.metadata) {
    doc["tool_version"] = report.metadata->tool_version;
    doc["command"] = report.metadata->command;
  }
  return doc;
}

void print_table(const ModelReport& report) {
  size_t name_w = 5, shape_w = 5;
  for (const auto& l : report.layers) {
    name_w = std::max(name_w, l.name.size());
    shape_w = std::max(shape_w, join_shape(l.shape).size());
  }
  fmt::print("{:<{}}  {:<{}}  {:>8}  {:<7}  {:>8}  {:>9}  {:>9}  {:>9}  {:>5}  {:>9}  {:>9}\n", "layer",
             name_w, "shape", shape_w, "params", "kind", "sparsity", "Wp", "Wn", "delta", "bits",
             "FP32", "2-bit");
  for (const auto& l : report.layers) {
    const auto num = [&](double v) { return l.coded() ? fmt::format("{:.4g}", v) : std::string("-"); };
    fmt::print("{:<{}}  {:<{}}  {:>8}  {:<7}  {:>8}  {:>9}  {:>9}  {:>9}  {:>5.2f}  {:>9}  {:>9}\n",
               l.name, name_w, join_shape(l.shape), shape_w, human_count(l.numel), to_string(l.kind),
               l.coded() ? fmt::format("{:.3f}", l.counts.sparsity()) : "-", num(l.wp), num(l.wn),
               l.delta ? fmt::format("{:.4g}", *l.delta) : "-", l.bits(), human_bytes(l.bytes_fp32()),
               human_bytes(l.bytes_2bit()));
  }
  const Totals& t = report.totals;
  const auto coded = std::count_if(report.layers.begin(), report.layers.end(),
                                   [](const LayerReport& l) { return l.coded(); });
  fmt::print("\n{} parameters, {} in {} of {} layers {}\n", human_count(t.parameters),
             human_count(t.coded_parameters), coded, report.layers.size(),
             report.dry_run ? "would be ternary (dry run: no ternary layer in the model)" : "ternary");
  fmt::print("size: {} as stored; {} with 2-bit codes ({:.2f}x); {} at the codes' entropy ({:.2f}x)\n",
             human_bytes(t.model_bytes), human_bytes(t.bytes_2bit), t.ratio_2bit(),
             human_bytes(t.bytes_entropy), t.ratio_entropy());
}

}  // namespace

void print_report(const ModelReport& report, const std::string& source, bool json,
                  const std::string& output) {
  if (json) {
    auto doc = report_json(report, source);
    if (!output.empty()) doc["output"] = output;
    fmt::print("{}\n", doc.dump(2));
  } else {
    print_table(report);
  }
  std::fflush(stdout);
}

}  // namespace ttq::cli
