#include "core/train.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/csrc/jit/runtime/graph_executor.h>
#include <torch/optim.h>

#include <chrono>
#include <cmath>

#include "core/batch_norm.h"
#include "core/distributed.h"
#include "core/error.h"
#include "core/layers.h"

namespace ttq {

double lr_factor(const TrainOptions& o, int epoch, int64_t global_step, int64_t steps_per_epoch) {
  switch (o.schedule) {
    case Schedule::Cosine: {
      const double total = static_cast<double>(o.epochs * steps_per_epoch);
      return 0.5 * (1.0 + std::cos(M_PI * static_cast<double>(global_step) / total));
    }
    case Schedule::Step: {
      double f = 1.0;
      for (const int m : o.milestones)
        if (epoch >= m) f *= o.gamma;
      return f;
    }
    case Schedule::Constant: break;
  }
  return 1.0;
}

double EpochRecord::mean_sparsity() const {
  double sum = 0;
  for (const auto& l : layers) sum += l.counts.sparsity();
  return layers.empty() ? 0.0 : sum / static_cast<double>(layers.size());
}

Trainer::Trainer(torch::jit::Module module, const TrainOptions& options, DataSplits data,
                 std::shared_ptr<Communicator> comm, std::optional<torch::jit::Module> teacher)
    : module_(std::move(module)), options_(options), data_(std::move(data)), comm_(std::move(comm)) {
  if (comm_) rank_ = comm_->rank(), world_ = comm_->world_size();
  use_batch_norm_kernels();  // BatchNorm in training through ttq's kernels (batch_norm.h)
  use_one_format_gradients();  // ReLU's and slices' gradients in one layout (precision.h)
  if (options_.batch_size < 1) throw usage_error("--batch-size must be at least 1");
  if (options_.epochs < 1) throw usage_error("--epochs must be at least 1");
  if (options_.lr < 0) throw usage_error("--lr must be positive (or auto)");
  const bool distilling = options_.objective.distilling();
  if (!distilling && !(data_.train.labeled() && data_.test.labeled()))
    throw usage_error(fmt::format("{} has no labels: distill from the model itself with --distill, or from another "
                                  "model with --teacher FILE", data_.train.labeled() ? "the validation data" : "the data"));
  if (distilling && !teacher) throw runtime_error("distillation needs the teacher model");
  options_.objective = resolve(options_.objective, data_.train.labeled());
  objective_ = std::make_unique<Objective>(options_.objective, std::move(teacher));
  module_.train(true);
  use_memory_format();
  torch::manual_seed(options_.seed);
  // A full-precision run plans the layers a TTQ run would take (a dry run: its --init is moot).
  const LayerPlan plan = plan_layers(module_, options_.quant, options_.fp ? PlanPurpose::DryRun : PlanPurpose::Finetune);
  if (!options_.fp) select_layers(plan);
  decide_recipe();
  build_optimizer();
  probe();
  if (comm_) start_distributed();
}

// Before the layers are planned: the latent weights are copies of the parameters, in their order.
void Trainer::use_memory_format() {
  const bool channels_last = uses_channels_last(options_.memory_format, module_);
  options_.memory_format = channels_last ? MemoryFormat::ChannelsLast : MemoryFormat::Contiguous;
  options_.preprocess.channels_last = channels_last;
  set_memory_format(module_, channels_last);
}

void Trainer::select_layers(const LayerPlan& plan) {
  auto& q = options_.quant;
  if (q.init == ScaleInit::Auto)
    spdlog::info("--init auto: {} ({})", choice_name(plan.init), plan.init_reason);
  else if (q.init == ScaleInit::Ones && !plan.every_layer_normalized)
    spdlog::warn("--init ones: {}; such layers start at scale 1 and rarely survive; consider --init mean (or auto)",
                 plan.init_reason);
  q.init = plan.init;
  for (size_t i = 0; i < plan.layers.size(); ++i) {
    const LayerRecord& planned = plan.layers[i];
    TrainLayer l;
    l.name = planned.name;
    l.latent = plan.weights[i].detach().clone().requires_grad_(true);
    l.threshold = q.threshold;
    l.slot = find_slot(module_, l.name);
    l.wp = torch::full({}, planned.wp).requires_grad_(true);
    l.wn = torch::full({}, planned.wn).requires_grad_(true);
    layers_.push_back(std::move(l));
  }
}

double auto_lr(Optimizer optimizer) { return optimizer == Optimizer::Adam ? 5e-4 : 0.01; }

// Adam (the paper's ImageNet recipe): without a normalization after the ternary layers SGD at 0.01
// threw a trained LeNet-style CNN from 87% to chance in one epoch, where Adam at 5e-4 took it to
// 88.6%; and with one, each at the rate its probe chose, Adam was ahead on every family of the zoo
// (BatchNorm CNN 85.3% against 84.9% at SGD's best rate tried, depthwise-separable 87.0% against
// 86.0%; issue 24). --lr auto starts from the optimizer's usual rate; probe_lr() then measures one.
void Trainer::decide_recipe() {
  if (options_.optimizer == Optimizer::Auto) {
    options_.optimizer = Optimizer::Adam;
    recipe_optimizer_ = "--optimizer auto: adam (ahead of sgd on every model family measured, BatchNorm ones included)";
  }
  if (options_.lr == 0) {
    options_.lr = auto_lr(options_.optimizer);
    lr_to_probe_ = true;
  }
}

std::string Trainer::recipe() const {
  if (recipe_optimizer_.empty() || recipe_lr_.empty()) return recipe_optimizer_ + recipe_lr_;
  return recipe_optimizer_ + "; " + recipe_lr_;
}

void Trainer::build_optimizer() {
  std::set<std::string> quantized;
  for (const auto& l : layers_) quantized.insert(l.name);
  for (const auto& p : module_.named_parameters(true)) {
    if (quantized.count(p.name) || !p.value.is_floating_point()) continue;
    p.value.requires_grad_(true);  // a model saved with frozen parameters still trains them
    other_params_.emplace_back(p.name, p.value);
  }
  std::vector<torch::Tensor> latent, others, scales;
  for (auto& l : layers_) latent.push_back(l.latent), scales.push_back(l.wp), scales.push_back(l.wn);
  for (auto& p : other_params_) others.push_back(p.second);
  const double wd = options_.weight_decay;
  struct Group {
    std::vector<torch::Tensor> params;
    double lr_mult, wd;
  };
  const Group groups[] = {{latent, 1.0, wd}, {others, 1.0, wd},
                          {scales, options_.scale_lr_mult, options_.scale_decay ? wd : 0.0}};
  namespace optim = torch::optim;
  std::vector<optim::OptimizerParamGroup> param_groups;
  for (const auto& g : groups) {
    if (g.params.empty()) continue;
    lr_mults_.push_back(g.lr_mult);
    const double lr = base_lr(lr_mults_.size() - 1);
    if (options_.optimizer == Optimizer::Sgd)
      param_groups.emplace_back(g.params, std::make_unique<optim::SGDOptions>(
                                              optim::SGDOptions(lr).momentum(options_.momentum).weight_decay(g.wd)));
    else
      param_groups.emplace_back(g.params, std::make_unique<optim::AdamOptions>(optim::AdamOptions(lr).weight_decay(g.wd)));
  }
  if (options_.optimizer == Optimizer::Sgd)
    optimizer_ = std::make_unique<optim::SGD>(param_groups, optim::SGDOptions(options_.lr));
  else
    optimizer_ = std::make_unique<optim::Adam>(param_groups, optim::AdamOptions(options_.lr));
}

void Trainer::probe() {
  apply_weights();
  const int64_t outputs = evaluate_sums(module_, data_.train.first(2), options_.preprocess, *objective_, 2).outputs;
  for (const Dataset* d : {&data_.train, &data_.test})
    if (d->labeled() && outputs > 0) check_labels(d->labels, outputs);
  if (data_.train.size() < options_.batch_size * world_)
    throw usage_error(fmt::format("the training split has {} samples, fewer than one batch of {} ({} per rank)",
                                  data_.train.size(), options_.batch_size * world_, options_.batch_size));
}

void Trainer::start_distributed() {
  for (const auto& b : module_.named_buffers(true)) buffers_.push_back(b.value);
  for (const auto& group : optimizer_->param_groups())
    for (const auto& p : group.params()) params_.push_back(p);
  int64_t numel = 0;
  for (const auto& p : params_) numel += p.numel();
  comm_->check_same({{"the training samples", data_.train.size()},
                     {"the validation samples", data_.test.size()},
                     {"--batch-size", options_.batch_size},
                     {"--epochs", options_.epochs},
                     {"--seed", static_cast<int64_t>(options_.seed)},
                     {"the ternary layers", static_cast<int64_t>(layers_.size())},
                     {"--precision (bf16 where the CPU has it, with auto)", static_cast<int64_t>(options_.precision)},
                     {"the trained parameters", numel}});
  // As PyTorch DDP: every rank starts from rank 0's parameters and buffers.
  torch::NoGradGuard no_grad;
  auto state = params_;
  state.insert(state.end(), buffers_.begin(), buffers_.end());
  comm_->broadcast(state);
}

Trainer::~Trainer() = default;

torch::optim::Optimizer& Trainer::optimizer() { return *optimizer_; }

bool Trainer::synchronize(Metrics& step, bool stop) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> grads;
  for (auto& p : params_) {
    if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
    grads.push_back(p.grad());
  }
  step = sum_over_ranks(step, grads, stop);
  for (auto& g : grads) g.div_(world_);
  return stop;
}

