// ttq quantize MODEL -o OUT: one-shot ternarization (man/ttq-quantize.1).
#include <memory>

#include "cli/commands.h"
#include "formats/atomic_file.h"
#include "formats/model_file.h"
#include "formats/torchscript.h"

namespace ttq::cli {
namespace {

struct QuantizeArgs {
  std::string model;
  std::string output;
  bool json = false;
  QuantizeFlags flags;
  DataFlags data;  // a budget's held-out samples
  Budget budget;
};

void run_quantize(QuantizeArgs& args) {
  QuantizeOptions options = args.flags.resolve();
  refuse_same_file(args.model, args.output);
  check_writable(args.output);  // before a budget's measuring
  OpenedModel loaded = open_model(args.model);
  if (loaded.metadata)
    spdlog::warn("{} was already written by ttq {}; quantizing its current weights again",
                 args.model, loaded.metadata->command);

  ModelMetadata meta;
  meta.command = "quantize";
  meta.budget = apply_budget(loaded.module, args.data, options, args.budget);
  meta.options = options;
  meta.layers = quantize_module(loaded.module, options);
  save_torchscript(loaded.module, meta, args.output);
  spdlog::info("wrote {} ({} ternary layers)", args.output, meta.layers.size());
  print_report(inspect_module(loaded.module, meta.layers, options), meta, args.model, args.json, args.output);
}

}  // namespace

Command register_quantize(CLI::App& app) {
  auto args = std::make_shared<QuantizeArgs>();
  auto* sub = app.add_subcommand("quantize", "Ternarize a TorchScript model's weights to {-Wn, 0, +Wp}");
  sub->add_option("MODEL", args->model, "TorchScript model to quantize")->required()->type_name("FILE");
  sub->add_option("-o,--output", args->output, "where to write the quantized TorchScript model")
      ->required()
      ->type_name("FILE");
  args->flags.add_to(sub);
  add_budget_options(sub, args->budget);
  args->data.add_to(sub, DataUse::Eval);
  sub->add_flag("--json", args->json, "print the summary as JSON on stdout");
  return {sub, [args] { run_quantize(*args); }};
}

}  // namespace ttq::cli
