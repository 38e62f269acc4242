#include "formats/run_log.h"

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace ttq {
namespace {

using nlohmann::json;

json layers_json(const std::vector<LayerSnapshot>& layers) {
  json out = json::array();
  for (const auto& l : layers) {
    const double n = static_cast<double>(l.counts.total());
    out.push_back({{"name", l.name}, {"wp", l.wp}, {"wn", l.wn}, {"delta", l.delta},
                   {"neg", l.counts.neg / n}, {"zero", l.counts.zero / n}, {"pos", l.counts.pos / n},
                   {"negative_scale", l.wp < 0 || l.wn < 0}});
  }
  return out;
}

}  // namespace

RunLog::RunLog(const std::string& path, bool append)
    : path_(path), out_(path, append ? std::ios::app : std::ios::trunc) {
  if (!out_) throw input_error(fmt::format("cannot write the log {}", path));
}

void RunLog::write(const std::string& line) {
  out_ << line << '\n';
  out_.flush();  // readers (CI, ttq stats) may follow the file while it grows
  if (!out_) throw runtime_error(fmt::format("cannot write the log {}", path_));
}

void RunLog::run(const std::string& model, const std::string& data, const std::string& options_json) {
  write(json{{"type", "run"}, {"version", kRunLogVersion}, {"tool", "ttq " TTQ_VERSION}, {"model", model},
             {"data", data}, {"options", json::parse(options_json)}}
            .dump());
}

void RunLog::step(const StepProgress& p, const std::vector<LayerSnapshot>& layers) {
  write(json{{"type", "step"}, {"epoch", p.epoch}, {"step", p.global_step}, {"lr", p.lr}, {"loss", p.loss},
             {"layers", layers_json(layers)}}
            .dump());
}

void RunLog::epoch(const EpochRecord& r) {
  write(json{{"type", "epoch"}, {"epoch", r.epoch}, {"partial", r.partial}, {"step", r.step}, {"lr", r.lr}, {"loss", r.train.loss},
             {"train_top1", r.train.top1}, {"val_loss", r.val.loss}, {"val_top1", r.val.top1},
             {"val_top5", r.val.top5}, {"seconds", r.seconds}, {"layers", layers_json(r.layers)}}
            .dump());
}

}  // namespace ttq
