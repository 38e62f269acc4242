// formats/checkpoint: a run stopped at a checkpoint and resumed ends exactly where the uninterrupted
// run ends; corrupt checkpoints are noticed and skipped; checkpoints of another model or of other
// options are refused; only the newest two are kept.
#include "catch.h"

#include <filesystem>
#include <fstream>

#include <unistd.h>

#include "core/error.h"
#include "formats/checkpoint.h"
#include "formats/torchscript.h"
#include "plugins/dataset.h"

using namespace ttq;
namespace fs = std::filesystem;

namespace {

struct Setup {
  const std::string spec = std::string("tensors:") + TTQ_FIXTURES + "/tensors.pt";
  DataSplits data = load_dataset(spec);
  TrainOptions options;
  fs::path dir = fs::temp_directory_path() / ("ttq_unit_checkpoints_" + std::to_string(getpid()));

  Setup() {
    options.epochs = 3;
    options.batch_size = 250;
    options.seed = 4;
    options.optimizer = Optimizer::Adam;
    options.lr = 0.01;
    options.quant.init = ScaleInit::Mean;
    options.quant.selection.quantize_first = true;
    options.quant.selection.quantize_last = true;
    fs::remove_all(dir);
  }
  ~Setup() { fs::remove_all(dir); }

  nlohmann::json identity(const TrainOptions& o) const { return resume_identity({o, 0, 0, 1}, spec); }
  std::unique_ptr<Trainer> trainer(const TrainOptions& o) const {
    return std::make_unique<Trainer>(load_torchscript(std::string(TTQ_FIXTURES) + "/one_layer.pt").module, o, data);
  }
  // Saves a checkpoint of `t` where it stands; returns its path.
  std::string save(Trainer& t) const {
    save_checkpoint(t, t.position(), dir.string(), identity(options));
    return *newest_checkpoint(dir.string());
  }
  void run(Trainer& t, bool checkpoints) const {
    TrainHooks hooks;
    if (checkpoints)
      hooks.save_checkpoint = [&](const TrainPosition& p) { save_checkpoint(t, p, dir.string(), identity(options)); };
    std::atomic<bool> stop{false};
    t.run(hooks, stop);
  }
};

size_t files_in(const fs::path& dir) { return std::distance(fs::directory_iterator(dir), fs::directory_iterator{}); }

}  // namespace

TEST_CASE("resuming from a checkpoint ends bit-exactly where the uninterrupted run ends") {
  Setup s;
  auto full = s.trainer(s.options);
  s.run(*full, false);

  TrainOptions first_part = s.options;
  first_part.max_steps = 11;  // stops inside epoch 2 (8 steps an epoch)
  auto stopped = s.trainer(first_part);
  s.run(*stopped, true);
  const auto newest = newest_checkpoint(s.dir.string());
  REQUIRE(newest);
  CHECK(fs::path(*newest).filename() == "checkpoint-0000000011.pt");
  CHECK(files_in(s.dir) == 2);  // epoch 1 (step 8) and the partial epoch (step 11)

  auto resumed = s.trainer(s.options);
  CHECK(resume_from_checkpoints(*resumed, s.dir.string(), s.identity(s.options)) == *newest);
  CHECK(resumed->position().global_step == 11);
  CHECK(resumed->position().epoch == 1);
  CHECK(resumed->position().step_in_epoch == 3);
  s.run(*resumed, false);
  const auto a = full->state_tensors(), b = resumed->state_tensors();
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    CAPTURE(a[i].first);
    CHECK(torch::equal(a[i].second, b[i].second));
  }
}

TEST_CASE("a checkpoint of another layer selection, or not a checkpoint, is an input error") {
  Setup s;
  auto t = s.trainer(s.options);
  const auto path = s.save(*t);
  TrainOptions fp = s.options;
  fp.fp = true;
  auto other = s.trainer(fp);
  CHECK_THROWS_WITH(load_checkpoint(*other, path, s.identity(s.options)), Catch::Contains("another model or layer"));
  std::ofstream(s.dir / "checkpoint-0000000099.pt") << "not a checkpoint";
  CHECK_THROWS_WITH(load_checkpoint(*t, (s.dir / "checkpoint-0000000099.pt").string(), s.identity(s.options)),
                    Catch::Contains("not a ttq checkpoint"));
}

TEST_CASE("only the newest two checkpoints are kept, and no temporary file is left") {
  Setup s;
  auto t = s.trainer(s.options);
  for (int64_t step : {1, 2, 3}) {
    t->position().global_step = step;
    save_checkpoint(*t, t->position(), s.dir.string(), s.identity(s.options));
  }
  CHECK(files_in(s.dir) == 2);
  CHECK(fs::path(*newest_checkpoint(s.dir.string())).filename() == "checkpoint-0000000003.pt");
}

