// ttq finetune MODEL -o OUT: TTQ training on real data (man/ttq-finetune.1). Reads as a pipeline:
// load data → load model and select layers → resume → train epochs → write the model.
#include <unistd.h>

#include <torch/cuda.h>

#include <atomic>
#include <csignal>
#include <cstdlib>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/progress.h"
#include "core/distributed.h"
#include "core/error.h"
#include "formats/atomic_file.h"
#include "formats/checkpoint.h"
#include "formats/run_log.h"
#include "formats/torchscript.h"

namespace ttq::cli {
namespace {

std::atomic<bool> g_stop{false};

// First SIGINT/SIGTERM: finish the step, checkpoint, exit 130. A second one ends at once.
extern "C" void request_stop(int sig) {
  g_stop.store(true);
  std::signal(sig, SIG_DFL);
}

struct FinetuneArgs {
  std::string model, output, log, checkpoint_dir, device = "cpu";
  bool json = false, resume = false, progress = false, no_progress = false, no_scale_decay = false;
  int64_t log_every = 0;
  int dist_timeout = 120;
  DistOptions dist;
  TrainOptions train;
  QuantizeFlags quant;
  DataFlags data;
};

nlohmann::json options_json(const FinetuneArgs& a) {
  const TrainOptions& t = a.train;
  return {{"epochs", t.epochs}, {"max_steps", t.max_steps}, {"batch_size", t.batch_size},
          {"optimizer", t.optimizer}, {"lr", t.lr}, {"momentum", t.momentum}, {"weight_decay", t.weight_decay},
          {"scale_decay", t.scale_decay}, {"scale_lr_mult", t.scale_lr_mult}, {"schedule", t.schedule},
          {"milestones", t.milestones}, {"gamma", t.gamma}, {"seed", t.seed}, {"fp", t.fp},
          {"mode", to_string(t.quant.threshold.mode)}, {"threshold", t.quant.threshold.value},
          {"init", to_string(t.quant.init)}, {"threads", a.data.threads}, {"subset", a.data.subset},
          {"world_size", a.dist.world_size}};
}

// torchrun and Slurm wrappers announce the group in the environment; flags given win.
void read_dist_environment(CLI::App* sub, DistOptions& d) {
  const auto integer = [](const char* name, int& out) {
    const char* v = std::getenv(name);
    if (!v || !*v) return;
    char* end = nullptr;
    const long n = std::strtol(v, &end, 10);
    if (*end != '\0' || n < 0 || n > 1 << 30)
      throw usage_error(fmt::format("the environment variable {}={} is not a non-negative integer", name, v));
    out = static_cast<int>(n);
  };
  if (sub->count("--rank") == 0) integer("RANK", d.rank);
  if (sub->count("--world-size") == 0) integer("WORLD_SIZE", d.world_size);
  if (sub->count("--master-port") == 0) integer("MASTER_PORT", d.master_port);
  if (const char* v = std::getenv("MASTER_ADDR"); v && *v && sub->count("--master-addr") == 0) d.master_addr = v;
}

void check_device(const std::string& device) {
  if (device == "cpu") return;
  if (!torch::cuda::is_available())
    throw usage_error("--device cuda: this ttq's LibTorch has no CUDA (or no GPU is visible); use --device cpu");
  throw usage_error("--device cuda: training on CUDA is not supported by this ttq yet; use --device cpu");
}

void run_finetune(FinetuneArgs& a, CLI::App* sub) {
  check_device(a.device);
  a.train.quant = a.quant.resolve();
  a.train.scale_decay = !a.no_scale_decay;
  read_dist_environment(sub, a.dist);
  a.dist.timeout = std::chrono::seconds(a.dist_timeout);
  // Rank 0 alone writes the log, the checkpoints and the model, and prints; the others only train.
  const bool writer = a.dist.rank == 0;
  refuse_same_file(a.model, a.output);
  if (writer) check_writable(a.output);
  if (a.resume && a.checkpoint_dir.empty()) throw usage_error("--resume needs --checkpoint-dir");
  std::shared_ptr<Communicator> comm;
  if (a.dist.distributed() || a.dist.rank != 0) {
    comm = Communicator::connect(a.dist);
    if (!writer) spdlog::set_level(spdlog::level::warn);
    spdlog::info("data-parallel over {} ranks (Gloo, rendezvous at {}:{}): {} samples per rank, {} per step",
                 a.dist.world_size, a.dist.master_addr, a.dist.master_port, a.train.batch_size,
                 a.train.batch_size * a.dist.world_size);
  }

  DataSplits data = a.data.load();
  a.train.preprocess = a.data.preprocess(data);
  const std::string spec = data.name;
  LoadedModel loaded = load_torchscript(a.model);
  if (!a.train.fp && a.train.quant.init == ScaleInit::Ones && loaded.module.named_buffers(true).size() == 0)
    spdlog::warn("{} has no BatchNorm: with --init ones every ternary layer starts at scale 1, which such "
                 "models rarely survive; consider --init mean (and --scale-lr-mult 0.01 or --optimizer adam)",
                 a.model);
  Trainer trainer(loaded.module, a.train, std::move(data), comm);

  if (a.resume) {
    const auto newest = newest_checkpoint(a.checkpoint_dir);
    if (!newest) throw input_error(fmt::format("--resume: no checkpoint in {}", a.checkpoint_dir));
    load_checkpoint(trainer, *newest);
    if (comm) comm->check_same({{"the step of the newest checkpoint in --checkpoint-dir", trainer.position().global_step}});
    spdlog::info("resuming from {} (epoch {}, step {})", *newest, trainer.position().epoch + 1,
                 trainer.position().global_step);
  }
  std::unique_ptr<RunLog> log;
  if (!a.log.empty() && writer) {
    log = std::make_unique<RunLog>(a.log, a.resume);
    if (!a.resume) {
      log->run(a.model, spec, options_json(a).dump(), a.train.epochs, trainer.steps_per_epoch());
      log->init(trainer.snapshot());
    }
  }

  Progress progress(writer && (a.progress || (!a.no_progress && isatty(STDERR_FILENO))));
  const int64_t total_steps = a.train.epochs * trainer.steps_per_epoch();
  std::set<std::string> warned_negative;
  TrainHooks hooks;
  hooks.on_step = [&](const StepProgress& p) { progress.update(p, a.train.epochs, total_steps); };
  hooks.log_every = a.log_every;
  if (log) hooks.on_log_step = [&](const StepProgress& p, const std::vector<LayerSnapshot>& l) { log->step(p, l); };
  hooks.on_epoch = [&](const EpochRecord& r) {
    progress.clear();
    double sparsity = 0;
    for (const auto& l : r.layers) {
      sparsity += l.counts.sparsity() / static_cast<double>(r.layers.size());
      if ((l.wp < 0 || l.wn < 0) && warned_negative.insert(l.name).second)
        spdlog::warn("{}: a scale turned negative (Wp {:.4g}, Wn {:.4g}); it is kept, as in the authors' code",
                     l.name, l.wp, l.wn);
    }
    spdlog::info("epoch {}/{}: loss {:.4f}, train top-1 {:.2f}%, val top-1 {:.2f}% top-5 {:.2f}%{}, {:.1f} s",
                 r.epoch, a.train.epochs, r.train.loss, 100 * r.train.top1, 100 * r.val.top1, 100 * r.val.top5,
                 r.layers.empty() ? "" : fmt::format(", mean sparsity {:.3f}", sparsity), r.seconds);
    if (log) log->epoch(r);
  };
  if (!a.checkpoint_dir.empty() && writer)
    hooks.save_checkpoint = [&](const TrainPosition& p) { save_checkpoint(trainer, p, a.checkpoint_dir); };

  g_stop.store(false);
  std::signal(SIGINT, request_stop);
  std::signal(SIGTERM, request_stop);
  try {
    trainer.run(hooks, g_stop);
  } catch (const Interrupted&) {
    progress.clear();
    throw Error(ErrorKind::Interrupted,
                a.checkpoint_dir.empty() ? "interrupted (no --checkpoint-dir: progress is lost)"
                                         : fmt::format("interrupted; continue with --resume --checkpoint-dir {}",
                                                       a.checkpoint_dir));
  }
  progress.clear();

  const Metrics final_metrics = trainer.evaluate();
  if (!writer) return;
  ModelMetadata meta = trainer.finalize();
  const nlohmann::json run = {{"data", spec},
                              {"options", options_json(a)},
                              {"steps", trainer.position().global_step},
                              {"val_top1", final_metrics.top1},
                              {"val_top5", final_metrics.top5},
                              {"val_loss", final_metrics.loss}};
  meta.run_json = run.dump();
  save_torchscript(trainer.module(), a.train.fp ? std::nullopt : std::optional<ModelMetadata>(meta), a.output);
  spdlog::info("wrote {}", a.output);

  if (a.json) {
    nlohmann::json layers = nlohmann::json::array();
    for (const auto& l : meta.layers)
      layers.push_back({{"name", l.name}, {"wp", l.wp}, {"wn", l.wn}, {"delta", l.delta},
                        {"sparsity", l.counts.sparsity()}});
    fmt::print("{}\n", nlohmann::json{{"output", a.output}, {"run", run}, {"layers", layers}}.dump(2));
  } else {
    fmt::print("{}: val top-1 {:.2f}%, top-5 {:.2f}%, loss {:.4f} after {} steps ({} ternary layers)\n", a.output,
               100 * final_metrics.top1, 100 * final_metrics.top5, final_metrics.loss,
               trainer.position().global_step, meta.layers.size());
  }
}

}  // namespace

Command register_finetune(CLI::App& app) {
  auto a = std::make_shared<FinetuneArgs>();
  TrainOptions& t = a->train;
  auto* sub = app.add_subcommand("finetune", "TTQ training of a TorchScript classifier on real data");
  sub->add_option("MODEL", a->model, "TorchScript classifier (full precision, or a quantize/finetune output)")
      ->required()
      ->type_name("FILE");
  sub->add_option("-o,--output", a->output, "where to write the trained ternary TorchScript model")
      ->required()
      ->type_name("FILE");
  a->data.add_to(sub, true);
  sub->add_option("--epochs", t.epochs, "epochs to train")->capture_default_str()->check(CLI::PositiveNumber);
  sub->add_option("--max-steps", t.max_steps, "stop after N steps in all (smoke runs); the schedule ignores it")
      ->type_name("N")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--batch-size", t.batch_size, "samples per step")->capture_default_str()->check(CLI::PositiveNumber);
  sub->add_option("--optimizer", t.optimizer, "sgd or adam")->check(CLI::IsMember({"sgd", "adam"}))->capture_default_str();
  sub->add_option("--lr", t.lr, "learning rate of weights and scales")->capture_default_str()->check(CLI::PositiveNumber);
  sub->add_option("--momentum", t.momentum, "SGD momentum")->capture_default_str();
  sub->add_option("--weight-decay", t.weight_decay, "L2 decay of latent weights, other parameters and Wp/Wn")
      ->capture_default_str();
  sub->add_flag("--no-scale-decay", a->no_scale_decay, "no weight decay on Wp/Wn");
  sub->add_option("--scale-lr-mult", t.scale_lr_mult, "learning-rate multiplier for Wp/Wn")->capture_default_str();
  sub->add_option("--schedule", t.schedule, "cosine, step (with --milestones, --gamma) or constant")
      ->check(CLI::IsMember({"cosine", "step", "constant"}))
      ->capture_default_str();
  sub->add_option("--milestones", t.milestones, "epochs at which the step schedule multiplies lr by --gamma")
      ->type_name("EPOCH")
      ->delimiter(',');
  sub->add_option("--gamma", t.gamma, "factor of the step schedule")->capture_default_str();
  a->quant.add_to(sub, "ones");
  sub->add_option("--seed", t.seed, "seed of initialization, sample order and augmentation")->capture_default_str();
  sub->add_option("--device", a->device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}))->capture_default_str();
  sub->add_flag("--fp", t.fp, "plain full-precision fine-tuning with the same loop (baselines)");
  sub->add_option("--log", a->log, "write one JSON record per epoch (and per --log-every steps) to FILE")
      ->type_name("FILE.jsonl");
  sub->add_option("--log-every", a->log_every, "also log every N steps")->type_name("N")->check(CLI::NonNegativeNumber);
  sub->add_option("--checkpoint-dir", a->checkpoint_dir, "write a checkpoint there after every epoch and on SIGINT")
      ->type_name("DIR");
  sub->add_flag("--resume", a->resume, "continue from the newest checkpoint in --checkpoint-dir");
  auto* p = sub->add_flag("--progress", a->progress, "show the progress line even when stderr is not a terminal");
  sub->add_flag("--no-progress", a->no_progress, "never show the progress line")->excludes(p);
  sub->add_flag("--json", a->json, "print the final summary as JSON on stdout");
  auto* dist = sub->add_option_group("distributed", "data-parallel training on c10d (see 'Distributed' in man ttq-finetune)");
  dist->add_option("--rank", a->dist.rank, "this process's rank, 0..world-1 (default: $RANK, else 0)")
      ->type_name("R")
      ->check(CLI::NonNegativeNumber);
  dist->add_option("--world-size", a->dist.world_size, "number of processes (default: $WORLD_SIZE, else 1)")
      ->type_name("N")
      ->check(CLI::PositiveNumber);
  dist->add_option("--master-addr", a->dist.master_addr, "address of rank 0 (default: $MASTER_ADDR, else 127.0.0.1)")
      ->type_name("HOST");
  dist->add_option("--master-port", a->dist.master_port, "TCP port of rank 0's store (default: $MASTER_PORT, else 29500)")
      ->type_name("PORT")
      ->check(CLI::Range(1, 65535));
  dist->add_option("--dist-backend", a->dist.backend, "gloo (CPU), or nccl (needs a LibTorch with CUDA)")
      ->check(CLI::IsMember({"gloo", "nccl"}))
      ->capture_default_str();
  dist->add_option("--dist-timeout", a->dist_timeout, "seconds to wait for the other ranks before failing")
      ->type_name("S")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  return {sub, [a, sub] { run_finetune(*a, sub); }};
}

}  // namespace ttq::cli