Metrics Trainer::sum_over_ranks(const Metrics& m, std::vector<torch::Tensor> riders, bool& flag) {
  // Metric sums ride in the last bucket of `riders` (a step's gradients) instead of paying their
  // own round trip; alone (evaluation) they are summed in float64.
  std::vector<double> values = m.sums();
  values.push_back(flag ? 1.0 : 0.0);
  auto packed = torch::tensor(values, torch::kFloat64).to(riders.empty() ? torch::kFloat64 : riders.back().scalar_type());
  riders.push_back(packed);
  comm_->sum(riders);
  const auto v = packed.to(torch::kFloat64).contiguous();
  values.assign(v.data_ptr<double>(), v.data_ptr<double>() + v.numel());
  flag = values.back() > 0;
  values.pop_back();
  return Metrics::from_sums(values, m.outputs);
}

int64_t Trainer::steps_per_epoch() const {
  return std::max<int64_t>(1, data_.train.size() / (options_.batch_size * world_));
}

void Trainer::apply_weights() {
  for (auto& l : layers_) {
    auto w = ternarize(l.latent, l.wp, l.wn, compute_threshold(l.latent, l.threshold));
    if (options_.preprocess.channels_last) w = in_channels_last(w);
    l.slot.set(w);
  }
}

void Trainer::set_lr(double factor) {
  for (size_t g = 0; g < optimizer_->param_groups().size(); ++g)
    optimizer_->param_groups()[g].options().set_lr(base_lr(g) * factor);
}

