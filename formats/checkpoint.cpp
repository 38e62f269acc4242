#include "formats/checkpoint.h"

#include <torch/optim.h>
#include <torch/serialize.h>

#include <fmt/ranges.h>
#define XXH_INLINE_ALL
#include <xxhash.h>

#include <filesystem>
#include <regex>
#include <sstream>

#include "core/error.h"
#include "core/util.h"
#include "formats/atomic_file.h"
#include "formats/json.h"
#include "formats/little_endian.h"

namespace ttq {
namespace {

namespace fs = std::filesystem;
constexpr int64_t kCheckpointVersion = 2;  // 1: ttq 0.1.0, no trailer and no run identity
constexpr char kTrailerMagic[8] = {'T', 'T', 'Q', 'C', 'K', 'P', 'T', '2'};
constexpr size_t kTrailerSize = 24;

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

// The archive's bytes after checking the trailer; input errors name the file.
std::string verified_archive(const std::string& path) {
  const std::vector<uint8_t> bytes = read_file(path);
  if (bytes.size() < kTrailerSize || std::memcmp(bytes.data() + bytes.size() - kTrailerSize, kTrailerMagic, 8) != 0)
    throw input_error(fmt::format("{}: not a ttq checkpoint of version {} (or cut short)", path, kCheckpointVersion));
  const uint8_t* trailer = bytes.data() + bytes.size() - kTrailerSize;
  const uint64_t size = le::read_u64(trailer + 8);
  if (size != bytes.size() - kTrailerSize)
    throw input_error(fmt::format("{}: truncated or extended checkpoint ({} bytes, {} expected)", path,
                                  bytes.size() - kTrailerSize, size));
  if (XXH64(bytes.data(), size, 0) != le::read_u64(trailer + 16))
    throw input_error(fmt::format("{}: corrupt checkpoint (checksum mismatch)", path));
  return std::string(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(size));
}

// "--lr" for "lr": the flag behind an identity key, for messages.
std::string flag_of(const std::string& key) {
  if (key == "global_batch") return "--batch-size × world size";
  if (key == "mode" || key == "threshold") return "--threshold/--sparsity";
  std::string flag = "--" + key;
  std::replace(flag.begin(), flag.end(), '_', '-');
  return flag;
}

void check_identity(const std::string& path, nlohmann::json saved, const nlohmann::json& current) {
  // Checkpoints made before --precision trained in float32, contiguous: what fp32 and auto give.
  if (!saved.contains("precision")) saved["precision"] = Precision::Fp32;
  if (!saved.contains("memory_format")) saved["memory_format"] = MemoryFormat::Auto;
  for (const auto& [key, value] : current.items()) {
    const auto it = saved.find(key);
    if (it == saved.end() || *it != value)
      throw usage_error(fmt::format("--resume: {} was made with {} {}, this run has {}; resume with the run's "
                                    "options (see 'Resume' in man ttq-finetune)", path, flag_of(key),
                                    it == saved.end() ? "unset" : it->dump(), value.dump()));
  }
}

}  // namespace

nlohmann::json resume_identity(const RunOptions& options, const std::string& data) {
  nlohmann::json j = options;
  j["global_batch"] = options.train.batch_size * options.world_size;
  if (options.train.lr == 0) j["lr"] = "auto";
  j["data"] = data;
  const Preprocess& pre = options.train.preprocess;
  j.update({{"mean", pre.mean}, {"std", pre.std}, {"flip", pre.flip}, {"crop_padding", pre.crop_padding}});
  for (const char* free_to_change : {"epochs", "max_steps", "threads", "world_size", "batch_size"})
    j.erase(free_to_change);
  return j;
}

namespace {

// The state of core/train_keep.cpp: the start's scores and loss, the best state's epoch, step,
// score and tensors (unless they are the checkpoint's own: the best epoch just ended, or the run
// just went back to it), and the divergence watch. Checkpoints of ttq before --keep and
// --on-divergence lack them, and never get here: their identity has neither, which check_identity refuses.
void write_kept_state(torch::serialize::OutputArchive& archive, Trainer& trainer, const TrainPosition& p) {
  const std::pair<const char*, double> reals[] = {{"start_score", p.start_score}, {"best_score", p.best_score},
                                                   {"start_loss", p.start_loss}, {"loss_average", p.loss_average}};
  for (const auto& [key, value] : reals) archive.write(key, c10::IValue(value));
  const std::pair<const char*, int64_t> counts[] = {{"best_epoch", p.best_epoch}, {"best_step", p.best_step},
                                                    {"loss_steps", p.loss_steps}, {"recoveries", p.recoveries}};
  for (const auto& [key, value] : counts) archive.write(key, c10::IValue(value));
  if (p.best_step == p.global_step) return;  // the best is the checkpoint's own state
  int i = 0;
  for (const auto& t : trainer.best_tensors()) archive.write("b" + std::to_string(i++), t);
}

void read_kept_state(torch::serialize::InputArchive& archive, Trainer& trainer) {
  TrainPosition& p = trainer.position();
  c10::IValue v;
  const auto number = [&](const char* key) {
    archive.read(key, v);
    return v.isInt() ? static_cast<double>(v.toInt()) : v.toDouble();
  };
  p.start_score = number("start_score"), p.best_score = number("best_score");
  p.start_loss = number("start_loss"), p.loss_average = number("loss_average");
  p.best_epoch = static_cast<int>(number("best_epoch")), p.best_step = static_cast<int64_t>(number("best_step"));
  p.loss_steps = static_cast<int64_t>(number("loss_steps")), p.recoveries = static_cast<int>(number("recoveries"));
  if (p.best_epoch < 0 || !trainer.tracks_best()) return;
  trainer.keep_current_as_best();
  for (size_t i = 0; i < trainer.best_tensors().size(); ++i) {
    torch::Tensor saved;
    if (!archive.try_read("b" + std::to_string(i), saved)) return;  // the best is the state just restored
    trainer.best_tensors()[i].copy_(saved);
  }
}

}  // namespace

void save_checkpoint(Trainer& trainer, const TrainPosition& p, const std::string& dir, const nlohmann::json& identity) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw input_error(fmt::format("cannot create checkpoint folder {}: {}", dir, ec.message()));
  torch::serialize::OutputArchive archive;
  archive.write("version", c10::IValue(kCheckpointVersion));
  archive.write("signature", c10::IValue(signature(trainer)));
  archive.write("identity", c10::IValue(identity.dump()));
  archive.write("epoch", c10::IValue(static_cast<int64_t>(p.epoch)));
  archive.write("step_in_epoch", c10::IValue(p.step_in_epoch));
  archive.write("global_step", c10::IValue(p.global_step));
  archive.write("train_sums", torch::tensor(p.train.sums(), torch::kDouble));
  archive.write("rng", at::detail::getDefaultCPUGenerator().get_state());
  int i = 0;
  for (const auto& [name, t] : trainer.state_tensors()) archive.write("t" + std::to_string(i++), t.detach());
  write_kept_state(archive, trainer, p);
  // --lr auto: the rate the probe chose before the first step, which a resumed run keeps.
  if (!trainer.lr_reason().empty()) {
    archive.write("lr", c10::IValue(trainer.options().lr));
    archive.write("lr_reason", c10::IValue(trainer.lr_reason()));
  }
  torch::serialize::OutputArchive optimizer;
  trainer.optimizer().save(optimizer);
  archive.write("optimizer", optimizer);

