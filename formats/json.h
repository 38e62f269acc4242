// The JSON form of every record ttq writes to files or prints with --json: one to_json/from_json
// pair per type (nlohmann's ADL convention), so each field is named in exactly one place. The
// TTQ metadata, the run log, checkpoints' signatures and the CLI's JSON output all use these.
#pragma once
#include <nlohmann/json.hpp>

#include "core/choices.h"
#include "formats/metadata.h"

namespace ttq {

// Enums as their names from the choice table; an unknown name is a json::other_error.
template <class E, class = decltype(choices(E{}))>
void to_json(nlohmann::json& j, E value) {
  j = choice_name(value);
}
template <class E, class = decltype(choices(E{}))>
void from_json(const nlohmann::json& j, E& value) {
  const auto parsed = parse_choice<E>(j.get<std::string>());
  if (!parsed)
    throw nlohmann::json::other_error::create(
        501, "'" + j.get<std::string>() + "' is not one of " + choice_names<E>(), &j);
  value = *parsed;
}

// j[key] as an integer; a json::type_error (reported as a malformed record) for 1e23 or 2.5, which
// get<int64_t>() would silently turn into garbage.
int64_t integer_at(const nlohmann::json& j, const char* key);

void to_json(nlohmann::json& j, const CodeCounts& c);    // {"neg", "zero", "pos"}
void from_json(const nlohmann::json& j, CodeCounts& c);
// {"name", "shape", "wp", "wn", "delta", "mode", "threshold", "counts"}. Reading also accepts the
// run logs of ttq 0.1.0, whose layers carry fractions ("neg", "zero", "pos") instead of counts.
void to_json(nlohmann::json& j, const LayerRecord& l);
void from_json(const nlohmann::json& j, LayerRecord& l);
// {"mode", "threshold", "init", "include", "exclude", "quantize_first", "quantize_last"}
void to_json(nlohmann::json& j, const QuantizeOptions& o);
void from_json(const nlohmann::json& j, QuantizeOptions& o);
// The trainer's options flattened with RunOptions' own: {"epochs", "batch_size", "lr", ..., "threads",
// "subset", "world_size"} and the quantization fields above. Reading fills absent keys with defaults.
void to_json(nlohmann::json& j, const RunOptions& o);
void from_json(const nlohmann::json& j, RunOptions& o);
// {"model_output", "distill", "teacher", "distill_loss", "distill_temperature", "distill_alpha"}
void to_json(nlohmann::json& j, const ObjectiveOptions& o);
void from_json(const nlohmann::json& j, ObjectiveOptions& o);
// Metrics as PREFIX + "loss", "top1", "top5" (labeled data), "ce" and "distill" (`with_terms`, when
// distilling), "agreement" and "rel_mse" (against a teacher): present only when measured.
void metrics_to_json(nlohmann::json& j, const Metrics& m, const std::string& prefix, bool with_terms);
Metrics metrics_from_json(const nlohmann::json& j, const std::string& prefix);
// {"epoch", "partial", "step", "lr", "loss", "train_top1", "train_ce", "train_distill", "val_loss",
// "val_top1", "val_top5", "val_agreement", "val_rel_mse", "seconds"}: the epoch's numbers (the run
// log adds its layers).
void to_json(nlohmann::json& j, const EpochRecord& e);
void from_json(const nlohmann::json& j, EpochRecord& e);
// {"data", "options", "steps", "val_loss", "val_top1", "val_top5", "val_agreement", "val_rel_mse"}
void to_json(nlohmann::json& j, const RunSummary& s);
void from_json(const nlohmann::json& j, RunSummary& s);

// {"budget", "metric", "data", "samples", "fp_value", "drop", "ratio", "layers": [{"name", "drop",
// "ternary", "reason"}]}; a drop that was not finite is null.
void to_json(nlohmann::json& j, const BudgetChoice& c);
void from_json(const nlohmann::json& j, BudgetChoice& c);

}  // namespace ttq
