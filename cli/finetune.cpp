// ttq finetune MODEL -o OUT: TTQ training on real data (man/ttq-finetune.1). run_finetune reads as
// the pipeline it is (as mold's main): each step is a named function below, with its reason.
#include <unistd.h>

#include <torch/cuda.h>

#include <atomic>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/progress.h"
#include "core/distributed.h"
#include "core/error.h"
#include "formats/atomic_file.h"
#include "formats/checkpoint.h"
#include "formats/json.h"
#include "formats/model_file.h"
#include "formats/run_log.h"
#include "formats/torchscript.h"

namespace ttq::cli {
namespace {

std::atomic<bool> g_stop{false};

// First SIGINT/SIGTERM: finish the step (and a checkpoint being written), checkpoint, exit 130.
// A second one ends at once.
extern "C" void request_stop(int sig) {
  g_stop.store(true);
  std::signal(sig, interrupt_now);
}

enum class Device { Cpu, Cuda };
constexpr Choice<Device> kDevices[] = {{"cpu", Device::Cpu, "the CPU"}, {"cuda", Device::Cuda, "an NVIDIA GPU"}};
constexpr const auto& choices(Device) { return kDevices; }

struct FinetuneArgs {
  std::string model, output, log, checkpoint_dir;
  Device device = Device::Cpu;
  Precision precision = Precision::Fp32;  // as asked; train.precision holds it decided
  bool json = false, resume = false, progress = false, no_progress = false, no_scale_decay = false;
  int64_t log_every = 0, checkpoint_every = 0;
  int dist_timeout = static_cast<int>(DistOptions{}.timeout.count());
  DistOptions dist;
  TrainOptions train;
  QuantizeFlags quant;
  DataFlags data;
  Budget budget;
  // With a budget: what it chose, on which validation samples (checked again after training).
  std::optional<BudgetChoice> budget_choice;
  Dataset budget_held_out;

