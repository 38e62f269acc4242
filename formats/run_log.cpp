#include "formats/run_log.h"

#include <nlohmann/json.hpp>

#include <filesystem>

#include "core/error.h"
#include "core/util.h"
#include "formats/json.h"

namespace ttq {
namespace {

using nlohmann::json;

// The layer records, with each code's fraction and the negative-scale flag for readers of the
// log that do not want to divide (CI scripts, jq).
json layers_json(const std::vector<LayerRecord>& layers) {
  json out = json::array();
  for (const auto& l : layers) {
    json j = l;
    const double n = static_cast<double>(l.counts.total());
    j.update({{"neg", l.counts.neg / n}, {"zero", l.counts.zero / n}, {"pos", l.counts.pos / n},
              {"negative_scale", l.wp < 0 || l.wn < 0}});
    out.push_back(std::move(j));
  }
  return out;
}

}  // namespace

namespace {

// A run killed while writing a record leaves a last line without its newline; appending to it would
// make that line unreadable. Cuts the file after its last complete line.
void cut_torn_last_line(const std::string& path) {
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  if (ec || size == 0) return;
  std::ifstream in(path, std::ios::binary);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (text.back() == '\n') return;
  const auto keep = text.rfind('\n') == std::string::npos ? 0 : text.rfind('\n') + 1;
  std::filesystem::resize_file(path, keep, ec);
  if (ec) throw runtime_error(fmt::format("cannot repair the log {}: {}", path, ec.message()));
  spdlog::warn("{}: removed a torn last line of {} bytes (the previous run was stopped while writing it)", path,
               text.size() - keep);
}

}  // namespace

RunLog::RunLog(const std::string& path, bool append) : path_(path), lock_(path, "the log " + path) {
  if (append) cut_torn_last_line(path);
  out_.open(path, append ? std::ios::app : std::ios::trunc);
  if (!out_) throw input_error(fmt::format("cannot write the log {}", path));
}

void RunLog::write(const std::string& line) {
  out_ << line << '\n';
  out_.flush();  // readers (CI, ttq stats) may follow the file while it grows
  if (!out_) throw runtime_error(fmt::format("cannot write the log {}", path_));
}

void RunLog::run(const std::string& model, const std::string& data, const RunOptions& options,
                 int64_t steps_per_epoch, const std::string& recipe) {
  json record{{"type", "run"}, {"version", kRunLogVersion}, {"tool", TTQ_TOOL},
              {"libtorch", libtorch_version()}, {"model", model},
              {"data", data}, {"options", options}, {"epochs", options.train.epochs},
              {"steps_per_epoch", steps_per_epoch}};
  if (!recipe.empty()) record["recipe"] = recipe;
  write(record.dump());
}

void RunLog::init(const std::vector<LayerRecord>& layers) {
  write(json{{"type", "init"}, {"step", 0}, {"layers", layers_json(layers)}}.dump());
}

void RunLog::step(const StepProgress& p, const std::vector<LayerRecord>& layers) {
  json record{{"type", "step"}, {"epoch", p.epoch}, {"step", p.global_step}, {"lr", p.lr}, {"loss", p.loss},
              {"samples_per_second", p.samples_per_second}};
  const Metrics terms = averaged(p.terms);
  if (terms.distill != 0) {  // the step's loss terms, when distilling
    if (terms.has_labels()) record["ce"] = terms.ce;
    record["distill"] = terms.distill;
  }
  record["layers"] = layers_json(layers);
  write(record.dump());
}

void RunLog::epoch(const EpochRecord& r) {
  json record = {{"type", "epoch"}};
  record.update(json(r));
  record["layers"] = layers_json(r.layers);
  write(record.dump());
}

void RunLog::probe(const LrProbe& p) {
  write(json{{"type", "probe"}, {"lr", p.lr}, {"seconds", p.seconds}, {"lrs", p.lrs}, {"losses", p.losses}}.dump());
}

void RunLog::end(const RunSummary& summary) {
  json record = {{"type", "end"}};
  record.update(json(summary));
  write(record.dump());
}

namespace {

std::vector<LayerRecord> read_layers(const json& record) { return record.at("layers").get<std::vector<LayerRecord>>(); }

// Keeps `points` ascending: a record at step s replaces what an earlier attempt logged from s on.
// An epoch record that ends on a logged step keeps that step's loss and lr.
void add_point(RunHistory& h, LoggedPoint p) {
  if (!p.loss && !h.points.empty() && h.points.back().step == p.step) {
    p.loss = h.points.back().loss;
    p.lr = h.points.back().lr;
  }
  while (!h.points.empty() && h.points.back().step >= p.step) h.points.pop_back();
  h.points.push_back(std::move(p));
}

void read_record(RunHistory& h, const json& r, const std::string& type) {
  if (type == "run") {
    h.model = r.at("model").get<std::string>();
    h.data = r.at("data").get<std::string>();
    h.tool = r.at("tool").get<std::string>();
    h.options = r.at("options").get<RunOptions>();
    h.epochs_planned = r.value("epochs", 0);
    h.steps_per_epoch = r.value("steps_per_epoch", int64_t{0});
  } else if (type == "init") {
    add_point(h, {integer_at(r, "step"), std::nullopt, std::nullopt, read_layers(r)});
  } else if (type == "step") {
    add_point(h, {integer_at(r, "step"), r.at("lr").get<double>(), r.at("loss").get<double>(), read_layers(r)});
  } else if (type == "epoch") {
    const auto e = r.get<EpochRecord>();
    while (!h.epochs.empty() && h.epochs.back().epoch >= e.epoch) h.epochs.pop_back();
    h.epochs.push_back(e);
    add_point(h, {e.step, std::nullopt, std::nullopt, read_layers(r)});
  } else if (type == "end") {
    h.end = r.get<RunSummary>();
  }  // other types: written by a later ttq, skipped (see run_log.h)
}

}  // namespace

RunHistory read_run_log(const std::string& path) {
  const std::vector<uint8_t> bytes = read_file(path);
  const std::string text(bytes.begin(), bytes.end());

  RunHistory h;
  size_t line_no = 0, start = 0;
  while (start < text.size()) {
    const size_t end = std::min(text.find('\n', start), text.size());
    const std::string line = text.substr(start, end - start);
    const bool last_unterminated = end == text.size();
    start = end + 1;
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const auto where = [&] { return fmt::format("{}: line {}", path, line_no); };
    json r;
    try {
      r = json::parse(line);
    } catch (const json::exception&) {
      const bool cut_record = last_unterminated && line.front() == '{';
      if (cut_record && !h.tool.empty()) {
        spdlog::warn("{} is torn (the run was stopped while writing it); read up to the line before", where());
        break;
      }
      if (h.tool.empty() && !cut_record) throw input_error(fmt::format("{}: not a ttq run log (finetune --log): line {} is not JSON", path, line_no));
      throw input_error(cut_record ? fmt::format("{} is truncated (was the run killed while writing?)", where())
                                   : fmt::format("{} is not JSON", where()));
    }
    const std::string type = r.is_object() ? r.value("type", "") : "";
    if (h.tool.empty() && type != "run")
      throw input_error(fmt::format("{}: not a ttq run log (the first record is not {{\"type\": \"run\"}})", path));
    if (type == "run") {
      const json version = r.value("version", json());
      if (!version.is_number_integer() || version.get<int>() < 1)
        throw input_error(fmt::format("{}: malformed run record (no valid \"version\")", where()));
      if (version.get<int>() != kRunLogVersion)
        throw input_error(fmt::format("{}: run log version {}; this ttq reads version {}{}", path, version.get<int>(),
                                      kRunLogVersion, version.get<int>() > kRunLogVersion ? " (upgrade ttq)" : ""));
    }
    try {
      read_record(h, r, type);
    } catch (const json::exception& e) {
      throw input_error(fmt::format("{}: malformed {} record ({})", where(), type, short_message(e.what())));
    }
  }
  if (line_no == 0 || h.tool.empty()) throw input_error(fmt::format("{}: empty log (no records)", path));
  if (h.steps_per_epoch == 0)
    for (const auto& e : h.epochs)
      if (!e.partial && e.epoch > 0) {
        h.steps_per_epoch = e.step / e.epoch;
        break;
      }
  return h;
}

}  // namespace ttq
