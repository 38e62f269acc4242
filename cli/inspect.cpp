// ttq inspect FILE: per-layer codes, scales and sizes (man/ttq-inspect.1).
#include <memory>

#include "cli/commands.h"
#include "core/error.h"
#include "core/util.h"
#include "formats/archive.h"
#include "formats/model_file.h"

namespace ttq::cli {
namespace {

struct InspectArgs {
  std::string file;
  bool json = false;
  QuantizeFlags flags;
  DataFlags data;  // a budget's held-out samples
  Budget budget;
};

void run_inspect(InspectArgs& args) {
  QuantizeOptions options = args.flags.resolve();
  // An archive is shown as stored (sections, coded sizes against the bound), not as a module.
  if (sniff_model_file(args.file) == ModelFileKind::Archive) {
    const auto bytes = read_file(args.file);
    print_archive(parse_archive(bytes, args.file), args.file, args.json);
    return;
  }
  OpenedModel loaded = open_model(args.file);
  const auto recorded = loaded.metadata ? std::optional(loaded.metadata->layers) : std::nullopt;
  // A budget is measured for a dry run only: a ternary model's layers are chosen already.
  if (args.budget.active() && (recorded || !inspect_module(loaded.module, recorded, options).dry_run))
    throw usage_error(fmt::format("{} has ternary layers already: a budget chooses the layers of a full-precision model",
                                  args.file));
  const auto budget = apply_budget(loaded.module, args.data, options, args.budget);
  const ModelReport report = inspect_module(loaded.module, recorded, options);
  if (report.dry_run)
    spdlog::info("{} has no ternary layer: showing what 'ttq quantize' would do with these flags", args.file);
  print_report(report, loaded.metadata, args.file, args.json, "", budget);
}

}  // namespace

Command register_inspect(CLI::App& app) {
  auto args = std::make_shared<InspectArgs>();
  auto* sub = app.add_subcommand(
      "inspect", "Show per-layer sparsity, scales, threshold, bits and sizes of a TorchScript model");
  sub->add_option("FILE", args->file, "TorchScript model (quantized or not) or .ttqz archive")->required()->type_name("FILE");
  sub->add_flag("--json", args->json, "print the report as one JSON document on stdout");
  args->flags.add_to(sub);
  add_budget_options(sub, args->budget);
  args->data.add_to(sub, DataUse::Eval);
  return {sub, [args] { run_inspect(*args); }};
}

}  // namespace ttq::cli
