// ttq eval MODEL: accuracy and loss on a dataset's test split, and agreement with a teacher model
// (man/ttq-eval.1).
#include <memory>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "core/error.h"
#include "formats/json.h"
#include "formats/model_file.h"

namespace ttq::cli {
namespace {

struct EvalArgs {
  std::string model;
  int64_t batch_size = 256;
  Precision precision = Precision::Fp32;
  MemoryFormat memory_format = MemoryFormat::Auto;
  bool json = false;
  DataFlags data;
  ObjectiveOptions objective;
};

void run_eval(EvalArgs& a) {
  const OpenedModel opened = open_model(a.model, PackedAs::Stored);  // packed models run packed
  torch::jit::Module module = opened.module;
  const Precision precision = model_precision(a.precision, opened.packed(), a.model);
  const DataSplits data = a.data.load();
  const bool labeled = data.test.labeled();
  if (!labeled && a.objective.teacher.empty())
    throw usage_error(fmt::format("{} has no labels: compare with a teacher model (--teacher FILE)", a.data.spec()));
  a.objective.alpha = labeled ? 0 : 1;  // the loss shown is cross-entropy on labels
  const Objective objective(resolve(a.objective, labeled), load_teacher(a.objective, a.model));
  Preprocess pre = a.data.preprocess(data);
  pre.channels_last = uses_channels_last(a.memory_format, module);
  set_memory_format(module, pre.channels_last);
  const AutocastScope autocast(precision);
  const Metrics m = evaluate_module(module, data.test, pre, objective, a.batch_size);
  if (a.json) {
    nlohmann::json j{{"model", a.model}, {"data", a.data.spec()}, {"samples", m.samples}, {"precision", precision}};
    metrics_to_json(j, m, "", false);
    if (!labeled) j.erase("loss");
    fmt::print("{}\n", j.dump(2));
  } else {
    fmt::print("{}: {} on {} samples of {}\n", a.model, describe_metrics(m), m.samples, a.data.spec());
  }
}

}  // namespace

Command register_eval(CLI::App& app) {
  auto a = std::make_shared<EvalArgs>();
  auto* sub = app.add_subcommand("eval", "Accuracy and loss of a model on a dataset, and its agreement with a teacher");
  sub->add_option("MODEL", a->model, "TorchScript model or .ttqz archive")->required()->type_name("FILE");
  a->data.add_to(sub, DataUse::Eval);
  sub->add_option("--batch-size", a->batch_size, "samples per forward pass")->capture_default_str()->check(CLI::PositiveNumber);
  add_precision_options(sub, a->precision, a->memory_format);
  add_objective_options(sub, a->objective, false);
  sub->add_flag("--json", a->json, "print the result as JSON on stdout");
  return {sub, [a] { run_eval(*a); }};
}

}  // namespace ttq::cli
