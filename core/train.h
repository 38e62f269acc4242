// TTQ training of a TorchScript model (the core of `finetune`): latent full-precision weights and
// per-layer Wp/Wn trained with the exact TTQ forward/backward (core/ternary.h) through the module's
// own forward, on class labels, a teacher's outputs, or both (core/objective.h). It reports
// through hooks and writes no files itself.
#pragma once
#include <torch/script.h>

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "core/data.h"
#include "core/objective.h"
#include "core/precision.h"
#include "core/prefetcher.h"
#include "core/quantize.h"

namespace ttq {
class Communicator;
}

namespace torch::optim {
class Optimizer;
}

namespace ttq {

enum class Optimizer { Auto, Sgd, Adam };
inline constexpr Choice<Optimizer> kOptimizers[] = {
    {"auto", Optimizer::Auto, "adam (ahead of sgd on every model family measured; see man ttq-finetune)"},
    {"sgd", Optimizer::Sgd, "SGD with --momentum (the paper's CIFAR recipe)"},
    {"adam", Optimizer::Adam, "Adam (the paper's ImageNet recipe)"}};
constexpr const auto& choices(Optimizer) { return kOptimizers; }

enum class Schedule { Cosine, Step, Constant };
inline constexpr Choice<Schedule> kSchedules[] = {{"cosine", Schedule::Cosine, "cosine decay to 0 over the run"},
                                                  {"step", Schedule::Step, "lr times --gamma at each of --milestones"},
                                                  {"constant", Schedule::Constant, "the same lr throughout"}};
constexpr const auto& choices(Schedule) { return kSchedules; }

enum class Keep { Best, Last };
inline constexpr Choice<Keep> kKeeps[] = {
    {"best", Keep::Best, "the state with the best validation metric: an epoch's end, or the start when none beats it"},
    {"last", Keep::Last, "the state at the end of the run"}};
constexpr const auto& choices(Keep) { return kKeeps; }

// What a run does when it diverges (a non-finite loss, a smoothed loss far above where it started,
// an epoch's validation well below the start's).
enum class OnDivergence { Recover, Stop, Continue };
inline constexpr Choice<OnDivergence> kOnDivergences[] = {
    {"recover", OnDivergence::Recover,
     "go back to the best state so far with a tenth of the rate, at most 3 times; then stop"},
    {"stop", OnDivergence::Stop, "stop at once: OUT holds the best state so far, exit 1"},
    {"continue", OnDivergence::Continue, "warn and train on (a step whose loss is not finite is skipped)"}};
constexpr const auto& choices(OnDivergence) { return kOnDivergences; }
inline constexpr int kMaxRecoveries = 3;
inline constexpr double kRecoveryLrFactor = 0.1;

// Every option of a run, with its default (the flags of `finetune` bind to these fields).
struct TrainOptions {
  int epochs = 10;
  int64_t max_steps = 0;  // stop after this many steps in total (0: no limit); the schedule ignores it
  int64_t batch_size = 128;
  Optimizer optimizer = Optimizer::Auto;  // decided by the Trainer from the model (recipe())
  double lr = 0;                          // 0: auto, the rate of the optimizer (auto_lr)
  double momentum = 0.9;
  double weight_decay = 2e-4;  // latent weights, other parameters and (unless !scale_decay) Wp/Wn
  bool scale_decay = true;
  double scale_lr_mult = 1.0;
  Schedule schedule = Schedule::Cosine;
  std::vector<int> milestones;  // epochs, for Schedule::Step
  double gamma = 0.1;
  uint64_t seed = 0;
  bool fp = false;  // plain full-precision fine-tuning with the same loop (baselines)
  Keep keep = Keep::Best;
  OnDivergence on_divergence = OnDivergence::Recover;
  QuantizeOptions quant{{}, ScaleInit::Auto, {}};  // ones after normalizations (the authors'), else mean
  ObjectiveOptions objective;
  Preprocess preprocess;
  Precision precision = Precision::Fp32;  // as resolved (never Auto): bf16 autocasts forward and loss
  MemoryFormat memory_format = MemoryFormat::Auto;  // the Trainer decides Auto (uses_channels_last)
};

// --lr auto: the rate each optimizer starts from (measured in the note of issue 24).
double auto_lr(Optimizer optimizer);

// The learning-rate multiplier at a step: cosine over all steps, step at milestones, or 1.
double lr_factor(const TrainOptions& options, int epoch, int64_t global_step, int64_t steps_per_epoch);

// One quantized layer while training.
struct TrainLayer {
  std::string name;
  torch::Tensor latent;  // full-precision weights, trained
  torch::Tensor wp, wn;  // scalars, trained
  ThresholdSpec threshold;
  ParameterSlot slot;    // where w_t goes in the module, resolved once
};

struct EpochRecord {
  int epoch = 0;  // 1-based, completed (or, when partial, stopped by --max-steps)
  bool partial = false;
  int64_t step = 0;
  double lr = 0;
  Metrics train, val;
  double seconds = 0;
  LoaderStats loading;
  std::vector<LayerRecord> layers;
  double mean_sparsity() const;  // over the layers; 0 without any
};

struct StepProgress {
  int epoch;  // 1-based, running
  int64_t step_in_epoch, steps_per_epoch, global_step;
  double loss, lr, samples_per_second;
  Metrics terms;  // the step's sums: cross-entropy and distillation terms (averaged() for means)
  LoaderStats loading;  // the running epoch's so far
};

// Everything that makes a run continue exactly: written to checkpoints, read on --resume.
struct TrainPosition {
  int epoch = 0;               // completed epochs
  int64_t step_in_epoch = 0;   // steps done in the running epoch
  int64_t global_step = 0;
  Metrics train;               // sums over the running epoch's steps so far
  // The validation score (validation_score) of the start, measured before the first step (the
  // one-shot ternary model, or the FP model with --fp), and of the state --keep best holds: the
  // epoch it ended (0: the start; -1: none measured yet).
  double start_score = 0, best_score = 0;
  int best_epoch = -1;
  int64_t best_step = 0;  // the global step of that state
  // The divergence watch: the loss the run started at (the smaller of the start's validation loss
  // and its first step's), the training loss's moving average (bias-corrected over `loss_steps`
  // steps since the start or the last recovery), and the recoveries so far (each cut the rate).
  double start_loss = 0, loss_average = 0;
  int64_t loss_steps = 0;
  int recoveries = 0;
};

// What the training loop tells its caller, and asks of it.
struct TrainHooks {
  std::function<void(const StepProgress&)> on_step;
  std::function<void(const StepProgress&, const std::vector<LayerRecord>&)> on_log_step;  // every log_every
  int64_t log_every = 0;
  std::function<void(const Metrics&)> on_start;  // the start's validation, before the first step
  std::function<void(const EpochRecord&)> on_epoch;
  std::function<void(const TrainPosition&)> save_checkpoint;  // after each epoch, on interrupt,
  int64_t checkpoint_every = 0;                               // and every N steps when N > 0
};

// --lr auto's probe (core/train_probe.cpp): one of its steps, and what it found.
struct LrProbeStep {
  int64_t step, steps;
  double lr, loss;  // the step's rate and the smoothed loss after it
};
struct LrProbe {
  std::vector<double> lrs, losses;  // per step run; empty when the probe did not run
  double lr = 0;                    // the chosen rate (0: none; the starting rate stays)
  double seconds = 0;
  std::string reason;  // how it was chosen, or why the probe did not run
};
// The rate a range test's smoothed losses point to.
double choose_probed_lr(const std::vector<double>& lrs, const std::vector<double>& smoothed);

// Thrown when an interrupt was requested (the caller exits 130).
struct Interrupted : std::runtime_error {
  Interrupted() : std::runtime_error("interrupted") {}
};

// Thrown when the run diverged and --on-divergence (or the last recovery) says stop; the module
// then holds the best state so far (the caller writes it and exits 1). what(): what happened.
struct Diverged : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class Trainer {
 public:
  // With `comm` (data-parallel, core/distributed.h), this process is one rank: --batch-size is per
  // rank; global batch k holds the samples a single process with batch world×batch would take, and
  // this rank takes its slice; gradients and the step's loss and hits are summed over the ranks
  // before each optimizer step; buffers (BatchNorm statistics) are rank 0's at each step, as in
  // PyTorch DDP; evaluation is split over the ranks.
  // `teacher`: the frozen model to distill from (options.objective.distilling()). The trainer's
  // options() are `options` with every `auto` decided.
  Trainer(torch::jit::Module module, const TrainOptions& options, DataSplits data,
          std::shared_ptr<Communicator> comm = nullptr, std::optional<torch::jit::Module> teacher = std::nullopt);
  ~Trainer();