  std::ostringstream buffer;
  archive.save_to(buffer);
  std::string bytes = buffer.str();
  const uint64_t size = bytes.size(), checksum = XXH64(bytes.data(), bytes.size(), 0);
  bytes.append(kTrailerMagic, sizeof kTrailerMagic);
  le::append_u64(bytes, size);
  le::append_u64(bytes, checksum);
  const fs::path path = fs::path(dir) / fmt::format("checkpoint-{:010}.pt", p.global_step);
  write_atomically(path, [&](std::ostream& out) { out.write(bytes.data(), static_cast<std::streamsize>(bytes.size())); });
  auto all = checkpoints_in(dir);
  for (size_t k = 0; k + 2 < all.size(); ++k) fs::remove(all[k].second, ec);
}

std::optional<std::string> newest_checkpoint(const std::string& dir) {
  const auto all = checkpoints_in(dir);
  if (all.empty()) return std::nullopt;
  return all.back().second.string();
}

namespace {

// Restores from a checkpoint's verified archive bytes (verified_archive); `path` names it in errors.
void restore(Trainer& trainer, const std::string& archive_bytes, const std::string& path,
             const nlohmann::json& identity) {
  std::istringstream bytes(archive_bytes);
  torch::serialize::InputArchive archive;
  try {
    archive.load_from(bytes);
  } catch (const c10::Error& e) {
    throw input_error(fmt::format("{}: not a ttq checkpoint", path));
  }
  c10::IValue v;
  if (!archive.try_read("version", v) || !v.isInt() || v.toInt() != kCheckpointVersion)
    throw input_error(fmt::format("{}: not a ttq checkpoint of version {}", path, kCheckpointVersion));
  archive.read("signature", v);
  if (v.toStringRef() != signature(trainer))
    throw input_error(fmt::format("{}: the checkpoint is of another model or layer selection", path));
  archive.read("identity", v);
  check_identity(path, nlohmann::json::parse(v.toStringRef()), identity);
  TrainPosition& p = trainer.position();
  archive.read("epoch", v);
  p.epoch = static_cast<int>(v.toInt());
  archive.read("step_in_epoch", v);
  p.step_in_epoch = v.toInt();
  archive.read("global_step", v);
  p.global_step = v.toInt();
  torch::Tensor sums, rng;
  archive.read("train_sums", sums);
  std::vector<double> train(sums.data_ptr<double>(), sums.data_ptr<double>() + sums.numel());
  if (train.size() == 4)  // ttq 0.2: loss, top1, top5, samples (all labeled)
    train = {train[0], train[0], 0, train[1], train[2], train[3], train[3]};
  p.train = Metrics::from_sums(train);
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
  read_kept_state(archive, trainer);
  c10::IValue lr, lr_reason;  // absent: --lr given, or a ttq before the probe (its rate was the usual one)
  if (archive.try_read("lr", lr) && archive.try_read("lr_reason", lr_reason))
    trainer.use_lr(lr.toDouble(), lr_reason.toStringRef());
  torch::serialize::InputArchive optimizer;
  archive.read("optimizer", optimizer);
  trainer.optimizer().load(optimizer);
}

}  // namespace

void load_checkpoint(Trainer& trainer, const std::string& path, const nlohmann::json& identity) {
  restore(trainer, verified_archive(path), path, identity);
}

std::string resume_from_checkpoints(Trainer& trainer, const std::string& dir, const nlohmann::json& identity) {
  const auto all = checkpoints_in(dir);
  if (all.empty()) throw input_error(fmt::format("--resume: no checkpoint in {}", dir));
  std::string newest_problem;
  for (auto it = all.rbegin(); it != all.rend(); ++it) {
    const std::string path = it->second.string();
    std::string archive;
    try {
      archive = verified_archive(path);  // corrupt files are skipped; other errors (options, model) are final
    } catch (const Error& e) {
      if (newest_problem.empty()) newest_problem = e.what();
      spdlog::warn("{}{}", e.what(), std::next(it) != all.rend()
                                         ? fmt::format("; falling back to {}", std::next(it)->second.string())
                                         : "");
      continue;
    }
    restore(trainer, archive, path, identity);
    return path;
  }
  throw input_error(fmt::format("--resume: no usable checkpoint in {} (newest: {})", dir, newest_problem));
}

}  // namespace ttq
