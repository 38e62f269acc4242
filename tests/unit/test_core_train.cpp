// core/train: the learning-rate schedules, a whole (small) training run's bookkeeping, and the recipe
// --optimizer auto and --lr auto decide.
#include "catch.h"

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>

#include "core/train.h"
#include "formats/torchscript.h"
#include "plugins/dataset.h"

using namespace ttq;

TEST_CASE("cosine decays from 1 to 0 over all steps, whatever the epoch") {
  TrainOptions o;
  o.epochs = 4;
  o.schedule = Schedule::Cosine;
  CHECK(lr_factor(o, 0, 0, 25) == Approx(1.0));
  CHECK(lr_factor(o, 2, 50, 25) == Approx(0.5));
  CHECK(lr_factor(o, 3, 100, 25) == Approx(0.0).margin(1e-12));
  CHECK(lr_factor(o, 1, 25, 25) == Approx(0.5 * (1 + std::cos(M_PI / 4))));
}

TEST_CASE("step multiplies by gamma at each milestone epoch, constant stays at 1") {
  TrainOptions o;
  o.schedule = Schedule::Step;
  o.milestones = {2, 4};
  o.gamma = 0.1;
  CHECK(lr_factor(o, 0, 0, 10) == Approx(1.0));
  CHECK(lr_factor(o, 1, 19, 10) == Approx(1.0));
  CHECK(lr_factor(o, 2, 20, 10) == Approx(0.1));
  CHECK(lr_factor(o, 5, 55, 10) == Approx(0.01));
  o.schedule = Schedule::Constant;
  CHECK(lr_factor(o, 5, 55, 10) == 1.0);
}

TEST_CASE("a run reports every step and epoch, and its records describe the trained layer") {
  DataSplits data = load_dataset(std::string("tensors:") + TTQ_FIXTURES + "/tensors.pt");
  TrainOptions o;
  o.epochs = 2;
  o.batch_size = 500;
  o.optimizer = Optimizer::Adam;
  o.quant.init = ScaleInit::Mean;
  o.quant.selection.quantize_first = o.quant.selection.quantize_last = true;
  Trainer trainer(load_torchscript(std::string(TTQ_FIXTURES) + "/one_layer.pt").module, o, data);
  REQUIRE(trainer.steps_per_epoch() == 4);
  const auto before = trainer.snapshot();
  REQUIRE(before.size() == 1);
  std::vector<int64_t> steps;
  std::vector<EpochRecord> epochs;
  TrainHooks hooks;
  hooks.on_step = [&](const StepProgress& p) { steps.push_back(p.global_step); };
  hooks.on_epoch = [&](const EpochRecord& r) { epochs.push_back(r); };
  std::atomic<bool> stop{false};
  trainer.run(hooks, stop);
  CHECK(steps == std::vector<int64_t>{1, 2, 3, 4, 5, 6, 7, 8});
  REQUIRE(epochs.size() == 2);
  CHECK(epochs[1].step == 8);
  CHECK(epochs[1].val.samples == 500);
  CHECK(epochs[1].layers[0].counts.total() == 200);
  CHECK(epochs[1].mean_sparsity() == Approx(epochs[1].layers[0].counts.sparsity()));
  const auto after = trainer.finalize();
  CHECK(after[0].name == "weight");
  CHECK(after[0].wp != before[0].wp);  // the scales trained
  const auto w = trainer.module().attr("weight").toTensor();
  CHECK(((w == after[0].wp) | (w == 0) | (w == -after[0].wn)).all().item<bool>());
}