std::vector<LayerRecord> Trainer::snapshot() const {
  std::vector<LayerRecord> out;
  for (const auto& l : layers_)
    out.push_back(measure_layer(l.name, l.latent, l.threshold, {l.wp.item<float>(), l.wn.item<float>()}));
  return out;
}

void Trainer::warn_negative_scales(const std::vector<LayerRecord>& layers) {
  for (const auto& l : layers)
    if ((l.wp < 0 || l.wn < 0) && warned_negative_.insert(l.name).second)
      spdlog::warn("{}: a scale turned negative (Wp {:.4g}, Wn {:.4g}); it is kept, as in the authors' code", l.name,
                   l.wp, l.wn);
}

Metrics Trainer::evaluate() {
  {
    torch::NoGradGuard no_grad;
    apply_weights();
  }
  const AutocastScope autocast(options_.precision);
  Metrics m = evaluate_sums(module_, data_.test, options_.preprocess, *objective_, options_.batch_size, rank_, world_);
  if (!comm_) return averaged(m);
  bool no_flag = false;
  return averaged(sum_over_ranks(m, {}, no_flag));
}

Trainer::Batch Trainer::next_batch(const torch::Tensor& order, int epoch, int64_t step) const {
  // Global batch `step`, as one process with batch world×batch takes it; this rank's slice of it.
  const int64_t batch = options_.batch_size, first = (step * world_ + rank_) * batch;
  const auto idx = order.slice(0, first, first + batch);
  return {prepare_inputs(data_.train, idx, options_.preprocess, AugmentKey{options_.seed, epoch}),
          data_.train.labeled() ? data_.train.labels.index_select(0, idx) : torch::Tensor()};
}

