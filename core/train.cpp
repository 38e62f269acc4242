#include "core/train.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/nn/functional/loss.h>
#include <torch/optim.h>

#include <chrono>
#include <cmath>

#include "core/distributed.h"
#include "core/error.h"
#include "core/layers.h"

namespace ttq {
namespace {

using Clock = std::chrono::steady_clock;

std::string shape_string(at::IntArrayRef s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

// splitmix64: per-sample randomness keyed by (seed, epoch, sample), independent of batching.
uint64_t mix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

torch::Tensor prepare_inputs(const Dataset& d, const torch::Tensor& idx, const Preprocess& pre,
                             const std::optional<std::pair<uint64_t, int>>& augment_key) {
  torch::Tensor x = d.inputs.index_select(0, idx);
  if (x.scalar_type() == torch::kUInt8) {
    x = x.to(torch::kFloat).div_(255.0);
    if (!pre.mean.empty()) {
      const int64_t c = x.size(1);
      auto mean = torch::tensor(std::vector<float>(pre.mean.begin(), pre.mean.end()));
      auto std = torch::tensor(std::vector<float>(pre.std.begin(), pre.std.end()));
      if (mean.numel() == 1) mean = mean.expand({c}), std = std.expand({c});
      x.sub_(mean.view({1, c, 1, 1})).div_(std.view({1, c, 1, 1}));
    }
  } else if (!x.is_floating_point()) {
    x = x.to(torch::kFloat);
  }
  if (!augment_key || x.dim() != 4 || (!pre.flip && pre.crop_padding == 0)) return x;
  const auto [seed, epoch] = *augment_key;
  const int64_t p = pre.crop_padding, h = x.size(2), w = x.size(3);
  const auto padded = p ? torch::constant_pad_nd(x, {p, p, p, p}) : x;
  auto out = torch::empty_like(x);
  const auto* ids = idx.data_ptr<int64_t>();
  for (int64_t i = 0; i < x.size(0); ++i) {
    const uint64_t r = mix(mix(seed ^ (uint64_t(epoch) << 40)) ^ uint64_t(ids[i]));
    const int64_t dy = p ? int64_t(r % (2 * p + 1)) : 0, dx = p ? int64_t((r >> 16) % (2 * p + 1)) : 0;
    auto sample = padded[i].narrow(1, dy, h).narrow(2, dx, w);
    if (pre.flip && ((r >> 32) & 1)) sample = sample.flip({2});
    out[i].copy_(sample);
  }
  return out;
}

void accumulate(Metrics& m, const torch::Tensor& logits, const torch::Tensor& labels, double loss_sum) {
  const int64_t k = std::min<int64_t>(5, logits.size(1));
  const auto topk = std::get<1>(logits.topk(k, 1));
  const auto hits = topk.eq(labels.unsqueeze(1));
  m.top1 += hits.select(1, 0).sum().item<double>();
  m.top5 += hits.any(1).sum().item<double>();
  m.loss += loss_sum;
  m.samples += labels.size(0);
}

Metrics averaged(Metrics m) {
  if (m.samples) m.loss /= m.samples, m.top1 /= m.samples, m.top5 /= m.samples;
  return m;
}

}  // namespace

Preprocess default_preprocess(const DataSplits& data) {
  return {data.defaults.mean, data.defaults.std, data.defaults.flip, data.defaults.crop_padding};
}

namespace {

// Sums (not means) over batches shard, shard + shards, ...: the ranks of a group add theirs up.
Metrics evaluate_sums(torch::jit::Module& module, const Dataset& data, const Preprocess& pre, int64_t batch_size,
                      int shard, int shards) {
  torch::NoGradGuard no_grad;
  const bool was_training = module.is_training();
  module.train(false);
  Metrics m;
  for (int64_t start = shard * batch_size; start < data.size(); start += shards * batch_size) {
    const auto idx = torch::arange(start, std::min(start + batch_size, data.size()), torch::kInt64);
    const auto x = prepare_inputs(data, idx, pre, std::nullopt);
    const auto y = data.labels.index_select(0, idx);
    torch::Tensor logits;
    try {
      logits = module.forward({x}).toTensor();
    } catch (const std::exception& e) {  // c10::Error, or the TorchScript interpreter's JITException
      throw input_error(fmt::format("the model rejects inputs of shape {}: {}", shape_string(x.sizes()),
                                    short_message(e.what())));
    }
    if (logits.dim() != 2 || y.max().item<int64_t>() >= logits.size(1))
      throw input_error(fmt::format("labels go up to {} but the model gives outputs of shape {}",
                                    y.max().item<int64_t>(), shape_string(logits.sizes())));
    const double loss = torch::nn::functional::cross_entropy(
                            logits, y, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
                            .item<double>();
    accumulate(m, logits, y, loss);
    m.outputs = logits.size(1);
  }
  module.train(was_training);
  return m;
}

}  // namespace

Metrics evaluate_module(torch::jit::Module& module, const Dataset& data, const Preprocess& pre, int64_t batch_size) {
  return averaged(evaluate_sums(module, data, pre, batch_size, 0, 1));
}

Trainer::Trainer(torch::jit::Module module, const TrainOptions& options, DataSplits data,
                 std::shared_ptr<Communicator> comm)
    : module_(std::move(module)), options_(options), data_(std::move(data)), comm_(std::move(comm)) {
  if (comm_) rank_ = comm_->rank(), world_ = comm_->world_size();
  if (options_.batch_size < 1) throw usage_error("--batch-size must be at least 1");
  if (options_.epochs < 1) throw usage_error("--epochs must be at least 1");
  module_.train(true);
  torch::manual_seed(options_.seed);

  std::set<std::string> quantized;
  if (!options_.fp) {
    validate(options_.quant.threshold);
    auto candidates = find_candidates(module_);
    apply_selection(candidates, options_.quant.selection);
    for (const auto& c : candidates) {
      if (!c.selected) continue;
      TrainLayer l;
      l.name = c.name;
      l.latent = c.weight.detach().clone().requires_grad_(true);
      l.threshold = options_.quant.threshold;
      l.slot = find_slot(module_, c.name);
      l.delta = compute_threshold(l.latent, l.threshold);
      const Scales s = init_scales(l.latent, l.delta, options_.quant.init);
      l.wp = torch::full({}, s.wp).requires_grad_(true);
      l.wn = torch::full({}, s.wn).requires_grad_(true);
      layers_.push_back(std::move(l));
      quantized.insert(c.name);
    }
  }
  for (const auto& p : module_.named_parameters(true)) {
    if (quantized.count(p.name) || !p.value.is_floating_point()) continue;
    p.value.requires_grad_(true);  // a model saved with frozen parameters still trains them
    other_params_.emplace_back(p.name, p.value);
  }

  // Parameter groups: latent weights, other parameters, scales (own lr multiplier and decay).
  std::vector<torch::Tensor> latent, others, scales;
  for (auto& l : layers_) latent.push_back(l.latent), scales.push_back(l.wp), scales.push_back(l.wn);
  for (auto& p : other_params_) others.push_back(p.second);
  const double wd = options_.weight_decay;
  const double scale_wd = options_.scale_decay ? wd : 0.0;
  struct Group {
    std::vector<torch::Tensor> params;
    double lr, wd;
  };
  const std::vector<Group> groups{{latent, options_.lr, wd},
                                  {others, options_.lr, wd},
                                  {scales, options_.lr * options_.scale_lr_mult, scale_wd}};
  std::vector<torch::optim::OptimizerParamGroup> param_groups;
  for (const auto& g : groups) {
    if (g.params.empty()) continue;
    base_lrs_.push_back(g.lr);
    if (options_.optimizer == "sgd")
      param_groups.emplace_back(g.params, std::make_unique<torch::optim::SGDOptions>(
                                              torch::optim::SGDOptions(g.lr).momentum(options_.momentum).weight_decay(g.wd)));
    else if (options_.optimizer == "adam")
      param_groups.emplace_back(g.params, std::make_unique<torch::optim::AdamOptions>(
                                              torch::optim::AdamOptions(g.lr).weight_decay(g.wd)));
    else
      throw usage_error(fmt::format("unknown optimizer '{}'", options_.optimizer));
  }
  if (options_.optimizer == "sgd")
    optimizer_ = std::make_unique<torch::optim::SGD>(param_groups, torch::optim::SGDOptions(options_.lr));
  else
    optimizer_ = std::make_unique<torch::optim::Adam>(param_groups, torch::optim::AdamOptions(options_.lr));

  // Fail before training on data the model cannot take.
  const Dataset probe{data_.train.inputs.narrow(0, 0, std::min<int64_t>(2, data_.train.size())),
                      data_.train.labels.narrow(0, 0, std::min<int64_t>(2, data_.train.size()))};
  apply_weights();
  const int64_t outputs = evaluate_module(module_, probe, options_.preprocess, 2).outputs;
  const int64_t max_label = std::max(data_.train.labels.max().item<int64_t>(), data_.test.labels.max().item<int64_t>());
  if (max_label >= outputs)
    throw input_error(fmt::format("label {} is out of range for the model's {} outputs", max_label, outputs));
  if (data_.train.size() < options_.batch_size * world_)
    throw usage_error(fmt::format("the training split has {} samples, fewer than one batch of {} ({} per rank)",
                                  data_.train.size(), options_.batch_size * world_, options_.batch_size));
  if (comm_) start_distributed();
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
  // Small values ride in the last gradient bucket instead of paying their own round trip.
  auto stats = torch::tensor({step.loss, step.top1, step.top5, static_cast<double>(step.samples), stop ? 1.0 : 0.0},
                             grads.empty() ? torch::kFloat32 : grads.back().scalar_type());
  grads.push_back(stats);
  comm_->sum(grads);
  grads.pop_back();
  for (auto& g : grads) g.div_(world_);
  const auto v = stats.to(torch::kFloat64);
  step.loss = v[0].item<double>(), step.top1 = v[1].item<double>(), step.top5 = v[2].item<double>();
  step.samples = std::llround(v[3].item<double>());
  return v[4].item<double>() > 0;
}

int64_t Trainer::steps_per_epoch() const {
  return std::max<int64_t>(1, data_.train.size() / (options_.batch_size * world_));
}

void Trainer::apply_weights() {
  for (auto& l : layers_) {
    l.delta = compute_threshold(l.latent, l.threshold);
    l.slot.set(ternarize(l.latent, l.wp, l.wn, l.delta));
  }
}

double Trainer::lr_factor(int epoch, int64_t global_step) const {
  if (options_.schedule == "cosine") {
    const double total = static_cast<double>(options_.epochs * steps_per_epoch());
    return 0.5 * (1.0 + std::cos(M_PI * static_cast<double>(global_step) / total));
  }
  if (options_.schedule == "step") {
    double f = 1.0;
    for (const int m : options_.milestones)
      if (epoch >= m) f *= options_.gamma;
    return f;
  }
  return 1.0;
}

std::vector<LayerSnapshot> Trainer::snapshot() const {
  std::vector<LayerSnapshot> out;
  for (const auto& l : layers_) {
    const float delta = compute_threshold(l.latent, l.threshold);
    out.push_back({l.name, l.wp.item<float>(), l.wn.item<float>(), delta, count_codes(l.latent, delta)});
  }
  return out;
}

Metrics Trainer::evaluate() {
  {
    torch::NoGradGuard no_grad;
    apply_weights();
  }
  Metrics m = evaluate_sums(module_, data_.test, options_.preprocess, options_.batch_size, rank_, world_);
  if (!comm_) return averaged(m);
  auto sums = torch::tensor({m.loss, m.top1, m.top5, static_cast<double>(m.samples)}, torch::kFloat64);
  comm_->sum({sums});
  m.loss = sums[0].item<double>(), m.top1 = sums[1].item<double>(), m.top5 = sums[2].item<double>();
  m.samples = static_cast<int64_t>(sums[3].item<double>());
  return averaged(m);
}

void Trainer::run(const TrainHooks& hooks, const std::atomic<bool>& stop) {
  const int64_t steps = steps_per_epoch();
  const int64_t batch = options_.batch_size;
  namespace F = torch::nn::functional;
  for (int epoch = position_.epoch; epoch < options_.epochs; ++epoch) {
    if (options_.max_steps && position_.global_step >= options_.max_steps) return;
    // The sample order of an epoch depends on the seed and the epoch only: resume replays it.
    auto gen = at::detail::createCPUGenerator(options_.seed * 1000003ull + static_cast<uint64_t>(epoch));
    const auto order = torch::randperm(data_.train.size(), gen, torch::TensorOptions().dtype(torch::kInt64));
    const auto t0 = Clock::now();
    int64_t timed_samples = 0;
    bool stopped_early = false;
    for (int64_t s = position_.step_in_epoch; s < steps; ++s) {
      if (options_.max_steps && position_.global_step >= options_.max_steps) {
        stopped_early = true;
        break;
      }
      const double lr_mult = lr_factor(epoch, position_.global_step);
      for (size_t g = 0; g < optimizer_->param_groups().size(); ++g)
        optimizer_->param_groups()[g].options().set_lr(base_lrs_[g] * lr_mult);

      // Global batch s, as one process with batch world×batch takes it; this rank's slice of it.
      const int64_t first = (s * world_ + rank_) * batch;
      const auto idx = order.slice(0, first, first + batch);
      const auto x = prepare_inputs(data_.train, idx, options_.preprocess, std::make_pair(options_.seed, epoch));
      const auto y = data_.train.labels.index_select(0, idx);
      optimizer_->zero_grad();
      if (!buffers_.empty()) comm_->broadcast(buffers_);
      apply_weights();
      const auto logits = module_.forward({x}).toTensor();
      const auto loss = F::cross_entropy(logits, y);
      loss.backward();
      Metrics step;
      {
        torch::NoGradGuard no_grad;
        accumulate(step, logits.detach(), y, loss.item<double>() * y.size(0));
      }
      bool stopping = stop.load();
      if (comm_) stopping = synchronize(step, stopping);
      const double loss_value = step.loss / step.samples;
      if (!std::isfinite(loss_value))
        throw runtime_error(fmt::format("the loss became {} at step {} (epoch {}); lower --lr; the last "
                                        "checkpoint is kept", loss_value, position_.global_step + 1, epoch + 1));
      optimizer_->step();
      Metrics& m = position_.train;
      m.loss += step.loss, m.top1 += step.top1, m.top5 += step.top5, m.samples += step.samples;
      position_.step_in_epoch = s + 1;
      ++position_.global_step;
      timed_samples += step.samples;
      const StepProgress progress{epoch + 1, s + 1, steps, position_.global_step, loss_value,
                                  base_lrs_[0] * lr_mult,
                                  timed_samples / std::max(1e-9, std::chrono::duration<double>(Clock::now() - t0).count())};
      if (hooks.on_step) hooks.on_step(progress);
      if (hooks.on_log_step && hooks.log_every > 0 && position_.global_step % hooks.log_every == 0)
        hooks.on_log_step(progress, snapshot());
      if (stopping) {
        if (hooks.save_checkpoint) hooks.save_checkpoint(position_);
        throw Interrupted();
      }
    }
    EpochRecord r;
    r.epoch = epoch + 1;
    r.partial = stopped_early;
    r.step = position_.global_step;
    r.lr = base_lrs_[0] * lr_factor(epoch, std::max<int64_t>(0, position_.global_step - 1));
    r.train = averaged(position_.train);
    r.val = evaluate();
    r.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    r.layers = snapshot();
    if (!stopped_early) {
      position_.epoch = epoch + 1;
      position_.step_in_epoch = 0;
      position_.train = {};
    }
    if (hooks.on_epoch) hooks.on_epoch(r);
    if (hooks.save_checkpoint) hooks.save_checkpoint(position_);
    if (stopped_early) return;
  }
}

ModelMetadata Trainer::finalize() {
  torch::NoGradGuard no_grad;
  ModelMetadata meta;
  meta.command = "finetune";
  meta.options = options_.quant;
  for (auto& l : layers_) {
    LayerRecord r;
    r.name = l.name;
    r.shape = l.latent.sizes().vec();
    r.threshold = l.threshold;
    r.delta = compute_threshold(l.latent, l.threshold);
    r.wp = l.wp.item<float>();
    r.wn = l.wn.item<float>();
    r.counts = count_codes(l.latent, r.delta);
    l.slot.set(ternarize(l.latent.detach(), l.wp.detach(), l.wn.detach(), r.delta));
    meta.layers.push_back(std::move(r));
  }
  module_.train(false);
  return meta;
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
