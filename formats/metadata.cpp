#include "formats/metadata.h"

#include <nlohmann/json.hpp>

#include "core/error.h"

namespace ttq {

using nlohmann::json;

std::string metadata_to_json(const ModelMetadata& meta) {
  const auto& o = meta.options;
  json layers = json::array();
  for (const auto& l : meta.layers) {
    layers.push_back({{"name", l.name},
                      {"shape", l.shape},
                      {"wp", l.wp},
                      {"wn", l.wn},
                      {"delta", l.delta},
                      {"mode", to_string(l.threshold.mode)},
                      {"threshold", l.threshold.value},
                      {"counts", {{"neg", l.counts.neg}, {"zero", l.counts.zero}, {"pos", l.counts.pos}}}});
  }
  json doc = {
      {"format", "ttq-metadata"},
      {"version", ModelMetadata::kVersion},
      {"tool", fmt::format("ttq {}", meta.tool_version)},
      {"command", meta.command},
      {"options",
       {{"mode", to_string(o.threshold.mode)},
        {"threshold", o.threshold.value},
        {"init", to_string(o.init)},
        {"include", o.selection.include},
        {"exclude", o.selection.exclude},
        {"quantize_first", o.selection.quantize_first},
        {"quantize_last", o.selection.quantize_last}}},
      {"layers", layers},
  };
  if (!meta.run_json.empty()) doc["run"] = json::parse(meta.run_json);
  return doc.dump(2);
}

namespace {

ModelMetadata parse_fields(const json& doc) {
  ModelMetadata meta;
  const std::string tool = doc.at("tool").get<std::string>();
  meta.tool_version = tool.rfind("ttq ", 0) == 0 ? tool.substr(4) : tool;
  meta.command = doc.at("command").get<std::string>();
  const auto& o = doc.at("options");
  meta.options.threshold = {threshold_mode_from_string(o.at("mode").get<std::string>()),
                            o.at("threshold").get<double>()};
  meta.options.init = scale_init_from_string(o.at("init").get<std::string>());
  meta.options.selection = {o.at("include").get<std::vector<std::string>>(),
                            o.at("exclude").get<std::vector<std::string>>(),
                            o.at("quantize_first").get<bool>(), o.at("quantize_last").get<bool>()};
  if (doc.contains("run")) meta.run_json = doc["run"].dump();
  for (const auto& l : doc.at("layers")) {
    LayerRecord r;
    r.name = l.at("name").get<std::string>();
    r.shape = l.at("shape").get<std::vector<int64_t>>();
    r.wp = l.at("wp").get<float>();
    r.wn = l.at("wn").get<float>();
    r.delta = l.at("delta").get<float>();
    r.threshold = {threshold_mode_from_string(l.at("mode").get<std::string>()),
                   l.at("threshold").get<double>()};
    const auto& c = l.at("counts");
    r.counts = {c.at("neg").get<int64_t>(), c.at("zero").get<int64_t>(), c.at("pos").get<int64_t>()};
    meta.layers.push_back(std::move(r));
  }
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
