#include "formats/checkpoint.h"

#include <torch/optim.h>
#include <torch/serialize.h>

#include <fmt/ranges.h>

#include <filesystem>
#include <regex>

#include "core/error.h"
#include "formats/atomic_file.h"

namespace ttq {
namespace {

namespace fs = std::filesystem;
constexpr int64_t kCheckpointVersion = 1;

// Tensor names and shapes: a checkpoint only resumes the model (and selection) it was made for.
std::string signature(Trainer& trainer) {
  std::string s;
  for (const auto& [name, t] : trainer.state_tensors())
    s += fmt::format("{}{}{}\n", name, fmt::join(t.sizes(), ","), c10::toString(t.scalar_type()));
  return s;
}

std::vector<std::pair<int64_t, fs::path>> checkpoints_in(const std::string& dir) {
  std::vector<std::pair<int64_t, fs::path>> found;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return found;
  static const std::regex name(R"(checkpoint-(\d+)\.pt)");
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    std::smatch m;
    const std::string file = entry.path().filename().string();
    if (std::regex_match(file, m, name)) found.emplace_back(std::stoll(m[1]), entry.path());
  }
  std::sort(found.begin(), found.end());
  return found;
}

}  // namespace

void save_checkpoint(Trainer& trainer, const TrainPosition& p, const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw input_error(fmt::format("cannot create checkpoint folder {}: {}", dir, ec.message()));
  torch::serialize::OutputArchive archive;
  archive.write("version", c10::IValue(kCheckpointVersion));
  archive.write("signature", c10::IValue(signature(trainer)));
  archive.write("epoch", c10::IValue(static_cast<int64_t>(p.epoch)));
  archive.write("step_in_epoch", c10::IValue(p.step_in_epoch));
  archive.write("global_step", c10::IValue(p.global_step));
  archive.write("train_sums", torch::tensor({p.train.loss, p.train.top1, p.train.top5,
                                             static_cast<double>(p.train.samples)}, torch::kDouble));
  archive.write("rng", at::detail::getDefaultCPUGenerator().get_state());
  int i = 0;
  for (const auto& [name, t] : trainer.state_tensors()) archive.write("t" + std::to_string(i++), t.detach());
  torch::serialize::OutputArchive optimizer;
  trainer.optimizer().save(optimizer);
  archive.write("optimizer", optimizer);

  const fs::path path = fs::path(dir) / fmt::format("checkpoint-{:010}.pt", p.global_step);
  write_atomically(path, [&](std::ostream& out) { archive.save_to(out); });
  auto all = checkpoints_in(dir);
  for (size_t k = 0; k + 2 < all.size(); ++k) fs::remove(all[k].second, ec);
}

std::optional<std::string> newest_checkpoint(const std::string& dir) {
  const auto all = checkpoints_in(dir);
  if (all.empty()) return std::nullopt;
  return all.back().second.string();
}

void load_checkpoint(Trainer& trainer, const std::string& path) {
  torch::serialize::InputArchive archive;
  try {
    archive.load_from(path);
  } catch (const c10::Error& e) {
    throw input_error(fmt::format("{}: not a ttq checkpoint", path));
  }
  c10::IValue v;
  if (!archive.try_read("version", v) || !v.isInt() || v.toInt() != kCheckpointVersion)
    throw input_error(fmt::format("{}: not a ttq checkpoint of version {}", path, kCheckpointVersion));
  archive.read("signature", v);
  if (v.toStringRef() != signature(trainer))
    throw input_error(fmt::format("{}: the checkpoint is of another model or layer selection", path));
  TrainPosition& p = trainer.position();
  archive.read("epoch", v);
  p.epoch = static_cast<int>(v.toInt());
  archive.read("step_in_epoch", v);
  p.step_in_epoch = v.toInt();
  archive.read("global_step", v);
  p.global_step = v.toInt();
  torch::Tensor sums, rng;
  archive.read("train_sums", sums);
  const auto* s = sums.data_ptr<double>();
  p.train = {s[0], s[1], s[2], static_cast<int64_t>(s[3])};
  archive.read("rng", rng);
  at::Generator generator = at::detail::getDefaultCPUGenerator();
  generator.set_state(rng);
  torch::NoGradGuard no_grad;
  int i = 0;
  for (auto& [name, t] : trainer.state_tensors()) {
    torch::Tensor saved;
    archive.read("t" + std::to_string(i++), saved);
    t.copy_(saved);
  }
  torch::serialize::InputArchive optimizer;
  archive.read("optimizer", optimizer);
  trainer.optimizer().load(optimizer);
}

}  // namespace ttq