  // --lr auto: runs the probe and trains at the rate it chose, before run() and before anything
  // reports the run's options; nothing but that choice changes. Does nothing when --lr was given,
  // on a resumed run (its checkpoint holds the chosen rate: use_lr) or a second time.
  LrProbe probe_lr(const std::function<void(const LrProbeStep&)>& on_step, const std::atomic<bool>& stop);
  int64_t lr_probe_steps() const;  // 0 when an epoch is too short for the probe
  void use_lr(double lr, const std::string& why);
  const std::string& lr_reason() const { return lr_reason_; }  // use_lr's `why` ("" before)
  // Runs the remaining epochs from `position()`. `stop` is polled after every step.
  void run(const TrainHooks& hooks, const std::atomic<bool>& stop);
  Metrics evaluate();

  // Writes the final ternary weights into the module (no autograd) and returns their records.
  std::vector<LayerRecord> finalize();
  torch::jit::Module& module() { return module_; }

  // For checkpoints: every tensor that defines the state, by name, and the position.
  std::vector<std::pair<std::string, torch::Tensor>> state_tensors();
  // The state_tensors() of position().best_epoch, copied: what --keep best writes and where a
  // divergence goes back to (empty when neither needs it: tracks_best()).
  std::vector<torch::Tensor>& best_tensors() { return best_tensors_; }
  bool tracks_best() const;
  void keep_current_as_best();  // copies the current state there
  // The epoch whose end the module holds after run() (0: the start), -1 when it is the last state.
  int kept_epoch() const { return ended_on_best_ ? position_.best_epoch : -1; }
  int64_t kept_step() const { return ended_on_best_ ? position_.best_step : position_.global_step; }
  torch::optim::Optimizer& optimizer();
  TrainPosition& position() { return position_; }
  const TrainPosition& position() const { return position_; }
  const std::vector<TrainLayer>& layers() const { return layers_; }
  int64_t steps_per_epoch() const;
  const TrainOptions& options() const { return options_; }  // with every auto decided
  // What --optimizer auto and --lr auto decided, and why ("" when both were given).
  std::string recipe() const;
  const DataSplits& data() const { return data_; }
  // Where each ternary layer stands now: Wp, Wn, and Δ and codes of its latent weights.
  std::vector<LayerRecord> snapshot() const;