TEST_CASE("optimizer auto is adam, with or without a normalization after the layers - lr auto probes") {
  const DataSplits vectors = load_dataset(std::string("tensors:") + TTQ_FIXTURES + "/tensors.pt");
  TrainOptions o;
  o.batch_size = 100;
  o.quant.selection.quantize_first = o.quant.selection.quantize_last = true;
  const auto linear = [&](const TrainOptions& options) {
    return Trainer(load_torchscript(std::string(TTQ_FIXTURES) + "/one_layer.pt").module, options, vectors);
  };
  Trainer bare = linear(o);
  CHECK(bare.options().optimizer == Optimizer::Adam);
  CHECK(bare.options().lr == auto_lr(Optimizer::Adam));
  CHECK_THAT(bare.recipe(), Catch::StartsWith("--optimizer auto: adam ("));
  // 20 steps an epoch: too few for the probe; the usual rate stays, and the recipe says why.
  std::atomic<bool> no_stop{false};
  CHECK(bare.lr_probe_steps() == 0);
  CHECK(bare.probe_lr(nullptr, no_stop).lrs.empty());
  CHECK(bare.options().lr == auto_lr(Optimizer::Adam));
  CHECK_THAT(bare.recipe(), Catch::Contains("; --lr auto: 0.0005 (adam's usual rate: the probe needs 30 steps"));
  TrainOptions fp = o;
  fp.fp = true;  // decided as for the TTQ run of the same layers
  CHECK(linear(fp).options().optimizer == Optimizer::Adam);

  TrainOptions sgd = o;
  sgd.optimizer = Optimizer::Sgd;
  Trainer asked = linear(sgd);
  CHECK(asked.options().lr == auto_lr(Optimizer::Sgd));
  asked.probe_lr(nullptr, no_stop);
  CHECK_THAT(asked.recipe(), Catch::StartsWith("--lr auto: 0.01 (sgd's usual rate"));
  sgd.lr = 0.2;
  Trainer given = linear(sgd);
  given.probe_lr(nullptr, no_stop);
  CHECK(given.recipe().empty());
  CHECK(given.options().lr == 0.2);

  // torchvision's ResNet-18: BatchNorm after every convolution between the first and the last layer.
  DataSplits images;
  images.train = Dataset(torch::rand({16, 3, 32, 32}), torch::randint(0, 10, {16}, torch::kInt64));
  images.test = images.train;
  images.num_classes = 10;
  TrainOptions r;
  r.batch_size = 8;
  const Trainer resnet(load_torchscript(std::string(TTQ_FIXTURES) + "/resnet18.pt").module, r, images);
  CHECK(resnet.options().optimizer == Optimizer::Adam);
  CHECK(resnet.options().lr == auto_lr(Optimizer::Adam));
  CHECK_THAT(resnet.recipe(), Catch::Contains("--optimizer auto: adam (ahead of sgd on every model family measured"));
}

TEST_CASE("keep best ends on the best of the start and the epochs' ends - keep last on the last") {
  const DataSplits data = load_dataset(std::string("tensors:") + TTQ_FIXTURES + "/tensors.pt");
  TrainOptions o;
  o.epochs = 3;
  o.batch_size = 250;
  o.optimizer = Optimizer::Sgd;
  o.lr = 0.5;  // large enough that the epochs' scores move both ways
  o.on_divergence = OnDivergence::Continue;  // an epoch below the start is not sent back
  o.quant.selection.quantize_first = o.quant.selection.quantize_last = true;
  const auto train = [&](Keep keep, std::vector<double>& scores) {
    TrainOptions k = o;
    k.keep = keep;
    auto t = std::make_unique<Trainer>(load_torchscript(std::string(TTQ_FIXTURES) + "/one_layer.pt").module, k, data);
    TrainHooks hooks;
    hooks.on_start = [&](const Metrics& val) { scores.push_back(validation_score(val)); };
    hooks.on_epoch = [&](const EpochRecord& r) { scores.push_back(validation_score(r.val)); };
    std::atomic<bool> stop{false};
    t->run(hooks, stop);
    return t;
  };
  std::vector<double> best_scores, last_scores;
  auto best = train(Keep::Best, best_scores);
  auto last = train(Keep::Last, last_scores);
  REQUIRE(best_scores.size() == 4);  // the start and three epochs
  CHECK(best_scores == last_scores);  // the same run up to its end
  const auto kept = std::max_element(best_scores.begin(), best_scores.end()) - best_scores.begin();
  CHECK(best->position().best_epoch == kept);
  CHECK(best->position().start_score == best_scores[0]);
  CHECK(validation_score(best->evaluate()) == best_scores[static_cast<size_t>(kept)]);
  CHECK(validation_score(last->evaluate()) == last_scores.back());
  CHECK(last->best_tensors().empty());
  const auto a = best->state_tensors(), b = last->state_tensors();
  bool same = true;
  for (size_t i = 0; i < a.size(); ++i) same = same && torch::equal(a[i].second, b[i].second);
  CHECK(same == (kept == 3));
}

