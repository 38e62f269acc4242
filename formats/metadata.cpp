#include "formats/metadata.h"

#include <limits>

#include "core/error.h"
#include "formats/json.h"

namespace ttq {

using nlohmann::json;

int64_t integer_at(const json& j, const char* key) {
  const json& v = j.at(key);
  if (!v.is_number_integer())
    throw json::type_error::create(302, std::string("'") + key + "' is not an integer: " + v.dump(), &v);
  return v.get<int64_t>();
}

void to_json(json& j, const CodeCounts& c) { j = {{"neg", c.neg}, {"zero", c.zero}, {"pos", c.pos}}; }

void from_json(const json& j, CodeCounts& c) {
  c = {integer_at(j, "neg"), integer_at(j, "zero"), integer_at(j, "pos")};
}

void to_json(json& j, const LayerRecord& l) {
  j = {{"name", l.name},      {"shape", l.shape},     {"wp", l.wp},
       {"wn", l.wn},          {"delta", l.delta},     {"mode", l.threshold.mode},
       {"threshold", l.threshold.value}, {"counts", l.counts}};
}

void from_json(const json& j, LayerRecord& l) {
  l.name = j.at("name").get<std::string>();
  l.shape = j.value("shape", std::vector<int64_t>{});
  l.wp = j.at("wp").get<float>();
  l.wn = j.at("wn").get<float>();
  l.delta = j.at("delta").get<float>();
  if (j.contains("mode")) l.threshold = {j["mode"].get<ThresholdMode>(), j.at("threshold").get<double>()};
  if (j.contains("counts") || !j.contains("zero")) {
    l.counts = j.at("counts").get<CodeCounts>();
  } else {  // a 0.1.0 run log: fractions only, kept to nine digits
    constexpr double kScale = 1e9;
    const auto part = [&](const char* k) { return static_cast<int64_t>(std::llround(j.at(k).get<double>() * kScale)); };
    l.counts = {part("neg"), part("zero"), part("pos")};
  }
}

void to_json(json& j, const QuantizeOptions& o) {
  j = {{"mode", o.threshold.mode},
       {"threshold", o.threshold.value},
       {"init", o.init},
       {"include", o.selection.include},
       {"exclude", o.selection.exclude},
       {"quantize_first", o.selection.quantize_first},
       {"quantize_last", o.selection.quantize_last}};
  if (!o.selection.only.empty()) j["only"] = o.selection.only;
}

void from_json(const json& j, QuantizeOptions& o) {
  o.threshold = {j.at("mode").get<ThresholdMode>(), j.at("threshold").get<double>()};
  o.init = j.at("init").get<ScaleInit>();
  o.selection = {j.at("include").get<std::vector<std::string>>(), j.at("exclude").get<std::vector<std::string>>(),
                 j.at("quantize_first").get<bool>(), j.at("quantize_last").get<bool>(),
                 j.value("only", std::vector<std::string>{})};
}

void to_json(json& j, const RunOptions& r) {
  const TrainOptions& t = r.train;
  j = {{"epochs", t.epochs},       {"max_steps", t.max_steps},   {"batch_size", t.batch_size},
       {"optimizer", t.optimizer}, {"lr", t.lr},                 {"momentum", t.momentum},
       {"weight_decay", t.weight_decay}, {"scale_decay", t.scale_decay}, {"scale_lr_mult", t.scale_lr_mult},
       {"schedule", t.schedule},   {"milestones", t.milestones}, {"gamma", t.gamma},
       {"seed", t.seed},           {"fp", t.fp},                 {"keep", t.keep},   {"on_divergence", t.on_divergence},
       {"precision", t.precision}, {"memory_format", t.memory_format},                   {"threads", r.threads},
       {"subset", r.subset},       {"world_size", r.world_size}};
  j.update(json(t.quant));
  j.update(json(t.objective));
}

void from_json(const json& j, RunOptions& r) {
  TrainOptions& t = r.train;
  const TrainOptions d;
  t.epochs = j.value("epochs", d.epochs);
  t.max_steps = j.value("max_steps", d.max_steps);
  t.batch_size = j.value("batch_size", d.batch_size);
  t.optimizer = j.value("optimizer", d.optimizer);
  t.lr = j.value("lr", d.lr);
  t.momentum = j.value("momentum", d.momentum);
  t.weight_decay = j.value("weight_decay", d.weight_decay);
  t.scale_decay = j.value("scale_decay", d.scale_decay);
  t.scale_lr_mult = j.value("scale_lr_mult", d.scale_lr_mult);
  t.schedule = j.value("schedule", d.schedule);
  t.milestones = j.value("milestones", d.milestones);
  t.gamma = j.value("gamma", d.gamma);
  t.seed = j.value("seed", d.seed);
  t.fp = j.value("fp", d.fp);
  t.keep = j.value("keep", Keep::Last);  // runs before --keep kept the last state
  t.on_divergence = j.value("on_divergence", OnDivergence::Continue);  // and did not go back
  t.precision = j.value("precision", Precision::Fp32);                // nor autocast
  t.memory_format = j.value("memory_format", MemoryFormat::Contiguous);
  if (j.contains("include")) {
    t.quant = j.get<QuantizeOptions>();
  } else {  // logs of ttq 0.1.0 record the threshold and init, not the selection
    if (j.contains("mode")) t.quant.threshold = {j["mode"].get<ThresholdMode>(), j.at("threshold").get<double>()};
    t.quant.init = j.value("init", d.quant.init);
  }
  t.objective = j.get<ObjectiveOptions>();
  r.threads = j.value("threads", 0);
  r.subset = j.value("subset", int64_t{0});
  r.world_size = j.value("world_size", 1);
}

void to_json(json& j, const ObjectiveOptions& o) {
  j = {{"model_output", o.output},        {"distill", o.distill},   {"teacher", o.teacher},
       {"distill_loss", o.loss},       {"distill_temperature", o.temperature}, {"distill_alpha", o.alpha}};
}

void from_json(const json& j, ObjectiveOptions& o) {
  const ObjectiveOptions d;
  o.output = j.value("model_output", d.output);
  o.distill = j.value("distill", d.distill);
  o.teacher = j.value("teacher", d.teacher);
  o.loss = j.value("distill_loss", d.loss);
  o.temperature = j.value("distill_temperature", d.temperature);
  o.alpha = j.value("distill_alpha", 0.0);  // runs before distillation: cross-entropy alone
}

void metrics_to_json(json& j, const Metrics& m, const std::string& prefix, bool with_terms) {
  for (const auto& v : measured_metrics(m, with_terms)) j[prefix + v.name] = v.value;
}

Metrics metrics_from_json(const json& j, const std::string& prefix) {
  Metrics m;
  m.loss = j.value(prefix + "loss", 0.0);
  if (j.contains(prefix + "top1")) {
    m.top1 = j.at(prefix + "top1").get<double>();
    m.top5 = j.value(prefix + "top5", m.top1);
    m.labeled = 1;  // labeled samples were counted: only that there were any is kept
  }
  m.ce = j.value(prefix + "ce", m.labeled ? m.loss : 0.0);
  m.distill = j.value(prefix + "distill", 0.0);
  if (j.contains(prefix + "agreement")) m.agreement = j[prefix + "agreement"].get<double>();
  if (j.contains(prefix + "rel_mse")) m.rel_mse = j[prefix + "rel_mse"].get<double>();
  return m;
}

void to_json(json& j, const EpochRecord& e) {
  j = {{"epoch", e.epoch}, {"partial", e.partial}, {"step", e.step}, {"lr", e.lr}, {"seconds", e.seconds}};
  metrics_to_json(j, e.train, "train_", true);
  metrics_to_json(j, e.val, "val_", false);
  j["loss"] = e.train.loss;  // the names of ttq 0.2's logs, which readers of the log know
  j.erase("train_loss");
}

void from_json(const json& j, EpochRecord& e) {
  e.epoch = static_cast<int>(integer_at(j, "epoch"));
  e.partial = j.at("partial").get<bool>();
  e.step = integer_at(j, "step");
  e.lr = j.at("lr").get<double>();
  e.train = metrics_from_json(j, "train_");
  e.train.loss = j.at("loss").get<double>();
  e.val = metrics_from_json(j, "val_");
  e.val.loss = j.at("val_loss").get<double>();
  e.seconds = j.at("seconds").get<double>();
}

void to_json(json& j, const RunSummary& s) {
  j = {{"data", s.data}, {"options", s.options}, {"steps", s.steps}};
  if (!s.recipe.empty()) j["recipe"] = s.recipe;
  if (s.kept_epoch >= 0) j["kept_epoch"] = s.kept_epoch;
  if (s.recoveries > 0) j["recoveries"] = s.recoveries;
  metrics_to_json(j, s.val, "val_", false);
}

void from_json(const json& j, RunSummary& s) {
  s.data = j.value("data", "");
  if (j.contains("options")) s.options = j["options"].get<RunOptions>();
  s.steps = j.value("steps", int64_t{0});
  s.val = metrics_from_json(j, "val_");
  s.recipe = j.value("recipe", "");
  s.kept_epoch = j.value("kept_epoch", -1);
  s.recoveries = j.value("recoveries", 0);
}

void to_json(json& j, const BudgetChoice& c) {
  json layers = json::array();
  for (const auto& l : c.layers)
    layers.push_back({{"name", l.name}, {"drop", l.drop}, {"ternary", l.ternary}, {"reason", l.reason}});
  j = {{"budget", c.budget}, {"metric", c.metric}, {"data", c.data},   {"samples", c.samples},
       {"fp_value", c.fp_value}, {"drop", c.drop}, {"ratio", c.ratio}, {"layers", layers}};
}

void from_json(const json& j, BudgetChoice& c) {
  const auto number = [](const json& v) { return v.is_null() ? std::numeric_limits<double>::infinity() : v.get<double>(); };
  c.budget = j.at("budget").get<std::string>();
  c.metric = j.at("metric").get<SensitivityMetric>();
  c.data = j.at("data").get<std::string>();
  c.samples = integer_at(j, "samples");
  c.fp_value = j.at("fp_value").get<double>();
  c.drop = number(j.at("drop"));
  c.ratio = j.at("ratio").get<double>();
  c.layers.clear();
  for (const auto& l : j.at("layers"))
    c.layers.push_back({l.at("name").get<std::string>(), number(l.at("drop")), l.at("ternary").get<bool>(),
                        l.at("reason").get<std::string>()});
}

std::string metadata_to_json(const ModelMetadata& meta) {
  json doc = {
      {"format", "ttq-metadata"},
      {"version", ModelMetadata::kVersion},
      {"tool", fmt::format("ttq {}", meta.tool_version)},
      {"libtorch", meta.libtorch_version},
      {"command", meta.command},
      {"options", meta.options},
      {"layers", meta.layers},
  };
  if (meta.run) doc["run"] = *meta.run;
  if (meta.budget) doc["budget"] = *meta.budget;
  if (!meta.packed.empty()) {
    doc["packed"] = meta.packed;
    doc["activations"] = meta.activations;
    if (meta.calibration)
      doc["calibration"] = {{"data", meta.calibration->data}, {"samples", meta.calibration->samples}};
  }
  return doc.dump(2);
}

namespace {

ModelMetadata parse_fields(const json& doc) {
  ModelMetadata meta;
  const std::string tool = doc.at("tool").get<std::string>();
  meta.tool_version = tool.rfind("ttq ", 0) == 0 ? tool.substr(4) : tool;
  meta.libtorch_version = doc.value("libtorch", std::string{});  // absent before ttq recorded it
  meta.command = doc.at("command").get<std::string>();
  meta.options = doc.at("options").get<QuantizeOptions>();
  meta.layers = doc.at("layers").get<std::vector<LayerRecord>>();
  if (doc.contains("run")) meta.run = doc["run"].get<RunSummary>();
  if (doc.contains("budget")) meta.budget = doc["budget"].get<BudgetChoice>();
  meta.packed = doc.value("packed", std::vector<std::string>{});
  meta.activations = doc.value("activations", std::string{});
  if (doc.contains("calibration"))
    meta.calibration = ModelMetadata::Calibration{doc["calibration"].at("data").get<std::string>(),
                                                  doc["calibration"].at("samples").get<int64_t>()};
  return meta;
}

}  // namespace

ModelMetadata metadata_from_json(const std::string& text, const std::string& source) {
  const auto malformed = [&](const char* why) {
    return input_error(fmt::format("{}: malformed TTQ metadata in {} ({})", source, kMetadataFile, why));
  };
  json doc;
  try {
    doc = json::parse(text);
  } catch (const json::exception& e) {
    throw malformed(e.what());
  }
  if (!doc.is_object() || doc.value("format", "") != "ttq-metadata" || !doc.contains("version") ||
      !doc["version"].is_number_integer())
    throw malformed("not a ttq-metadata document");
  const int version = doc["version"].get<int>();
  if (version > ModelMetadata::kVersion)
    throw input_error(fmt::format("{}: TTQ metadata version {} is newer than this ttq reads ({}); "
                                  "upgrade ttq", source, version, ModelMetadata::kVersion));
  try {
    return parse_fields(doc);
  } catch (const json::exception& e) {
    throw malformed(e.what());
  } catch (const Error& e) {
    throw malformed(e.what());
  }
}

}  // namespace ttq
