#include "cli/common.h"

#include <ATen/Parallel.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include <unistd.h>

#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "core/util.h"
#include "formats/atomic_file.h"
#include "formats/json.h"
#include "formats/model_file.h"
#include "plugins/dataset.h"

namespace ttq::cli {

void QuantizeFlags::add_to(CLI::App* app, QuantizeOptions* target) {
  if (target) options = target;
  threshold = options->threshold.value;
  auto* t = app->add_option("--threshold", threshold,
                            "max-scaled threshold: weights with |x| <= T*max|x| become 0, T in (0,1)")
                ->type_name("T")
                ->capture_default_str();
  sparsity_option = app->add_option("--sparsity", sparsity,
                                    "fixed sparsity: the S*n smallest |x| of each layer become 0, "
                                    "S in [0,1) (instead of --threshold)")
                        ->type_name("S");
  t->excludes(sparsity_option);
  add_choice_option(app, "--init", options->init, "scale initialization");

  auto& sel = options->selection;
  app->add_option("--include", sel.include, "quantize only weights whose name matches REGEX (repeatable)")
      ->type_name("REGEX");
  app->add_option("--exclude", sel.exclude, "keep weights whose name matches REGEX in full precision (repeatable)")
      ->type_name("REGEX");
  app->add_flag("--quantize-first", sel.quantize_first, "also quantize the first layer in forward order");
  app->add_flag("--quantize-last", sel.quantize_last, "also quantize the last layer in forward order");
}

const QuantizeOptions& QuantizeFlags::resolve() {
  options->threshold = sparsity_option->count() ? ThresholdSpec{ThresholdMode::Sparsity, sparsity}
                                                : ThresholdSpec{ThresholdMode::MaxScaled, threshold};
  return *options;
}

void add_precision_options(CLI::App* app, Precision& precision, MemoryFormat& memory_format) {
  add_choice_option(app, "--precision", precision, "arithmetic of the model's matrix products");
  add_choice_option(app, "--memory-format", memory_format, "memory order of images and convolution weights");
}

Precision decided_precision(Precision asked) {
  const ResolvedPrecision r = resolve_precision(asked);
  if (asked == Precision::Auto) spdlog::info("--precision auto: {} ({})", choice_name(r.precision), r.reason);
  return r.precision;
}

Precision model_precision(Precision asked, bool packed, const std::string& path) {
  if (!packed) return decided_precision(asked);
  if (asked == Precision::Bf16)
    throw usage_error(fmt::format("--precision bf16: {} is packed, and its ternary layers run ttq's kernels on float32 "
                                  "or int8 activations; use --precision fp32 (export --activations int8 for speed)", path));
  if (asked == Precision::Auto) spdlog::info("--precision auto: fp32 ({} is packed: ttq's kernels take float32)", path);
  return Precision::Fp32;
}

void add_objective_options(CLI::App* app, ObjectiveOptions& o, bool training) {
  auto* group = app->add_option_group("distillation", "learning from a teacher model's outputs (see 'Distillation' in man "
                                                      "ttq-finetune)");
  if (training) {
    group->add_flag("--distill", o.distill, "distill from the input model, frozen in eval mode (allows unlabeled data)");
    group->add_option("--teacher", o.teacher, "distill from this TorchScript model instead (same inputs; implies --distill)")
        ->type_name("FILE");
    add_choice_option(group, "--distill-loss", o.loss, "distillation loss");
    group->add_option("--distill-temperature", o.temperature, "temperature T of the kl loss")
        ->type_name("T")
        ->capture_default_str();
    group->add_option("--distill-alpha", o.alpha, "weight of the distillation loss against cross-entropy on labels, "
                                                   "in [0, 1] (default: 1 without labels, 0.5 with them)")
        ->type_name("A");
  } else {
    group->add_option("--teacher", o.teacher, "also compare with this TorchScript model: top-1 agreement and relative "
                                              "MSE of the outputs (needed for unlabeled data)")
        ->type_name("FILE");
  }
  group->add_option("--model-output", o.output, "the model's output to train on and compare: a dict key or a tuple "
                                                "index (default: every floating tensor it returns)")
      ->type_name("KEY|INDEX");
}

std::optional<torch::jit::Module> load_teacher(const ObjectiveOptions& o, const std::string& model) {
  if (!o.distilling()) return std::nullopt;
  return open_model(o.teacher.empty() ? model : o.teacher).module;
}

std::string describe_metrics(const Metrics& m) {
  // The loss comes last, and only with labels: without them agreement and rel_mse say more.
  std::vector<std::string> parts;
  for (const auto& v : measured_metrics(m, false)) {
    std::string label = v.name;
    if (label == "loss") continue;
    if (label.rfind("top", 0) == 0) label.insert(3, "-");  // "top-1"
    if (label == "nonfinite") label = "not finite";        // the share of samples left out
    parts.push_back(v.fraction ? fmt::format("{} {:.2f}%", label, 100 * v.value)
                               : fmt::format("{} {:.4g}", label, v.value));
  }
  if (m.has_labels()) parts.push_back(fmt::format("loss {:.4f}", m.loss));
  return fmt::format("{}", fmt::join(parts, ", "));
}

// The image-folder flags are the imagefolder kind's settings: it validates them (plugins/image_folder.cpp).
void DataFlags::add_to(CLI::App* app, DataUse data_use) {
  use = data_use;
  const bool training = use == DataUse::Finetune;
  std::string kinds;
  for (const auto& k : dataset_kinds()) kinds += fmt::format(" '{}': {};", k.name, k.help);
  const std::string what = use == DataUse::Bench ? "run on the first samples of this dataset's test split instead of "
                                                   "a random input: KIND:PATH"
                                                 : fmt::format("dataset KIND:PATH (default: fashion-mnist:{})",
                                                               kDefaultDataDir);
  const size_t before = app->get_options().size();
  if (use != DataUse::Calibrate)
    app->add_option("--data", data, fmt::format("{}; kinds:{} and those of --plugin", what, kinds))->type_name("SPEC");
  if (use != DataUse::Bench && use != DataUse::Calibrate) {
    app->add_option("--val", val, "validate on this dataset's test split instead")->type_name("SPEC");
    app->add_option("--subset", subset, "use only the first N samples of each split (quick runs)")
        ->type_name("N")
        ->check(CLI::NonNegativeNumber);
  }
  app->add_option("--plugin", plugins, "load dataset kinds from a shared library (repeatable)")->type_name("FILE.so");
  app->add_option("--threads", threads, "CPU threads for LibTorch (default: one per core, the faster choice "
                                        "measured by scripts/bench_train.sh)")
      ->type_name("N")
      ->check(CLI::PositiveNumber);
  app->add_option("--image-size", load_options.image_folder.image_size,
                  "imagefolder: the side of the square crops (evaluation: resize the shorter side to N/0.875, "
                  "center crop; training: torchvision's RandomResizedCrop)")
      ->type_name("N")
      ->capture_default_str();
  app->add_option_function<int>("--workers", [this](int n) { workers = n; },
                  training ? "imagefolder: threads decoding images (default: the cores LibTorch's --threads leave, at "
                             "least 1)"
                           : "imagefolder: threads decoding images (default: one per core)")
      ->type_name("N");
  app->add_flag("--skip-bad-images", load_options.image_folder.skip_bad_images,
                "imagefolder: replace unreadable or corrupt images by the next good one of their class, with a "
                "warning each, instead of stopping");
  app->add_flag("--cache-images", load_options.image_folder.cache_images,
                "imagefolder: keep decoded images in memory after their first use, up to a quarter of the "
                "machine's memory (JPEGs are then decoded at full size)");
  app->add_option("--val-fraction", load_options.image_folder.val_fraction,
                  "imagefolder without train/ and val/: the fraction of each class held out for validation")
      ->type_name("F")
      ->capture_default_str();
  app->add_option("--max-image-pixels", load_options.image_folder.max_image_pixels,
                  "imagefolder: refuse images with more pixels (decompression bombs)")
      ->type_name("N")
      ->capture_default_str();
  app->add_option("--mean", overrides.mean, "per-channel normalization mean (default: the dataset's)")->type_name("M");
  app->add_option("--std", overrides.std, "per-channel normalization std (default: the dataset's)")->type_name("S");
  const auto options = app->get_options();
  added.assign(options.begin() + static_cast<std::ptrdiff_t>(before), options.end());
  if (!training) return;
  auto* flip = app->add_flag_callback("--flip", [this] { overrides.flip = true; },
                                      "random horizontal flips while training (default: the dataset's)");
  app->add_flag_callback("--no-flip", [this] { overrides.flip = false; }, "no random flips")->excludes(flip);
  app->add_option("--crop-scale", load_options.image_folder.crop_scale,
                  "imagefolder: the range of the image's area a training crop covers (RandomResizedCrop's scale)")
      ->type_name("LOW,HIGH")
      ->delimiter(',')
      ->capture_default_str();
  app->add_flag_callback("--no-random-crop", [this] { load_options.image_folder.random_crop = false; },
                         "imagefolder: train on the evaluation crop (no RandomResizedCrop)");
  app->add_option_function<int>("--crop-padding", [this](int p) { overrides.crop_padding = p; },
                                "random crops with this zero padding while training, 0 for none (default: the dataset's)")
      ->type_name("P")
      ->check(CLI::NonNegativeNumber);
}

std::vector<std::string> DataFlags::given() const {
  std::vector<std::string> names;
  for (const auto* option : added)
    if (option->count()) names.push_back(option->get_name());
  return names;
}

void DataFlags::set_threads() const { at::set_num_threads(threads > 0 ? threads : cpu_cores()); }

std::string DataFlags::spec() const {
  if (!data.empty()) return data;
  std::string spec = default_dataset_spec();
  if (spec.empty())
    throw input_error(fmt::format("no --data given and the default Fashion-MNIST is not in {} "
                                  "(apt-get install dataset-fashion-mnist)", kDefaultDataDir));
  return spec;
}

DataSplits DataFlags::load() const {
  set_threads();
  const int cores = cpu_cores();
  const bool training = use == DataUse::Finetune;
  LoadOptions options = load_options;
  options.test_split_only = use == DataUse::Eval || use == DataUse::Bench;
  // Decoding threads: evaluation decodes a batch, then computes on it, so every core can decode;
  // training decodes the next batch while a step computes, on the cores LibTorch's threads leave.
  options.image_folder.workers = workers.value_or(training ? std::max(1, cores - at::get_num_threads()) : cores);
  for (const auto& p : plugins) load_plugin(p);
  const std::string train_spec = spec();
  if (data.empty()) spdlog::info("data: {} (the default)", train_spec);
  DataSplits splits = load_dataset(train_spec, options);
  if (!val.empty()) {
    options.image_folder.val_fraction = 0;  // --val names a folder to validate on, all of it
    splits.test = load_dataset(val, options).test;
  }
  if (subset > 0) keep_first(splits, subset);
  return splits;
}

extern "C" void interrupt_now(int) {
  remove_pending_output();
  static const char kMessage[] = "ttq: error: interrupted\n";
  const ssize_t written = write(STDERR_FILENO, kMessage, sizeof kMessage - 1);
  (void)written;  // nothing more to do when stderr is gone
  _exit(kExitInterrupted);
}

void install_signal_handlers() {
  std::signal(SIGINT, interrupt_now);
  std::signal(SIGTERM, interrupt_now);
  std::signal(SIGXFSZ, SIG_IGN);
}

bool quiet() { return !spdlog::should_log(spdlog::level::info); }

bool no_color() {
  const char* v = std::getenv("NO_COLOR");
  return v && *v;
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

nlohmann::json report_json(const ModelReport& report, const std::optional<ModelMetadata>& metadata,
                           const std::string& source) {
  using nlohmann::json;
  json layers = json::array();
  for (const auto& l : report.layers) {
    json j = {{"name", l.layer.name}, {"shape", l.layer.shape}, {"numel", l.numel}, {"kind", to_string(l.kind)},
              {"bits", l.bits()}, {"bytes_fp32", l.bytes_fp32()}, {"bytes_2bit", l.bytes_2bit()}};
    if (l.coded()) {
      j["sparsity"] = l.layer.counts.sparsity();
      j["wp"] = l.layer.wp;
      j["wn"] = l.layer.wn;
      j["delta"] = l.delta_known ? json(l.layer.delta) : json(nullptr);
      j["counts"] = l.layer.counts;
    } else {
      for (const char* k : {"sparsity", "wp", "wn", "delta", "counts"}) j[k] = nullptr;
    }
    layers.push_back(std::move(j));
  }
  const Totals& t = report.totals;
  json doc = {{"file", source},
              {"ttq_metadata", metadata.has_value()},
              {"dry_run", report.dry_run},
              {"layers", layers},
              {"totals",
               {{"layers", report.layers.size()},
                {"coded_layers", t.coded_layers},
                {"parameters", t.parameters},
                {"coded_parameters", t.coded_parameters},
                {"model_bytes", t.model_bytes},
                {"bytes_2bit", t.bytes_2bit},
                {"bytes_entropy", t.bytes_entropy},
                {"ratio_2bit", t.ratio_2bit()},
                {"ratio_entropy", t.ratio_entropy()}}}};
  doc["excluded"] = json::array();
  for (const auto& e : report.excluded) doc["excluded"].push_back({{"name", e.name}, {"shape", e.shape}, {"use", e.use}});
  if (metadata) {
    doc["tool_version"] = metadata->tool_version;
    doc["libtorch_version"] = metadata->libtorch_version;
    doc["command"] = metadata->command;
  }
  return doc;
}

void print_table(const ModelReport& report) {
  size_t name_w = 5, shape_w = 5;
  for (const auto& l : report.layers) {
    name_w = std::max(name_w, l.layer.name.size());
    shape_w = std::max(shape_w, join_shape(l.layer.shape).size());
  }
  fmt::print("{:<{}}  {:<{}}  {:>8}  {:<7}  {:>8}  {:>9}  {:>9}  {:>9}  {:>5}  {:>9}  {:>9}\n", "layer",
             name_w, "shape", shape_w, "params", "kind", "sparsity", "Wp", "Wn", "delta", "bits",
             "FP32", "2-bit");
  for (const auto& l : report.layers) {
    const auto num = [&](double v) { return l.coded() ? fmt::format("{:.4g}", v) : std::string("-"); };
    fmt::print("{:<{}}  {:<{}}  {:>8}  {:<7}  {:>8}  {:>9}  {:>9}  {:>9}  {:>5.2f}  {:>9}  {:>9}\n",
               l.layer.name, name_w, join_shape(l.layer.shape), shape_w, human_count(l.numel), to_string(l.kind),
               l.coded() ? fmt::format("{:.3f}", l.layer.counts.sparsity()) : "-", num(l.layer.wp), num(l.layer.wn),
               l.delta_known ? fmt::format("{:.4g}", l.layer.delta) : "-", l.bits(), human_bytes(l.bytes_fp32()),
               human_bytes(l.bytes_2bit()));
  }
  if (!report.excluded.empty()) {
    std::string list;
    for (const auto& e : report.excluded)
      list += fmt::format("{}{} {} ({})", list.empty() ? "" : ", ", e.name, join_shape(e.shape), e.use);
    fmt::print("not layer weights, kept full precision: {}\n", list);
  }
  const Totals& t = report.totals;
  fmt::print("\n{} parameters, {} in {} of {} layers {}\n", human_count(t.parameters),
             human_count(t.coded_parameters), t.coded_layers, report.layers.size(),
             report.dry_run ? "would be ternary (dry run: no ternary layer in the model)" : "ternary");
  fmt::print("size: {} as stored; {} with 2-bit codes ({:.2f}x); {} at the codes' entropy ({:.2f}x)\n",
             human_bytes(t.model_bytes), human_bytes(t.bytes_2bit), t.ratio_2bit(),
             human_bytes(t.bytes_entropy), t.ratio_entropy());
}

void print_budget(const BudgetChoice& c) {
  const auto ternary = c.ternary();
  fmt::print("budget {}: {} of {} layers ternary, {:.2f}x at the codes' entropy; one-shot {} drop {} (full precision "
             "{} on {} samples of {})\n", c.budget, ternary.size(), c.layers.size(), c.ratio, choice_name(c.metric),
             show_drop(c.drop), show_value(c.fp_value, c.metric), c.samples, c.data);
  for (const auto& l : c.layers)
    if (!l.ternary) fmt::print("  kept full precision: {} (alone {}): {}\n", l.name, show_drop(l.drop), l.reason);
}

}  // namespace

std::string show_value(double v, SensitivityMetric m) {
  if (std::isnan(v)) return "not finite";
  return is_fraction(m) ? fmt::format("{:.2f}%", 100 * v) : fmt::format("{:.4g}", v);
}

std::string show_drop(double d) { return std::isinf(d) ? "inf" : fmt::format("{:+.2f}", d); }

void print_report(const ModelReport& report, const std::optional<ModelMetadata>& metadata, const std::string& source,
                  bool json, const std::string& output, const std::optional<BudgetChoice>& budget) {
  const std::optional<BudgetChoice>& chosen = budget ? budget : metadata ? metadata->budget : budget;
  if (json) {
    auto doc = report_json(report, metadata, source);
    if (!output.empty()) doc["output"] = output;
    if (chosen) doc["budget"] = *chosen;
    fmt::print("{}\n", doc.dump(2));
  } else {
    print_table(report);
    if (chosen) print_budget(*chosen);
  }
  std::fflush(stdout);
}

}  // namespace ttq::cli