namespace {

// A run of the one-layer fixture (8 steps an epoch) at a constant `lr` (sgd): each step's global
// step and rate, the start's state, and why it stopped when it diverged.
struct DivergingRun {
  std::unique_ptr<Trainer> trainer;
  std::vector<torch::Tensor> start;
  std::vector<std::pair<int64_t, double>> steps;
  std::string stopped;
};

DivergingRun run_diverging(double lr, OnDivergence on_divergence) {
  const DataSplits data = load_dataset(std::string("tensors:") + TTQ_FIXTURES + "/tensors.pt");
  TrainOptions o;
  o.epochs = 2;
  o.batch_size = 250;
  o.optimizer = Optimizer::Sgd;
  o.schedule = Schedule::Constant;
  o.lr = lr;
  o.on_divergence = on_divergence;
  o.quant.selection.quantize_first = o.quant.selection.quantize_last = true;
  DivergingRun run;
  run.trainer = std::make_unique<Trainer>(load_torchscript(std::string(TTQ_FIXTURES) + "/one_layer.pt").module, o, data);
  for (const auto& [name, t] : run.trainer->state_tensors()) run.start.push_back(t.detach().clone());
  TrainHooks hooks;
  hooks.on_step = [&](const StepProgress& p) { run.steps.emplace_back(p.global_step, p.lr); };
  std::atomic<bool> stop{false};
  try {
    run.trainer->run(hooks, stop);
  } catch (const Diverged& e) {
    run.stopped = e.what();
  }
  return run;
}

bool holds(Trainer& t, const std::vector<torch::Tensor>& state) {
  const auto now = t.state_tensors();
  for (size_t i = 0; i < now.size(); ++i)
    if (!torch::equal(now[i].second, state[i])) return false;
  return true;
}

}  // namespace

TEST_CASE("a diverging run goes back to its best state with a tenth of the rate each time, then stops") {
  // An absurd rate: every attempt diverges, at 1e4, 1e3, 1e2 and 10; each goes back to the start.
  DivergingRun run = run_diverging(1e4, OnDivergence::Recover);
  CHECK_THAT(run.stopped, Catch::Contains("after 3 recoveries"));
  CHECK(run.trainer->position().recoveries == kMaxRecoveries);
  std::vector<double> rates{run.steps.front().second};
  for (size_t i = 1; i < run.steps.size(); ++i)
    if (run.steps[i].first <= run.steps[i - 1].first) {  // went back
      CHECK(run.steps[i].first == 1);
      rates.push_back(run.steps[i].second);
    }
  REQUIRE(rates.size() == 4);
  for (size_t i = 0; i < rates.size(); ++i) CHECK(rates[i] == Approx(1e4 * std::pow(0.1, i)));
  CHECK(run.trainer->kept_epoch() == 0);
  CHECK(holds(*run.trainer, run.start));

  // A sane rate is never sent back.
  const DivergingRun sane = run_diverging(0.01, OnDivergence::Recover);
  CHECK(sane.stopped.empty());
  CHECK(sane.trainer->position().recoveries == 0);
  REQUIRE(sane.steps.size() == 16);
  for (size_t i = 0; i < sane.steps.size(); ++i) CHECK(sane.steps[i].first == static_cast<int64_t>(i + 1));
}