 private:
  struct Batch {
    std::vector<torch::Tensor> inputs;
    torch::Tensor labels;  // undefined for unlabeled data
  };
  // Construction, in this order.
  void use_memory_format();
  void select_layers(const LayerPlan& plan);  // latent copies of the selected weights, scales from --init
  void decide_recipe();  // --optimizer auto, and --lr auto's starting rate (probe_lr() measures one)
  void build_optimizer();   // groups: latent weights, other parameters, scales (own lr and decay)
  void probe();             // fails before training on data the model cannot take
  void start_distributed(); // checks that the ranks agree, then gives every rank rank 0's state
  // One epoch: its step loop, then its record; and one step of it.
  // How an epoch ended: complete, cut by --max-steps, or sent back to the best state by a divergence.
  enum class EpochEnd { Complete, Partial, WentBack };
  EpochEnd run_epoch(int epoch, const TrainHooks& hooks, const std::atomic<bool>& stop);
  EpochEnd finish_epoch(int epoch, bool partial, double seconds, const DataLoading& loading, const TrainHooks& hooks);
  // In core/train_keep.cpp: the start, the best state, and divergence.
  void measure_start(const TrainHooks& hooks);  // the start's validation, once per run
  void consider(int epoch, const Metrics& val);  // is the state after `epoch` the best so far?
  void end_on_kept_state();                       // --keep best: the best state back in place
  void restore_best();
  // What shows the run diverging, as a sentence; empty when nothing does. watch_loss also moves
  // the loss's average; a non-finite loss never reaches it.
  std::optional<std::string> watch_loss(double loss, int epoch);
  std::optional<std::string> watch_validation(const Metrics& val, int epoch) const;
  // Does what --on-divergence says about `what` (`kind` names its cause, warned once each with
  // continue): true when the run went back to its best state; throws Diverged when it stops.
  bool handle_divergence(const std::string& kind, const std::string& what);
  double lr_scale() const;  // kRecoveryLrFactor to the power of the recoveries so far
  Batch next_batch(const torch::Tensor& order, int epoch, int64_t step) const;
  Metrics train_step(const Batch& batch);  // sums over this rank's batch
  void apply_weights();      // w_t = ternarize(latent) into the module, keeping autograd
  void set_lr(double factor);
  // Sums this step's gradients (then divides by the world size), its metrics and the ranks' stop
  // requests over the ranks; returns whether any rank was asked to stop.
  bool synchronize(Metrics& step, bool stop);
  // Every rank's metric sums added up (the one reduction of metrics across ranks), in the same
  // collective as `riders`; `flag` comes back true when it was true on any rank.
  Metrics sum_over_ranks(const Metrics& m, std::vector<torch::Tensor> riders, bool& flag);
  void warn_negative_scales(const std::vector<LayerRecord>& layers);

  torch::jit::Module module_;
  TrainOptions options_;
  DataSplits data_;
  std::unique_ptr<Objective> objective_;
  std::vector<TrainLayer> layers_;
  std::vector<std::pair<std::string, torch::Tensor>> other_params_;
  std::unique_ptr<torch::optim::Optimizer> optimizer_;
  std::vector<double> lr_mults_;  // per optimizer group: its rate is options_.lr × this (base_lr)
  double base_lr(size_t group) const { return options_.lr * lr_mults_[group]; }
  TrainPosition position_;
  std::shared_ptr<Communicator> comm_;
  int rank_ = 0, world_ = 1;
  std::vector<torch::Tensor> params_;   // every trained tensor, in the optimizer's order (same on all ranks)
  std::vector<torch::Tensor> buffers_;  // broadcast from rank 0 before each step
  std::set<std::string> warned_negative_;
  std::string recipe_optimizer_, recipe_lr_, lr_reason_;  // recipe()'s two parts; use_lr's `why`
  bool lr_to_probe_ = false;                              // --lr auto, not yet probed
  std::vector<torch::Tensor> best_tensors_;
  std::set<std::string> warned_divergence_;
  bool ended_on_best_ = false;
};

}  // namespace ttq
