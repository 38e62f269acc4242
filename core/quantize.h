// Post-training ternarization of a whole module, and the record of what was done (the TTQ
// metadata that travels inside output files; formats/metadata.h writes and reads it).
#pragma once
#include <torch/script.h>

#include <string>
#include <vector>

#include "core/layers.h"
#include "core/ternary.h"

namespace ttq {

struct QuantizeOptions {
  ThresholdSpec threshold;
  ScaleInit init = ScaleInit::Mean;
  Selection selection;
};

// One ternarized layer: everything needed to interpret (and later re-encode) its weights.
struct LayerRecord {
  std::string name;
  std::vector<int64_t> shape;
  float wp = 0.0f;
  float wn = 0.0f;
  float delta = 0.0f;
  ThresholdSpec threshold;  // the mode and value that produced delta
  CodeCounts counts;
};

struct ModelMetadata {
  static constexpr int kVersion = 1;  // bump when fields change meaning
  std::string tool_version = TTQ_VERSION;
  std::string command;  // the ttq command that wrote the file
  QuantizeOptions options;
  std::vector<LayerRecord> layers;
  std::string run_json;  // finetune: a JSON object with the run's options and final metrics

  const LayerRecord* find(const std::string& name) const;
};

// The plan for one selected weight: Δ, scales and code counts, computed from the latent weights.
LayerRecord plan_layer(const std::string& name, const torch::Tensor& weight,
                       const ThresholdSpec& threshold, ScaleInit init);

// Ternarizes the selected layers of `module` in place (weights become {-Wn, 0, +Wp}) and returns
// the record of each. Other tensors are left bit-for-bit unchanged.
ModelMetadata quantize_module(torch::jit::Module& module, const QuantizeOptions& options);

}  // namespace ttq