TEST_CASE("on-divergence stop ends at once on the best state - continue trains on past it") {
  DivergingRun stopped = run_diverging(1e4, OnDivergence::Stop);
  CHECK_THAT(stopped.stopped, Catch::Contains("(--on-divergence stop)"));
  CHECK(stopped.steps.size() < 8);
  CHECK(stopped.trainer->position().recoveries == 0);
  CHECK(stopped.trainer->kept_step() == 0);
  CHECK(holds(*stopped.trainer, stopped.start));
  CHECK(validation_score(stopped.trainer->evaluate()) == stopped.trainer->position().start_score);

  DivergingRun on = run_diverging(1e4, OnDivergence::Continue);
  CHECK(on.stopped.empty());
  CHECK(on.steps.size() == 16);
  CHECK(on.trainer->position().recoveries == 0);
  REQUIRE(on.trainer->kept_epoch() >= 0);  // --keep best still writes the best state
  CHECK(validation_score(on.trainer->evaluate()) == on.trainer->position().best_score);
}

TEST_CASE("the lr probe changes nothing but the rate: the run after it is the run with that --lr") {
  const DataSplits data = load_dataset(std::string("tensors:") + TTQ_FIXTURES + "/tensors.pt");
  TrainOptions o;
  o.epochs = 1;
  o.batch_size = 5;  // 400 steps an epoch: a probe of 32 (8%)
  o.quant.selection.quantize_first = o.quant.selection.quantize_last = true;
  const auto trainer = [&](const TrainOptions& options) {
    return std::make_unique<Trainer>(load_torchscript(std::string(TTQ_FIXTURES) + "/one_layer.pt").module, options, data);
  };
  std::atomic<bool> stop{false};
  auto probed = trainer(o);
  std::vector<torch::Tensor> before;
  for (const auto& [name, t] : probed->state_tensors()) before.push_back(t.detach().clone());
  const torch::Tensor rng = at::detail::getDefaultCPUGenerator().get_state();
  int64_t reported = 0;
  const LrProbe probe = probed->probe_lr([&](const LrProbeStep& s) { reported = s.step; }, stop);
  REQUIRE(probed->lr_probe_steps() == 32);
  REQUIRE(!probe.lrs.empty());
  CHECK(reported == static_cast<int64_t>(probe.lrs.size()));
  CHECK(probe.lrs.front() == Approx(1e-5));
  for (size_t i = 1; i < probe.lrs.size(); ++i) CHECK(probe.lrs[i] == Approx(probe.lrs[i - 1] * std::pow(1e4, 1.0 / 31)));
  CHECK(probe.lr == probed->options().lr);
  CHECK((probe.lr >= probe.lrs.front() && probe.lr <= probe.lrs.back()));
  CHECK(holds(*probed, before));
  CHECK(torch::equal(at::detail::getDefaultCPUGenerator().get_state(), rng));
  CHECK(probed->probe_lr(nullptr, stop).lrs.empty());  // once

  TrainOptions given = o;
  given.optimizer = Optimizer::Adam;
  given.lr = probe.lr;
  auto asked = trainer(given);
  probed->run({}, stop);
  asked->run({}, stop);
  CHECK(holds(*asked, [&] {
    std::vector<torch::Tensor> v;
    for (const auto& [name, t] : probed->state_tensors()) v.push_back(t.detach());
    return v;
  }()));
}

TEST_CASE("the probed rate is a quarter of the rate at the lowest smoothed loss, never below the first") {
  std::vector<double> lrs, valley, rising;
  for (int i = 0; i <= 40; ++i) {
    lrs.push_back(1e-5 * std::pow(10.0, i / 10.0));
    const double decades_from_min = std::log10(lrs.back() / 1e-2);
    valley.push_back(0.5 + decades_from_min * decades_from_min);  // lowest at 1e-2
    rising.push_back(0.5 + i);
  }
  CHECK(choose_probed_lr(lrs, valley) == Approx(1e-2 / 4));
  CHECK(choose_probed_lr(lrs, rising) == lrs.front());
  CHECK(choose_probed_lr({}, {}) == 0);
}
