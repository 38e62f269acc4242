// ttq eval MODEL: top-1/top-5 accuracy and loss on a dataset's test split (man/ttq-eval.1).
#include <memory>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "core/evaluate.h"
#include "formats/model_file.h"

namespace ttq::cli {
namespace {

struct EvalArgs {
  std::string model;
  int64_t batch_size = 256;
  bool json = false;
  DataFlags data;
};

void run_eval(EvalArgs& a) {
  const DataSplits data = a.data.load();
  torch::jit::Module module = open_model(a.model).module;
  const Metrics m = evaluate_module(module, data.test, a.data.preprocess(data), a.batch_size);
  if (a.json) {
    fmt::print("{}\n", nlohmann::json{{"model", a.model}, {"data", data.name}, {"samples", m.samples},
                                      {"top1", m.top1}, {"top5", m.top5}, {"loss", m.loss}}
                           .dump(2));
  } else {
    fmt::print("{}: top-1 {:.2f}%, top-5 {:.2f}%, loss {:.4f} on {} samples of {}\n", a.model, 100 * m.top1,
               100 * m.top5, m.loss, m.samples, data.name);
  }
}

}  // namespace

Command register_eval(CLI::App& app) {
  auto a = std::make_shared<EvalArgs>();
  auto* sub = app.add_subcommand("eval", "Top-1/top-5 accuracy and loss of a model on a dataset");
  sub->add_option("MODEL", a->model, "TorchScript model or .ttqz archive")->required()->type_name("FILE");
  a->data.add_to(sub, false);
  sub->add_option("--batch-size", a->batch_size, "samples per forward pass")->capture_default_str()->check(CLI::PositiveNumber);
  sub->add_flag("--json", a->json, "print the result as JSON on stdout");
  return {sub, [a] { run_eval(*a); }};
}

}  // namespace ttq::cli