namespace {

// A training forward runs its graph op by op, each op recording its own backward as in eager
// PyTorch. Left to itself, the graph executor profiles a method's first calls and, where those
// needed gradients (a resumed run's first call is a training step; a fresh run's is the start's
// evaluation), wraps the graph in differentiable subgraphs whose backward is TorchScript's symbolic
// gradients: slower (ReLU's as a comparison and a product, BatchNorm's unfused), and wrong under
// eager autocast (a linear layer's gradient formula takes the float32 weight where the forward
// used its bf16 cast: a resumed bf16 run failed with "expected scalar type BFloat16"). The switch
// is the executor's own, per thread, read at each call.
class OpByOpGraphs {
 public:
  OpByOpGraphs() : was_(torch::jit::getGraphExecutorOptimize()) { torch::jit::setGraphExecutorOptimize(false); }
  ~OpByOpGraphs() { torch::jit::setGraphExecutorOptimize(was_); }
  OpByOpGraphs(const OpByOpGraphs&) = delete;
  OpByOpGraphs& operator=(const OpByOpGraphs&) = delete;

 private:
  bool was_;
};

}  // namespace

Metrics Trainer::train_step(const Batch& batch) {
  optimizer_->zero_grad();
  if (!buffers_.empty()) comm_->broadcast(buffers_);
  apply_weights();
  Metrics step;
  torch::Tensor loss;
  {  // as torch.autocast is used: forward and loss inside, backward outside
    const AutocastScope autocast(options_.precision);
    const OpByOpGraphs op_by_op;
    const auto output = module_.forward(std::vector<c10::IValue>(batch.inputs.begin(), batch.inputs.end()));
    loss = (*objective_)(output, batch.inputs, batch.labels, step, /*compare=*/false);
  }
  loss.backward();
  return step;
}

void Trainer::run(const TrainHooks& hooks, const std::atomic<bool>& stop) {
  if (position_.global_step == 0) measure_start(hooks);  // a resumed run has its start's score
  while (position_.epoch < options_.epochs) {
    if (options_.max_steps && position_.global_step >= options_.max_steps) break;
    if (run_epoch(position_.epoch, hooks, stop) == EpochEnd::Partial) break;  // stopped by --max-steps
  }
  end_on_kept_state();
}

