// ttq export IN -o OUT: .ttqz archives and deployable TorchScript (man/ttq-export.1).
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "core/error.h"
#include "formats/archive.h"
#include "formats/atomic_file.h"
#include "formats/torchscript.h"

namespace ttq::cli {
namespace {

// Output formats; one table feeds the validator and the help.
struct FormatChoice {
  const char* name;
  const char* help;
};
constexpr FormatChoice kFormats[] = {
    {"ttqz", "compressed archive (default for TorchScript input)"},
    {"ttq", "TorchScript with the TTQ metadata, as quantize writes (default for .ttqz input)"},
    {"torchscript", "plain TorchScript without TTQ extras, for any LibTorch/PyTorch runtime"},
};

struct ExportArgs {
  std::string input;
  std::string output;
  std::string format;
  int level = 3;
  std::string fp_dtype = "fp32";
  bool json = false;
};

void write_ttqz(const ExportArgs& args) {
  if (is_archive(args.input))
    throw usage_error(fmt::format("{} is already a .ttqz archive; choose --format ttq or torchscript", args.input));
  const LoadedModel loaded = load_torchscript(args.input);
  if (!loaded.metadata || loaded.metadata->layers.empty())
    throw input_error(fmt::format("{} has no TTQ metadata: run 'ttq quantize' (or finetune) first", args.input));
  ExportOptions options;
  options.level = args.level;
  options.fp_dtype = fp_dtype_from_string(args.fp_dtype);
  write_archive(loaded.module, *loaded.metadata, options, args.output);

  // Report from the file itself: this also re-validates what was just written.
  const auto bytes = read_file(args.output);
  print_archive(parse_archive(bytes, args.output), args.output, args.json,
                ExportInput{args.input, std::filesystem::file_size(args.input)});
}

void write_torchscript(const ExportArgs& args, bool with_metadata) {
  RestoredModel model;
  if (is_archive(args.input)) {
    model = read_archive(args.input);
  } else {
    LoadedModel loaded = load_torchscript(args.input);
    model = {loaded.module, loaded.metadata};
  }
  if (!with_metadata) model.metadata.reset();
  save_torchscript(model.module, model.metadata, args.output);
  const auto bytes = std::filesystem::file_size(args.output);
  if (args.json) {
    const nlohmann::json doc = {{"input", args.input}, {"output", args.output}, {"format", args.format},
                                {"output_bytes", bytes}, {"ttq_metadata", model.metadata.has_value()}};
    fmt::print("{}\n", doc.dump(2));
  } else {
    fmt::print("wrote {} ({}, {}{})\n", args.output, human_bytes(double(bytes)), "TorchScript",
               model.metadata ? " with TTQ metadata" : "");
  }
}

void run_export(ExportArgs& args) {
  refuse_same_file(args.input, args.output);
  if (args.format.empty()) args.format = is_archive(args.input) ? "ttq" : "ttqz";
  if (args.format == "ttqz")
    write_ttqz(args);
  else
    write_torchscript(args, args.format == "ttq");
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
  std::vector<std::string> names;
  std::string help = "output format:";
  for (const auto& f : kFormats) {
    names.push_back(f.name);
    help += fmt::format(" '{}': {};", f.name, f.help);
  }
  help.back() = '.';
  sub->add_option("--format", args->format, help)->check(CLI::IsMember(names))->type_name("FORMAT");
  sub->add_option("--level", args->level, "zstd level for the program and full-precision tensors")
      ->check(CLI::Range(1, 22))
      ->type_name("N")
      ->capture_default_str();
  sub->add_option("--fp-dtype", args->fp_dtype,
                  "storage of float32 full-precision tensors in the archive: fp32 (exact), fp16, bf16")
      ->check(CLI::IsMember({"fp32", "fp16", "bf16"}))
      ->type_name("DTYPE")
      ->capture_default_str();
  sub->add_flag("--json", args->json, "print the summary as JSON on stdout");
  return {sub, [args] { run_export(*args); }};
}

}  // namespace ttq::cli