TEST_CASE("a flipped bit or a cut file is noticed, and resume falls back to the previous checkpoint") {
  Setup s;
  auto t = s.trainer(s.options);
  for (int64_t step : {4, 8}) {
    t->position().global_step = step;
    save_checkpoint(*t, t->position(), s.dir.string(), s.identity(s.options));
  }
  const fs::path newest = s.dir / "checkpoint-0000000008.pt";
  {
    std::fstream f(newest, std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(static_cast<std::streamoff>(fs::file_size(newest) / 2));
    const char c = static_cast<char>(f.peek());
    f.seekp(static_cast<std::streamoff>(fs::file_size(newest) / 2));
    f.put(static_cast<char>(c ^ 0x10));
  }
  CHECK_THROWS_WITH(load_checkpoint(*t, newest.string(), s.identity(s.options)), Catch::Contains("checksum mismatch"));
  auto resumed = s.trainer(s.options);
  CHECK(resume_from_checkpoints(*resumed, s.dir.string(), s.identity(s.options)) ==
        (s.dir / "checkpoint-0000000004.pt").string());
  CHECK(resumed->position().global_step == 4);
  fs::resize_file(s.dir / "checkpoint-0000000004.pt", 100);
  CHECK_THROWS_WITH(resume_from_checkpoints(*resumed, s.dir.string(), s.identity(s.options)),
                    Catch::Contains("no usable checkpoint"));
}

TEST_CASE("resuming with an option that changes the result is a usage error naming it") {
  Setup s;
  auto t = s.trainer(s.options);
  const auto path = s.save(*t);
  TrainOptions other = s.options;
  other.lr = 0.5;
  CHECK_THROWS_WITH(load_checkpoint(*t, path, s.identity(other)), Catch::Contains("--lr 0.01, this run has 0.5"));
  other = s.options;
  other.optimizer = Optimizer::Sgd;
  CHECK_THROWS_WITH(load_checkpoint(*t, path, s.identity(other)), Catch::Contains("--optimizer \"adam\""));
  other = s.options;
  other.epochs = 9;  // extending a run is allowed
  other.max_steps = 3;
  load_checkpoint(*t, path, s.identity(other));
}

TEST_CASE("the kept best state travels in checkpoints: its epoch, scores and tensors") {
  Setup s;
  auto t = s.trainer(s.options);
  s.run(*t, false);
  t->position().step_in_epoch = 2;  // mid-epoch: the best is not the state the checkpoint holds
  t->position().best_epoch = 2;
  t->position().best_step = 16;
  t->position().best_score = 0.75;
  t->position().start_score = 0.5;
  for (auto& b : t->best_tensors()) b.fill_(0.25);
  const auto path = s.save(*t);
  auto back = s.trainer(s.options);
  load_checkpoint(*back, path, s.identity(s.options));
  CHECK(back->position().best_epoch == 2);
  CHECK(back->position().best_step == 16);
  CHECK(back->position().best_score == 0.75);
  CHECK(back->position().start_score == 0.5);
  REQUIRE(back->best_tensors().size() == t->best_tensors().size());
  for (const auto& b : back->best_tensors()) CHECK((b == 0.25).all().item<bool>());
}

TEST_CASE("a run that went back after diverging resumes exactly, from before the divergence and after it") {
  Setup s;
  s.options.lr = 10;  // adam: the loss explodes at step 2; back to the start at 1, which trains
  auto full = s.trainer(s.options);
  s.run(*full, false);
  REQUIRE(full->position().recoveries == 1);
  for (const int64_t cut : {1, 11}) {  // a checkpoint before the divergence, and one after the recovery
    CAPTURE(cut);
    fs::remove_all(s.dir);
    TrainOptions first_part = s.options;
    first_part.max_steps = cut;
    auto stopped = s.trainer(first_part);
    s.run(*stopped, true);
    CHECK(stopped->position().recoveries == (cut == 1 ? 0 : 1));
    auto resumed = s.trainer(s.options);
    resume_from_checkpoints(*resumed, s.dir.string(), s.identity(s.options));
    CHECK(resumed->position().global_step == cut);
    s.run(*resumed, false);
    CHECK(resumed->position().recoveries == 1);
    const auto a = full->state_tensors(), b = resumed->state_tensors();
    for (size_t i = 0; i < a.size(); ++i) {
      CAPTURE(a[i].first);
      CHECK(torch::equal(a[i].second, b[i].second));
    }
  }
}
