// ttq export IN -o OUT: .ttqz archives and deployable TorchScript (man/ttq-export.1).
#include <ATen/Parallel.h>

#include <filesystem>
#include <memory>
#include <set>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/common.h"
#include "core/error.h"
#include "core/packed_model.h"
#include "core/util.h"
#include "formats/archive.h"
#include "formats/atomic_file.h"
#include "formats/model_file.h"
#include "formats/torchscript.h"
#include "plugins/dataset.h"

namespace ttq::cli {
namespace {

enum class ExportFormat { Ttqz, Ttq, TorchScript, Packed };
constexpr Choice<ExportFormat> kExportFormats[] = {
    {"ttqz", ExportFormat::Ttqz, "compressed archive (default for TorchScript input)"},
    {"ttq", ExportFormat::Ttq, "TorchScript with the TTQ metadata, as quantize writes (default for .ttqz input)"},
    {"torchscript", ExportFormat::TorchScript, "plain TorchScript without TTQ extras, for any LibTorch/PyTorch runtime"},
    {"packed", ExportFormat::Packed, "TorchScript whose ternary linear and conv2d layers run the ttq:: operators on "
                                     "2-bit weights (needs libttq_ops.so)"}};
constexpr const auto& choices(ExportFormat) { return kExportFormats; }

struct ExportArgs {
  std::string input;
  std::string output;
  ExportFormat format = ExportFormat::Ttqz;
  CLI::Option* format_option = nullptr;  // not given: the format follows the input's kind
  ExportOptions options;
  Activations activations = Activations::Float;
  CLI::Option* activations_option = nullptr;
  DataFlags calibration;  // --calibrate (its data) and the data flags
  int64_t calibrate_samples = 512;
  CLI::Option* calibrate_samples_option = nullptr;
  bool json = false;
};

// --calibrate: the first --calibrate-samples samples of the data's training split (its test split
// when it has no other), with the kind's preprocessing and the data flags' (an image folder's crop
// size, the normalization), through the packed model; what was measured goes to `meta`.
std::vector<CalibratedLayer> calibrate(const ExportArgs& args, torch::jit::Module& module, ModelMetadata& meta) {
  const std::string& spec = args.calibration.data;
  const DataSplits splits = args.calibration.load();
  const Dataset& split = splits.train.size() > 0 ? splits.train : splits.test;
  if (split.size() == 0) throw input_error(fmt::format("--calibrate {}: the data has no samples", spec));
  const Dataset samples = split.first(std::min(args.calibrate_samples, split.size()));
  meta.calibration = ModelMetadata::Calibration{spec, samples.size()};
  return calibrate_packed(module, meta.packed, samples, args.calibration.preprocess(splits), 64);
}

// "static int8 steps from 512 samples of SPEC: 17 of 19 layers; ...": what --calibrate did. A layer
// without a step runs the exact float path (a convolution the int8 kernels do not take) or was not
// reached; either way no step of its own is used.
std::string describe_calibration(const ModelMetadata::Calibration& c, const std::vector<CalibratedLayer>& layers) {
  std::vector<std::string> without;
  for (const auto& l : layers)
    if (l.input_step == 0) without.push_back(l.name);
  return fmt::format("static int8 steps from {} samples of {}: {} of {} layers{}", c.samples, c.data,
                     layers.size() - without.size(), layers.size(),
                     without.empty() ? "" : fmt::format("; without (the float path, or not reached): {}",
                                                        fmt::join(without, ", ")));
}

void write_ttqz(const ExportArgs& args, const OpenedModel& model) {
  if (model.kind == ModelFileKind::Archive)
    throw usage_error(fmt::format("{} is already a .ttqz archive; choose --format ttq or torchscript", args.input));
  if (!model.metadata || model.metadata->layers.empty())
    throw input_error(fmt::format("{} has no TTQ metadata: run 'ttq quantize' (or finetune) first", args.input));
  write_archive(model.module, *model.metadata, args.options, args.output);

  // Report from the file itself: this also re-validates what was just written.
  const auto bytes = read_file(args.output);
  print_archive(parse_archive(bytes, args.output), args.output, args.json,
                ExportInput{args.input, std::filesystem::file_size(args.input)});
}

void write_torchscript(const ExportArgs& args, OpenedModel model) {
  if (args.format != ExportFormat::Ttq) model.metadata.reset();
  save_torchscript(model.module, model.metadata, args.output);
  const auto bytes = std::filesystem::file_size(args.output);
  if (args.json) {
    const nlohmann::json doc = {{"input", args.input}, {"output", args.output}, {"format", choice_name(args.format)},
                                {"output_bytes", bytes}, {"ttq_metadata", model.metadata.has_value()}};
    fmt::print("{}\n", doc.dump(2));
  } else {
    fmt::print("wrote {} ({}, {}{})\n", args.output, human_bytes(double(bytes)), "TorchScript",
               model.metadata ? " with TTQ metadata" : "");
  }
}

void write_packed(const ExportArgs& args, OpenedModel model) {
  if (!model.metadata || model.metadata->layers.empty())
    throw input_error(fmt::format("{} has no TTQ metadata: run 'ttq quantize' (or finetune) first", args.input));
  const std::string program = program_without_tensors(model.module);
  std::set<std::string> own;  // the model's tensors, which the way back restores
  for (const auto& t : module_tensors(model.module)) own.insert(t.name);
  ModelMetadata meta = *model.metadata;
  const PackReport report = pack_module(model.module, meta.layers, args.activations);
  std::vector<std::string> kept;
  for (const auto& f : report.kept_float) kept.push_back(fmt::format("{} ({})", f.name, f.use));
  if (report.packed.empty())
    throw input_error(fmt::format("{}: no ternary layer is a linear or conv2d weight that can run packed; float: {}",
                                  args.input, fmt::join(kept, ", ")));
  meta.packed = report.packed;
  meta.activations = choice_name(args.activations);
  const bool calibrated = !args.calibration.data.empty();
  const auto steps = calibrated ? calibrate(args, model.module, meta) : std::vector<CalibratedLayer>{};
  const auto residual = args.activations == Activations::Int8 ? fuse_residual_adds(model.module) : std::vector<std::string>{};
  const auto chained = calibrated ? chain_int8_layers(model.module) : std::vector<std::string>{};
  const auto unread = set_aside_unread(model.module, own);
  save_torchscript(model.module, meta, args.output, program, unread);
  const auto bytes = std::filesystem::file_size(args.output);
  if (args.json) {
    nlohmann::json float_layers = nlohmann::json::array();
    for (const auto& f : report.kept_float) float_layers.push_back({{"name", f.name}, {"use", f.use}});
    nlohmann::json doc{{"input", args.input}, {"output", args.output}, {"format", "packed"},
                       {"output_bytes", bytes}, {"activations", meta.activations},
                       {"packed", report.packed}, {"float", float_layers}, {"folded", report.folded},
                       {"eight_bit", report.eight_bit},
                       {"chained", chained}, {"residual_fused", residual}};
    if (meta.calibration) {
      nlohmann::json layers = nlohmann::json::array();
      for (const auto& l : steps) layers.push_back({{"name", l.name}, {"input_step", l.input_step}});
      doc["calibration"] = {{"data", meta.calibration->data}, {"samples", meta.calibration->samples},
                            {"layers", layers}};
    }
    fmt::print("{}\n", doc.dump(2));
    return;
  }
  fmt::print("wrote {} ({}, packed TorchScript: {} of {} ternary layers run packed, {} activations{}{}{}{}{})\n",
             args.output, human_bytes(double(bytes)), report.packed.size(), meta.layers.size(), meta.activations,
             report.folded.empty() ? "" : fmt::format("; BatchNorm folded into {}", report.folded.size()),
             report.eight_bit.empty() ? "" : fmt::format("; {} float linear layers in 8 bits", report.eight_bit.size()),
             chained.empty() ? "" : fmt::format("; {} layers hand the next their int8 input", chained.size()),
             residual.empty() ? "" : fmt::format("; {} residual adds fused into their convolution", residual.size()),
             kept.empty() ? "" : fmt::format("; float: {}", fmt::join(kept, ", ")));
  if (meta.calibration) fmt::print("{}\n", describe_calibration(*meta.calibration, steps));
}

void run_export(ExportArgs& args) {
  refuse_same_file(args.input, args.output);
  // Without --format the output is ttqz or ttq, never packed: refused before the model loads.
  if (args.activations_option->count() && (!args.format_option->count() || args.format != ExportFormat::Packed))
    throw usage_error("--activations applies to --format packed only");
  const bool calibrated = !args.calibration.data.empty();
  if (calibrated && (args.format != ExportFormat::Packed || args.activations != Activations::Int8))
    throw usage_error("--calibrate applies to --format packed --activations int8 only");
  if (args.calibrate_samples_option->count() && !calibrated) throw usage_error("--calibrate-samples needs --calibrate");
  const auto data_flags = args.calibration.given();
  if (!data_flags.empty() && !calibrated) throw usage_error(fmt::format("{} needs --calibrate", data_flags[0]));
  OpenedModel model = open_model(args.input);
  if (!args.format_option->count())
    args.format = model.kind == ModelFileKind::Archive ? ExportFormat::Ttq : ExportFormat::Ttqz;
  if (args.format == ExportFormat::Ttqz)
    write_ttqz(args, model);
  else if (args.format == ExportFormat::Packed)
    write_packed(args, std::move(model));
  else
    write_torchscript(args, std::move(model));
}

}  // namespace

Command register_export(CLI::App& app) {
  auto args = std::make_shared<ExportArgs>();
  auto* sub = app.add_subcommand(
      "export", "Write a compressed .ttqz archive, or restore TorchScript from one");
  sub->add_option("IN", args->input, "quantized TorchScript model (from quantize/finetune) or .ttqz archive")
      ->required()
      ->type_name("FILE");
  sub->add_option("-o,--output", args->output, "the file to write")->required()->type_name("FILE");
  args->format_option = add_choice_option(sub, "--format", args->format, "output format")->default_str("");
  sub->add_option("--level", args->options.level, "zstd level for the program and full-precision tensors")
      ->check(CLI::Range(1, 22))
      ->type_name("N")
      ->capture_default_str();
  add_choice_option(sub, "--fp-dtype", args->options.fp_dtype, "storage of float32 full-precision tensors in the archive");
  args->activations_option =
      add_choice_option(sub, "--activations", args->activations, "packed models: what linear and convolution layers compute on");
  sub->add_option("--calibrate", args->calibration.data,
                  "packed int8 models: static int8 steps measured on this dataset's samples (KIND:PATH, as --data "
                  "takes) instead of each call's own")
      ->type_name("SPEC");
  args->calibrate_samples_option =
      sub->add_option("--calibrate-samples", args->calibrate_samples, "--calibrate: the first N training samples")
          ->check(CLI::PositiveNumber)
          ->type_name("N")
          ->capture_default_str();
  args->calibration.add_to(sub, DataUse::Calibrate);
  sub->add_flag("--json", args->json, "print the summary as JSON on stdout");
  return {sub, [args] { run_export(*args); }};
}

}  // namespace ttq::cli
