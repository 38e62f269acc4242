// Post-training ternarization of a whole module. What it returns is the layers' records; the TTQ
// metadata document that travels inside output files is formats/metadata.h's.
#pragma once
#include <torch/script.h>

#include <vector>

#include "core/layers.h"
#include "core/ternary.h"

namespace ttq {

struct QuantizeOptions {
  ThresholdSpec threshold;
  ScaleInit init = ScaleInit::Mean;
  Selection selection;
};

// Ternarizes the selected layers of `module` in place (weights become {-Wn, 0, +Wp}) and returns
// the record of each. Other tensors are left bit-for-bit unchanged.
std::vector<LayerRecord> quantize_module(torch::jit::Module& module, const QuantizeOptions& options);

}  // namespace ttq
