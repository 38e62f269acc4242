// Benchmark of the training step (scripts/bench_train.sh): the TTQ step against the FP step of the
// same model in the same binary, alternated to cancel drift, printed as a ratio.
// Usage: ttq_bench_train MODEL.pt STEPS THREADS BATCH [fp32|bf16 [auto|contiguous|channels-last]]
#include <ATen/Parallel.h>

#include <chrono>

#include "core/train.h"
#include "core/util.h"
#include "formats/torchscript.h"
#include "plugins/dataset.h"

using namespace ttq;
using Clock = std::chrono::steady_clock;

namespace {

// Milliseconds per step over `steps` steps after 5 warm-up steps (data loading and the final
// evaluation are outside the timed span).
double ms_per_step(const std::string& model, const DataSplits& data, bool fp, int64_t steps, int64_t batch,
                   Precision precision, MemoryFormat memory_format) {
  TrainOptions o;
  o.epochs = 1000;
  o.max_steps = steps + 5;
  o.batch_size = batch;
  o.fp = fp;
  o.precision = precision;
  o.memory_format = memory_format;
  o.quant.init = ScaleInit::Mean;
  o.preprocess = data.defaults;
  Trainer trainer(load_torchscript(model).module, o, data);
  Clock::time_point start, end;
  TrainHooks hooks;
  hooks.on_step = [&](const StepProgress& p) {
    if (p.global_step == 5) start = Clock::now();
    if (p.global_step == steps + 5) end = Clock::now();
  };
  std::atomic<bool> stop{false};
  trainer.run(hooks, stop);
  return std::chrono::duration<double, std::milli>(end - start).count() / static_cast<double>(steps);
}

}  // namespace

int main(int argc, char** argv) {
  const auto precision = argc >= 6 ? parse_choice<Precision>(argv[5]) : Precision::Fp32;
  const auto memory_format = argc >= 7 ? parse_choice<MemoryFormat>(argv[6]) : MemoryFormat::Auto;
  if (argc < 5 || argc > 7 || !precision || *precision == Precision::Auto || !memory_format) {
    fmt::print(stderr, "usage: ttq_bench_train MODEL.pt STEPS THREADS BATCH [fp32|bf16 [auto|contiguous|channels-last]]\n");
    return 2;
  }
  const std::string model = argv[1];
  const int64_t steps = std::stoll(argv[2]), batch = std::stoll(argv[4]);
  at::set_num_threads(std::stoi(argv[3]));
  keep_freed_memory_for_reuse();  // as ttq's main does, so the figures are the CLI's
  spdlog::set_level(spdlog::level::err);  // the trainer's warnings would mix into the figures on stdout
  DataSplits data = load_dataset(default_dataset_spec());
  data.test = data.test.first(256);
  double fp = 1e30, ttq = 1e30;
  for (int round = 0; round < 2; ++round) {
    fp = std::min(fp, ms_per_step(model, data, true, steps, batch, *precision, *memory_format));
    ttq = std::min(ttq, ms_per_step(model, data, false, steps, batch, *precision, *memory_format));
  }
  fmt::print("{} ({}, {}): batch {}, {} thread(s): FP step {:.2f} ms, TTQ step {:.2f} ms, TTQ/FP = {:.3f}\n", model,
             choice_name(*precision), argc >= 7 ? argv[6] : "auto", batch, argv[3], fp, ttq, ttq / fp);
  fmt::print("ttq_ms_per_step={:.3f}\n", ttq);
}
