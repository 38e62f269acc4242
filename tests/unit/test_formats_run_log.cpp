// formats/run_log: what finetune --log writes and stats reads, across a resume that repeats steps.
#include "catch.h"

#include <filesystem>
#include <fstream>

#include <unistd.h>

#include "core/error.h"
#include "formats/run_log.h"

using namespace ttq;

namespace {

std::string temp_log(const std::string& name) {
  const auto path = std::filesystem::temp_directory_path() / ("ttq_unit_" + std::to_string(getpid()) + "_" + name);
  std::filesystem::remove(path);
  return path.string();
}

LayerRecord layer(float wp, int64_t zero) {
  return {"fc.weight", {4, 25}, wp, 0.5f, 0.01f, {ThresholdMode::Sparsity, 0.3}, {40, zero, 60 - zero}};
}

StepProgress step_at(int64_t step, double loss) { return {1, step, 10, step, loss, 0.01, 1000}; }

EpochRecord epoch_at(int epoch, int64_t step, double val_top1) {
  EpochRecord r;
  r.epoch = epoch;
  r.step = step;
  r.lr = 0.005;
  r.train.loss = 0.5, r.train.top1 = 0.8, r.train.top5 = 0.95, r.train.labeled = 1;
  r.val.loss = 0.6, r.val.top1 = val_top1, r.val.top5 = 0.97, r.val.labeled = 1;
  r.seconds = 1.5;
  r.layers = {layer(0.7f, 35)};
  return r;
}

std::string read_all(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

}  // namespace

TEST_CASE("a resumed run's repeated records replace the earlier ones, and options round-trip typed") {
  const std::string path = temp_log("resume.jsonl");
  RunOptions options;
  options.train.lr = 0.003;
  options.train.optimizer = Optimizer::Adam;
  options.train.schedule = Schedule::Step;
  options.train.milestones = {3, 6};
  options.train.quant.init = ScaleInit::Mean;
  options.train.quant.threshold = {ThresholdMode::Sparsity, 0.4};
  options.world_size = 2;
  options.train.objective.teacher = "fp.pt";
  options.train.objective.loss = DistillLoss::Kl;
  options.train.objective.alpha = 0.25;
  options.train.objective.output = "logits";
  {
    RunLog log(path, false);
    log.run("m.pt", "tensors:x.pt", options, 10);
    log.init({layer(0.5f, 30)});
    log.step(step_at(5, 2.0), {layer(0.6f, 31)});
    log.epoch(epoch_at(1, 10, 0.5));
    log.step(step_at(15, 1.5), {layer(0.65f, 32)});  // then the run is killed
  }
  {
    RunLog log(path, true);  // resumed from the checkpoint at step 10
    log.step(step_at(15, 1.4), {layer(0.66f, 33)});
    EpochRecord second = epoch_at(2, 20, 0.7);
    second.train.ce = 0.4, second.train.distill = 0.6;
    second.val.agreement = 0.93, second.val.rel_mse = 0.02;
    log.epoch(second);
  }
  const RunHistory h = read_run_log(path);
  CHECK(h.model == "m.pt");
  CHECK(h.steps_per_epoch == 10);
  CHECK(h.epochs_planned == options.train.epochs);
  CHECK(h.options.train.lr == 0.003);
  CHECK(h.options.train.optimizer == Optimizer::Adam);
  CHECK(h.options.train.schedule == Schedule::Step);
  CHECK(h.options.train.milestones == std::vector<int>{3, 6});
  CHECK(h.options.train.quant.init == ScaleInit::Mean);
  CHECK(h.options.train.quant.threshold.value == 0.4);
  CHECK(h.options.world_size == 2);
  std::vector<int64_t> steps;
  for (const auto& p : h.points) steps.push_back(p.step);
  CHECK(steps == std::vector<int64_t>{0, 5, 10, 15, 20});
  CHECK(*h.points[3].loss == 1.4);
  CHECK(h.points[3].layers[0].counts.zero == 33);
  CHECK(h.points[3].layers[0].shape == std::vector<int64_t>{4, 25});
  REQUIRE(h.epochs.size() == 2);
  CHECK(h.epochs[1].val.top1 == 0.7);
  CHECK(h.epochs[1].train.loss == 0.5);
  CHECK(h.epochs[1].train.distill == 0.6);
  CHECK(h.epochs[1].train.ce == 0.4);
  CHECK(h.epochs[1].val.agreement == 0.93);
  CHECK(h.epochs[1].val.rel_mse == 0.02);
  CHECK_FALSE(h.epochs[0].val.agreement);
  CHECK(h.options.train.objective.teacher == "fp.pt");
  CHECK(h.options.train.objective.loss == DistillLoss::Kl);
  CHECK(h.options.train.objective.alpha == 0.25);
  CHECK(h.options.train.objective.output == "logits");
  std::filesystem::remove(path);
}

TEST_CASE("a torn last line is skipped by readers and cut by a resumed run, and a log that is not a run is an error") {
  const std::string path = temp_log("torn.jsonl");
  {
    RunLog log(path, false);
    log.run("m.pt", "d", {}, 10);
    log.init({layer(0.5f, 30)});
  }
  const std::string text = read_all(path);
  std::ofstream(path, std::ios::app) << text.substr(0, 40);  // half a record, no newline
  CHECK(read_run_log(path).points.size() == 1);
  {
    RunLog log(path, true);
    CHECK(read_all(path) == text);  // the torn line is gone before anything is appended
    CHECK_THROWS_WITH(RunLog(path, true), Catch::Contains("in use by another ttq run"));
    log.step(step_at(5, 2.0), {layer(0.6f, 31)});
  }
  CHECK(read_run_log(path).points.size() == 2);
  std::ofstream(path) << "{\"type\": \"step\"}\n";
  CHECK_THROWS_WITH(read_run_log(path), Catch::Contains("not a ttq run log"));
  std::ofstream(path) << "";
  CHECK_THROWS_WITH(read_run_log(path), Catch::Contains("empty log"));
  std::filesystem::remove(path);
}

TEST_CASE("layers of logs written by ttq 0.1.0 (fractions, no counts) still read") {
  const std::string path = temp_log("old.jsonl");
  std::ofstream(path) << R"({"type":"run","version":1,"tool":"ttq 0.1.0","model":"m","data":"d","options":{}})" "\n"
                      << R"({"type":"init","step":0,"layers":[{"name":"a","wp":1,"wn":2,"delta":0.1,)"
                         R"("neg":0.25,"zero":0.5,"pos":0.25,"negative_scale":false}]})" "\n";
  const RunHistory h = read_run_log(path);
  REQUIRE(h.points.size() == 1);
  const auto& c = h.points[0].layers[0].counts;
  CHECK(c.sparsity() == Approx(0.5));
  CHECK(c.fraction(c.neg) == Approx(0.25));
  std::filesystem::remove(path);
}