Trainer::EpochEnd Trainer::run_epoch(int epoch, const TrainHooks& hooks, const std::atomic<bool>& stop) {
  const int64_t steps = steps_per_epoch();
  // The sample order of an epoch depends on the seed and the epoch only: resume replays it.
  auto gen = at::detail::createCPUGenerator(options_.seed * 1000003ull + static_cast<uint64_t>(epoch));
  const auto order = torch::randperm(data_.train.size(), gen, torch::TensorOptions().dtype(torch::kInt64));
  const auto t0 = Clock::now();
  int64_t timed_samples = 0;
  bool stopped_early = false;
  Prefetcher<Batch> batches([&](int64_t s) { return next_batch(order, epoch, s); }, data_.train.source != nullptr,
                            steps);
  for (int64_t s = position_.step_in_epoch; s < steps; ++s) {
    if (options_.max_steps && position_.global_step >= options_.max_steps) {
      stopped_early = true;
      break;
    }
    const double lr_mult = lr_factor(options_, epoch, position_.global_step, steps) * lr_scale();
    set_lr(lr_mult);
    Metrics step = train_step(batches.take(s));
    bool stopping = stop.load();
    if (comm_) stopping = synchronize(step, stopping);  // the loss below is then every rank's
    const double loss_value = step.loss / static_cast<double>(step.samples);
    const bool finite = std::isfinite(loss_value);
    const auto diverging = finite ? watch_loss(loss_value, epoch)
                                  : fmt::format("the loss became {} at step {} (epoch {})", loss_value,
                                                position_.global_step + 1, epoch + 1);
    if (diverging && handle_divergence(finite ? "rise" : "non-finite", *diverging)) return EpochEnd::WentBack;
    if (finite) optimizer_->step();  // --on-divergence continue skips a step it cannot learn from
    position_.train += step;
    position_.step_in_epoch = s + 1;
    ++position_.global_step;
    timed_samples += step.samples;
    const StepProgress progress{epoch + 1, s + 1, steps, position_.global_step, loss_value, base_lr(0) * lr_mult,
                                static_cast<double>(timed_samples) / std::max(1e-9, seconds_since(t0)), step,
                                batches.loading().summary(seconds_since(t0))};
    if (hooks.on_step) hooks.on_step(progress);
    if (hooks.on_log_step && hooks.log_every > 0 && position_.global_step % hooks.log_every == 0)
      hooks.on_log_step(progress, snapshot());
    if (stopping) {
      if (hooks.save_checkpoint) hooks.save_checkpoint(position_);
      throw Interrupted();
    }
    // Mid-epoch checkpoints (the epoch's end writes its own): a crash then loses at most N steps.
    if (hooks.save_checkpoint && hooks.checkpoint_every > 0 && position_.global_step % hooks.checkpoint_every == 0 &&
        s + 1 < steps)
      hooks.save_checkpoint(position_);
  }
  return finish_epoch(epoch, stopped_early, seconds_since(t0), batches.loading(), hooks);
}

// The epoch's record (validation, layers, the lr of its last step), reported, judged and
// checkpointed; a full epoch moves the position to the next.
Trainer::EpochEnd Trainer::finish_epoch(int epoch, bool partial, double seconds, const DataLoading& loading,
                                        const TrainHooks& hooks) {
  EpochRecord r;
  r.epoch = epoch + 1;
  r.partial = partial;
  r.step = position_.global_step;
  r.lr = base_lr(0) * lr_scale() *
         lr_factor(options_, epoch, std::max<int64_t>(0, position_.global_step - 1), steps_per_epoch());
  r.train = averaged(position_.train);
  r.val = evaluate();
  r.seconds = seconds;
  r.loading = loading.summary(seconds);
  r.layers = snapshot();
  warn_negative_scales(r.layers);
  if (!partial) {
    position_.epoch = epoch + 1;
    position_.step_in_epoch = 0;
    position_.train = {};
  }
  // A run cut by --max-steps is not judged: resumed with more steps, it must go on as a longer
  // run that never stopped there would.
  const auto diverging = partial ? std::nullopt : watch_validation(r.val, epoch);
  if (!diverging) consider(r.epoch, r.val);
  if (hooks.on_epoch) hooks.on_epoch(r);
  const bool went_back = diverging && handle_divergence("validation", *diverging);
  // After going back, the checkpoint holds the best state and the recovery: resume continues it.
  if (hooks.save_checkpoint) hooks.save_checkpoint(position_);
  return went_back ? EpochEnd::WentBack : partial ? EpochEnd::Partial : EpochEnd::Complete;
}

std::vector<LayerRecord> Trainer::finalize() {
  torch::NoGradGuard no_grad;
  std::vector<LayerRecord> records = snapshot();
  for (size_t i = 0; i < layers_.size(); ++i) {
    auto& l = layers_[i];
    l.slot.set(ternarize(l.latent.detach(), l.wp.detach(), l.wn.detach(), records[i].delta));
  }
  set_memory_format(module_, false);  // OUT is stored in PyTorch's default order
  module_.train(false);
  return records;
}

std::vector<std::pair<std::string, torch::Tensor>> Trainer::state_tensors() {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (auto& l : layers_) {
    out.emplace_back("latent/" + l.name, l.latent);
    out.emplace_back("wp/" + l.name, l.wp);
    out.emplace_back("wn/" + l.name, l.wn);
  }
  for (auto& p : other_params_) out.emplace_back("param/" + p.first, p.second);
  for (const auto& b : module_.named_buffers(true)) out.emplace_back("buffer/" + b.name, b.value);
  return out;
}

}  // namespace ttq
