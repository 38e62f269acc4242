// The report of a .ttqz archive, shared by `ttq export` (after writing) and `ttq inspect`.
#include <cstdio>
#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "core/util.h"
#include "formats/json.h"

namespace ttq::cli {
namespace {

nlohmann::json archive_json(const ttqz::Archive& a, const ttqz::Summary& s, const std::string& source) {
  using nlohmann::json;
  json tensors = json::array();
  for (const auto& ts : s.tensors) {
    const auto& t = *ts.entry;
    json j = {{"name", t.name}, {"shape", t.shape}, {"numel", t.numel()},
              {"role", t.is_parameter ? "parameter" : "buffer"}, {"dtype", t.dtype},
              {"encoding", ttqz::to_string(t.encoding)}, {"stored_bytes", ts.stored_bytes},
              {"bits_per_weight", ts.bits_per_weight}};
    if (t.encoding == ttqz::Encoding::TernaryRans) {
      j["entropy_bits"] = ts.entropy_bits;
      j["wp"] = t.wp;
      j["wn"] = t.wn;
      j["sparsity"] = t.counts.sparsity();
      j["counts"] = t.counts;
    } else {
      j["stored_dtype"] = t.stored_dtype;
    }
    tensors.push_back(std::move(j));
  }
  return {{"file", source},
          {"format", "ttqz"},
          {"format_version", a.version},
          {"producer", a.producer},
          {"file_bytes", s.file_bytes},
          {"sections", a.sections.size()},
          {"program_bytes", s.program_bytes},
          {"metadata_bytes", s.metadata_bytes},
          {"tensors", tensors},
          {"totals",
           {{"ternary_weights", s.ternary_weights},
            {"ternary_bytes", s.ternary_bytes},
            {"ternary_bits_per_weight", s.ternary_bits_per_weight()},
            {"ternary_entropy_bits", s.ternary_entropy_bits()},
            {"other_raw_bytes", s.other_raw_bytes},
            {"bound_bytes", s.bound_bytes()},
            {"ratio_to_bound", s.bound_bytes() > 0 ? s.file_bytes / s.bound_bytes() : 0.0}}}};
}

void print_tensor_table(const ttqz::Summary& s) {
  size_t name_w = 6, shape_w = 5;
  for (const auto& ts : s.tensors) {
    name_w = std::max(name_w, ts.entry->name.size());
    shape_w = std::max(shape_w, join_shape(ts.entry->shape).size());
  }
  fmt::print("{:<{}}  {:<{}}  {:<12}  {:>8}  {:>10}  {:>9}  {:>8}\n", "tensor", name_w, "shape", shape_w,
             "encoding", "dtype", "stored", "bits/w", "entropy");
  for (const auto& ts : s.tensors) {
    const auto& t = *ts.entry;
    const bool ternary = t.encoding == ttqz::Encoding::TernaryRans;
    fmt::print("{:<{}}  {:<{}}  {:<12}  {:>8}  {:>10}  {:>9.4f}  {:>8}\n", t.name, name_w, join_shape(t.shape),
               shape_w, ttqz::to_string(t.encoding), ternary ? t.dtype : t.stored_dtype,
               human_bytes(static_cast<double>(ts.stored_bytes)), ts.bits_per_weight,
               ternary ? fmt::format("{:.4f}", ts.entropy_bits) : "-");
  }
  fmt::print("\n");
}

void print_totals(const ttqz::Archive& a, const ttqz::Summary& s, const std::optional<ExportInput>& input) {
  const auto ternary_layers = std::count_if(s.tensors.begin(), s.tensors.end(), [](const auto& ts) {
    return ts.entry->encoding == ttqz::Encoding::TernaryRans;
  });
  if (input)
    fmt::print("input    {}  {}\n", input->path, human_bytes(static_cast<double>(input->bytes)));
  fmt::print("archive  {}  ({} format {}, {} sections; program {}, metadata {})", human_bytes(double(s.file_bytes)),
             a.producer, a.version, a.sections.size(), human_bytes(double(s.program_bytes)),
             human_bytes(double(s.metadata_bytes)));
  if (input) fmt::print("  {:.2f}x smaller", static_cast<double>(input->bytes) / static_cast<double>(s.file_bytes));
  fmt::print("\n");
  if (s.ternary_weights > 0) {
    fmt::print("ternary  {} weights in {} layers: {:.4f} bits/weight, entropy {:.4f} ({:+.2f}%)\n",
               human_count(s.ternary_weights), ternary_layers, s.ternary_bits_per_weight(),
               s.ternary_entropy_bits(), 100.0 * (s.ternary_bits_per_weight() / s.ternary_entropy_bits() - 1.0));
  }
  fmt::print("bound    {} (codes at their entropy with their scales + other tensors at stored width); archive = {:.4f}x bound\n",
             human_bytes(s.bound_bytes()), s.bound_bytes() > 0 ? s.file_bytes / s.bound_bytes() : 0.0);
}

}  // namespace

void print_archive(const ttqz::Archive& archive, const std::string& source, bool json,
                   const std::optional<ExportInput>& input) {
  const ttqz::Summary s = ttqz::summarize(archive);
  if (json) {
    auto doc = archive_json(archive, s, source);
    if (input) {
      doc["input"] = input->path;
      doc["input_bytes"] = input->bytes;
      doc["ratio"] = static_cast<double>(input->bytes) / static_cast<double>(s.file_bytes);
    }
    fmt::print("{}\n", doc.dump(2));
  } else {
    if (!input) print_tensor_table(s);
    print_totals(archive, s, input);
  }
  std::fflush(stdout);
}

}  // namespace ttq::cli