  bool writer() const { return dist.rank == 0; }  // rank 0 alone writes files and prints
  // As asked (what --resume compares), or as the trainer decided its `auto` values (what is logged).
  RunOptions run_options() const { return {train, data.threads, data.subset, dist.world_size}; }
  RunOptions run_options(const Trainer& t) const { return {t.options(), data.threads, data.subset, dist.world_size}; }
  nlohmann::json identity() const { return resume_identity(run_options(), data.spec()); }
};

// Refused before any work: this build cannot train elsewhere than on the CPU.
void check_device(Device device) {
  if (device == Device::Cpu) return;
  if (!torch::cuda::is_available())
    throw usage_error("--device cuda: this ttq's LibTorch has no CUDA (or no GPU is visible); use --device cpu");
  throw usage_error("--device cuda: training on CUDA is not supported by this ttq yet; use --device cpu");
}

// Outputs checked before long work: a typo must not cost a training run.
void check_outputs(const FinetuneArgs& a) {
  refuse_overlaps({{"the model", a.model}, {"--teacher", a.train.objective.teacher}},
                  {{"-o", a.output}, {"--log", a.log}, {"--checkpoint-dir", a.checkpoint_dir}});
  if (a.writer()) check_writable(a.output);
  if (a.resume && a.checkpoint_dir.empty()) throw usage_error("--resume needs --checkpoint-dir");
  if (a.checkpoint_every > 0 && a.checkpoint_dir.empty()) throw usage_error("--checkpoint-every needs --checkpoint-dir");
}

// One run per checkpoint folder: a second one would resume from, or overwrite, the first's
// checkpoints. (The run log is locked when it is opened.)
std::unique_ptr<FileLock> lock_checkpoints(const FinetuneArgs& a) {
  if (a.checkpoint_dir.empty() || !a.writer()) return nullptr;
  std::error_code ec;
  std::filesystem::create_directories(a.checkpoint_dir, ec);
  if (ec) throw input_error(fmt::format("cannot create checkpoint folder {}: {}", a.checkpoint_dir, ec.message()));
  check_writable(std::filesystem::path(a.checkpoint_dir) / "checkpoint");
  return std::make_unique<FileLock>(a.checkpoint_dir, "--checkpoint-dir " + a.checkpoint_dir);
}

// Joins the data-parallel group when one is asked for (flags or torchrun's environment).
std::shared_ptr<Communicator> connect_ranks(FinetuneArgs& a) {
  a.dist.timeout = std::chrono::seconds(a.dist_timeout);
  if (!a.dist.distributed() && a.dist.rank == 0) return nullptr;
  auto comm = Communicator::connect(a.dist);
  if (!a.writer()) spdlog::set_level(spdlog::level::warn);
  spdlog::info("data-parallel over {} ranks (Gloo, rendezvous at {}:{}): {} samples per rank, {} per step",
               a.dist.world_size, a.dist.master_addr, a.dist.master_port, a.train.batch_size,
               a.train.batch_size * a.dist.world_size);
  return comm;
}

// The data, the model and its layers: the trainer checks that they fit together before training.
// With a budget, the layers are chosen first, measured on the validation samples.
std::unique_ptr<Trainer> load_trainer(FinetuneArgs& a, std::shared_ptr<Communicator> comm) {
  DataSplits data = a.data.load();
  a.train.preprocess = a.data.preprocess(data);
  auto teacher = load_teacher(a.train.objective, a.model);
  torch::jit::Module module = open_model(a.model).module;
  if (a.budget.active()) {
    if (a.train.fp) throw usage_error("--fp trains the model as given: a budget chooses ternary layers");
    a.budget_held_out = budget_samples(data.test, a.budget);
    a.budget_choice = choose_layers(module, a.budget_held_out, a.train.preprocess, a.data.spec(), a.train.quant,
                                    a.budget, a.train.objective.output, comm.get());
  }
  return std::make_unique<Trainer>(module, a.train, std::move(data), std::move(comm), std::move(teacher));
}

// Continues from the newest checkpoint: the run then repeats the uninterrupted one exactly.
void resume(Trainer& trainer, const FinetuneArgs& a, Communicator* comm) {
  if (!a.resume) return;
  const std::string used = resume_from_checkpoints(trainer, a.checkpoint_dir, a.identity());
  if (comm) comm->check_same({{"the step of the newest checkpoint in --checkpoint-dir", trainer.position().global_step}});
  spdlog::info("resuming from {} (epoch {}, step {})", used, trainer.position().epoch + 1,
               trainer.position().global_step);
}

bool shows_progress(const FinetuneArgs& a) {
  return a.writer() && !quiet() && (a.progress || (!a.no_progress && isatty(STDERR_FILENO)));
}

// From here on the first SIGINT/SIGTERM stops at the next step (request_stop).
void catch_stop_signals() {
  g_stop.store(false);
  std::signal(SIGINT, request_stop);
  std::signal(SIGTERM, request_stop);
}

// --lr auto's probe (not on a resumed run: its checkpoint holds the rate), then the recipe printed.
LrProbe choose_lr(Trainer& trainer, const FinetuneArgs& a) {
  LrProbe probe;
  {
    Progress progress(shows_progress(a));
    try {
      probe = trainer.probe_lr([&](const LrProbeStep& s) { progress.update(s); }, g_stop);
    } catch (const Interrupted&) {
      throw Error(ErrorKind::Interrupted, "interrupted while --lr auto probed the rate, before the first step");
    }
  }
  if (!trainer.recipe().empty() && a.writer()) spdlog::info("{}", trainer.recipe());
  return probe;
}

// The run log starts with the run, the probe and its layers before the first step; a resumed run appends.
std::unique_ptr<RunLog> open_run_log(const FinetuneArgs& a, Trainer& trainer, const LrProbe& probe) {
  if (a.log.empty() || !a.writer()) return nullptr;
  auto log = std::make_unique<RunLog>(a.log, a.resume);
  if (!a.resume) {
    log->run(a.model, a.data.spec(), a.run_options(trainer), trainer.steps_per_epoch(), trainer.recipe());
    if (!probe.lrs.empty()) log->probe(probe);
    log->init(trainer.snapshot());
  }
  return log;
}

// After training: which state OUT holds, and a warning when training did not beat its start.
void report_kept_state(const Trainer& trainer, const char* metric, std::optional<double> last_score) {
  const TrainPosition& p = trainer.position();
  const std::string start = describe_score(metric, p.start_score);
  if (trainer.kept_epoch() < 0) {
    if (last_score && *last_score < p.start_score)
      spdlog::warn("the last state's {} is below the start's {}; --keep best would have kept the start",
                   describe_score(metric, *last_score), start);
  } else if (p.best_epoch == 0) {
    spdlog::warn("no epoch beat the start's {}: the output is the start ({}); try more --epochs or another --lr",
                 start, trainer.options().fp ? "the model as given" : "the one-shot ternary model");
  } else if (last_score && p.best_score > *last_score) {
    spdlog::info("kept epoch {} ({}, the best; the last: {})", p.best_epoch, describe_score(metric, p.best_score),
                 describe_score(metric, *last_score));
  }
}

// The sentence that ends a run stopped by a divergence: what happened, and what OUT then holds.
std::string stopped_message(const Trainer& trainer, const Diverged& diverged, const char* metric, const std::string& out) {
  const TrainPosition& p = trainer.position();
  return fmt::format("{}; stopped: {} holds the best state so far, {} ({})", diverged.what(), out,
                     p.best_epoch == 0 ? std::string("the start") : fmt::format("the end of epoch {}", p.best_epoch),
                     describe_score(metric, p.best_score));
}

// Trains the remaining epochs, reporting on stderr and to the log; Ctrl-C checkpoints and exits 130.
// Returns why the run stopped early when it diverged (--on-divergence): OUT is still written.
std::optional<std::string> train(Trainer& trainer, const FinetuneArgs& a, RunLog* log) {
  Progress progress(shows_progress(a));
  int64_t total_steps = a.train.epochs * trainer.steps_per_epoch();
  if (a.train.max_steps > 0) total_steps = std::min(total_steps, a.train.max_steps);  // the ETA's end
  const char* metric = "top1";
  std::optional<double> last_score;  // of the last epoch this process ran
  TrainHooks hooks;
  hooks.on_step = [&](const StepProgress& p) { progress.update(p, a.train.epochs, total_steps); };
  hooks.log_every = a.log_every;
  hooks.checkpoint_every = a.checkpoint_every;
  if (log) hooks.on_log_step = [&](const StepProgress& p, const std::vector<LayerRecord>& l) { log->step(p, l); };
  hooks.on_epoch = [&](const EpochRecord& r) {
    progress.clear();
    spdlog::info("epoch {}/{}: train loss {:.4f}{}; val {}{}, {:.1f} s{}", r.epoch, a.train.epochs, r.train.loss,
                 r.train.has_labels() ? fmt::format(", top-1 {:.2f}%", 100 * r.train.top1) : "",
                 describe_metrics(r.val),
                 r.layers.empty() ? "" : fmt::format(", mean sparsity {:.3f}", r.mean_sparsity()), r.seconds,
                 r.loading.images_per_second > 0
                     ? fmt::format("; loader {:.0f} img/s, training waited on data {:.0f}% of the time",
                                   r.loading.images_per_second, 100 * r.loading.waiting)
                     : "");
    if (log) log->epoch(r);
    metric = validation_metric(r.val);
    last_score = validation_score(r.val);
  };
  hooks.on_start = [&](const Metrics& val) {
    progress.clear();
    spdlog::info("start ({}): val {}", a.train.fp ? "the model as given" : "one-shot ternary", describe_metrics(val));
    metric = validation_metric(val);
  };
  if (!a.checkpoint_dir.empty() && a.writer())
    hooks.save_checkpoint = [&, identity = a.identity()](const TrainPosition& p) {
      save_checkpoint(trainer, p, a.checkpoint_dir, identity);
    };

  try {
    trainer.run(hooks, g_stop);
  } catch (const Interrupted&) {
    progress.clear();
    throw Error(ErrorKind::Interrupted,
                a.checkpoint_dir.empty() ? "interrupted (no --checkpoint-dir: progress is lost)"
                                         : fmt::format("interrupted; continue with --resume --checkpoint-dir {}",
                                                       a.checkpoint_dir));
  } catch (const Diverged& diverged) {
    progress.clear();
    return stopped_message(trainer, diverged, metric, a.output);
  }
  if (a.writer()) report_kept_state(trainer, metric, last_score);
  return std::nullopt;
}

// The ternary model with its metadata and the run's summary, and the summary on stdout.
// The budget checked again on the samples it was chosen on: a miss is a warning.
void check_budget(Trainer& trainer, const FinetuneArgs& a, const std::vector<LayerRecord>& layers) {
  const BudgetChoice& c = *a.budget_choice;
  if (!std::isnan(a.budget.max_drop)) {
    torch::jit::Module fp = open_model(a.model).module;
    SensitivityOptions o;
    o.metric = c.metric;
    o.output = a.train.objective.output;
    const Measured m = measure_against(fp, trainer.module(), a.budget_held_out, a.train.preprocess, o);
    const std::string what = fmt::format("{}: after training, {} drops {} on the {} validation samples it was chosen on "
                                         "(one-shot: {})", c.budget, choice_name(c.metric), show_drop(m.drop),
                                         c.samples, show_drop(c.drop));
    if (m.drop > a.budget.max_drop)
      spdlog::warn("{}", what);
    else
      spdlog::info("{}", what);
    return;
  }
  const double ratio = inspect_module(trainer.module(), layers, a.train.quant).totals.ratio_entropy();
  if (ratio < a.budget.target_ratio)
    spdlog::warn("{}: after training the model is {:.2f}x smaller at the codes' entropy (one-shot: {:.2f}x)", c.budget,
                 ratio, c.ratio);
  else
    spdlog::info("{}: after training the model is {:.2f}x smaller at the codes' entropy", c.budget, ratio);
}

void write_outputs(Trainer& trainer, const FinetuneArgs& a, RunLog* log) {
  const Metrics final_metrics = trainer.evaluate();  // every rank takes part
  if (!a.writer()) return;
  ModelMetadata meta;
  meta.command = "finetune";
  meta.options = a.train.quant;
  meta.layers = trainer.finalize();
  meta.budget = a.budget_choice;
  if (a.budget_choice) check_budget(trainer, a, meta.layers);
  meta.run = RunSummary{a.data.spec(), a.run_options(trainer), trainer.kept_step(), final_metrics,
                        trainer.recipe(), trainer.kept_epoch(), trainer.position().recoveries};
  save_torchscript(trainer.module(), a.train.fp ? std::nullopt : std::optional<ModelMetadata>(meta), a.output);
  spdlog::info("wrote {}", a.output);
  if (log) log->end(*meta.run);

  if (a.json) {
    nlohmann::json layers = nlohmann::json::array();
    for (const auto& l : meta.layers)
      layers.push_back({{"name", l.name}, {"wp", l.wp}, {"wn", l.wn}, {"delta", l.delta},
                        {"sparsity", l.counts.sparsity()}});
    fmt::print("{}\n", nlohmann::json{{"output", a.output}, {"run", *meta.run}, {"layers", layers}}.dump(2));
  } else {
    fmt::print("{}: val {} after {} steps ({} ternary layer{})\n", a.output, describe_metrics(final_metrics),
               trainer.kept_step(), meta.layers.size(), meta.layers.size() == 1 ? "" : "s");
  }
}

void run_finetune(FinetuneArgs& a) {
  check_device(a.device);
  a.quant.resolve();
  a.train.scale_decay = !a.no_scale_decay;
  check_outputs(a);
  const auto checkpoints_lock = lock_checkpoints(a);
  const auto comm = connect_ranks(a);
  a.train.precision = decided_precision(a.precision);
  const auto trainer = load_trainer(a, comm);
  resume(*trainer, a, comm.get());
  catch_stop_signals();
  const LrProbe probe = choose_lr(*trainer, a);
  const auto log = open_run_log(a, *trainer, probe);
  const auto stopped = train(*trainer, a, log.get());
  write_outputs(*trainer, a, log.get());
  if (stopped) throw runtime_error(*stopped);
}

// A rank or world size from a flag or from torchrun's variable: the same check for both.
CLI::Validator rank_number(const char* variable) {
  return CLI::Validator(
      [variable](std::string& v) -> std::string {
        const auto n = v.find_first_not_of("0123456789");
        if (v.empty() || n != std::string::npos || v.size() > 9)
          return fmt::format("{} is not a non-negative integer (from the flag or ${})", v, variable);
        return "";
      },
      "", "rank number");
}

// An option that torchrun's variable can give. CLI11 2.4 (Debian 13) reads the variables of an option
// group only when one of its options is on the command line, so these are the subcommand's own,
// under a heading; and it drops a variable's value that fails the option's checks, where 2.1
// (Debian 12) reports it, so check_environment gives such a value to the option as if typed.
template <class T>
CLI::Option* add_rank_option(CLI::App* sub, const std::string& name, T& target, const std::string& help,
                             const char* variable, const char* type) {
  return sub->add_option(name, target, help)->envname(variable)->type_name(type)->capture_default_str()->group(
      "Distributed (data-parallel training on c10d; see 'Distributed' in man ttq-finetune)");
}

// A RANK of "one" is a usage error on every CLI11, not a second rank 0.
void check_environment(const std::vector<CLI::Option*>& options) {
  for (CLI::Option* option : options) {
    const char* value = std::getenv(option->get_envname().c_str());
    if (option->count() > 0 || !value || !*value) continue;
    option->add_result(value);
    option->run_callback();  // its checks throw CLI11's ValidationError, a usage error
  }
}

void add_distributed_options(CLI::App* sub, FinetuneArgs& a) {
  std::vector<CLI::Option*> from_environment{
      add_rank_option(sub, "--rank", a.dist.rank, "this process's rank, 0..world-1", "RANK", "R")
          ->check(rank_number("RANK")),
      add_rank_option(sub, "--world-size", a.dist.world_size, "number of processes", "WORLD_SIZE", "N")
          ->check(rank_number("WORLD_SIZE"))
          ->check(CLI::PositiveNumber),
      add_rank_option(sub, "--master-addr", a.dist.master_addr, "address of rank 0", "MASTER_ADDR", "HOST"),
      add_rank_option(sub, "--master-port", a.dist.master_port, "TCP port of rank 0's store", "MASTER_PORT", "PORT")
          ->check(rank_number("MASTER_PORT"))
          ->check(CLI::Range(1, 65535))};
  const std::string heading = from_environment.front()->get_group();
  add_choice_option(sub, "--dist-backend", a.dist.backend, "collective backend")->group(heading);
  sub->add_option("--dist-timeout", a.dist_timeout, "seconds to wait for the other ranks before failing")
      ->type_name("S")
      ->check(CLI::PositiveNumber)
      ->capture_default_str()
      ->group(heading);
  sub->parse_complete_callback([from_environment] { check_environment(from_environment); });
}

}  // namespace

Command register_finetune(CLI::App& app) {
  auto a = std::make_shared<FinetuneArgs>();
  TrainOptions& t = a->train;
  auto* sub = app.add_subcommand("finetune", "TTQ training of a TorchScript model on real data: labels, a teacher, or both");
  sub->add_option("MODEL", a->model, "TorchScript model (full precision, or a quantize/finetune output)")
      ->required()
      ->type_name("FILE");
  sub->add_option("-o,--output", a->output, "where to write the trained ternary TorchScript model")
      ->required()
      ->type_name("FILE");
  a->data.add_to(sub, DataUse::Finetune);
  sub->add_option("--epochs", t.epochs, "epochs to train")->capture_default_str()->check(CLI::PositiveNumber);
  sub->add_option("--max-steps", t.max_steps, "stop after N steps in all (smoke runs); the schedule ignores it")
      ->type_name("N")
      ->check(CLI::NonNegativeNumber);
  sub->add_option("--batch-size", t.batch_size, "samples per step")->capture_default_str()->check(CLI::PositiveNumber);
  add_choice_option(sub, "--optimizer", t.optimizer, "optimizer of weights and scales");
  // "auto" is 0 in TrainOptions, which the Trainer decides; a number must be positive.
  sub->add_option_function<std::string>("--lr", [&t](const std::string& v) { t.lr = v == "auto" ? 0.0 : std::stod(v); },
                                         "learning rate of weights and scales; auto: measured by a range test before the first step")
      ->type_name("RATE|auto")
      ->default_str("auto")
      ->check(CLI::Validator([](std::string& v) { return v == "auto" ? "" : CLI::PositiveNumber(v); }, "", "lr"));
  sub->add_option("--momentum", t.momentum, "SGD momentum")->capture_default_str();
  sub->add_option("--weight-decay", t.weight_decay, "L2 decay of latent weights, other parameters and Wp/Wn")
      ->capture_default_str();
  sub->add_flag("--no-scale-decay", a->no_scale_decay, "no weight decay on Wp/Wn");
  sub->add_option("--scale-lr-mult", t.scale_lr_mult, "learning-rate multiplier for Wp/Wn")->capture_default_str();
  add_choice_option(sub, "--schedule", t.schedule, "learning-rate schedule");
  add_choice_option(sub, "--keep", t.keep, "which state OUT holds, judged on validation");
  add_choice_option(sub, "--on-divergence", t.on_divergence,
                    "what a diverging run does (a non-finite or exploding loss, validation below the start)");
  sub->add_option("--milestones", t.milestones, "epochs at which the step schedule multiplies lr by --gamma")
      ->type_name("EPOCH")
      ->delimiter(',');
  sub->add_option("--gamma", t.gamma, "factor of the step schedule")->capture_default_str();
  a->quant.add_to(sub, &t.quant);
  add_budget_options(sub, a->budget);
  sub->add_option("--seed", t.seed, "seed of initialization, sample order and augmentation")->capture_default_str();
  add_choice_option(sub, "--device", a->device, "where to train");
  add_precision_options(sub, a->precision, t.memory_format);
  add_objective_options(sub, t.objective, true);
  sub->add_flag("--fp", t.fp, "plain full-precision fine-tuning with the same loop (baselines)");
  sub->add_option("--log", a->log, "write one JSON record per epoch (and per --log-every steps) to FILE")
      ->type_name("FILE.jsonl");
  sub->add_option("--log-every", a->log_every, "also log every N steps")->type_name("N")->check(CLI::NonNegativeNumber);
  sub->add_option("--checkpoint-dir", a->checkpoint_dir, "write a checkpoint there after every epoch and on SIGINT")
      ->type_name("DIR");
  sub->add_option("--checkpoint-every", a->checkpoint_every, "also write a checkpoint every N steps (exact resume "
                  "mid-epoch; a crash loses at most N steps)")
      ->type_name("N")
      ->check(CLI::NonNegativeNumber);
  sub->add_flag("--resume", a->resume, "continue from the newest usable checkpoint in --checkpoint-dir");
  auto* p = sub->add_flag("--progress", a->progress, "show the progress line even when stderr is not a terminal");
  sub->add_flag("--no-progress", a->no_progress, "never show the progress line")->excludes(p);
  sub->add_flag("--json", a->json, "print the final summary as JSON on stdout");
  add_distributed_options(sub, *a);
  return {sub, [a] { run_finetune(*a); }};
}

}  // namespace ttq::cli
