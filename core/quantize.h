// Which layers a run ternarizes and how their scales start (plan_layers, shared by quantize, the
// trainer and inspect's dry run), and post-training ternarization of a whole module. What it
// returns is the layers' records; the TTQ metadata document that travels inside output files is
// formats/metadata.h's.
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

// What the plan is for: a one-shot quantization and a finetune run need at least one layer
// selected and finite weights; finetune trains the scales, which is what `--init auto` weighs;
// inspect's dry run shows what quantize would do, whatever the flags leave.
enum class PlanPurpose { Quantize, Finetune, DryRun };

struct LayerPlan {
  std::vector<Candidate> candidates;  // forward order, the selected ones marked
  std::vector<LayerRecord> layers;    // plan_layer of each selected candidate, forward order
  std::vector<torch::Tensor> weights; // and its weight, shared with the module
  ScaleInit init = ScaleInit::Mean;   // `options.init` with auto decided: never Auto
  // Why: which selected layers have no normalization taking their output, which suits mean.
  std::string init_reason;
  bool every_layer_normalized = true;
};

// The one place that validates the threshold (a usage error) and selects layers (apply_selection,
// or mark_selected for a dry run). `--init auto` gives ones for a finetune run in which a
// normalization (BatchNorm, LayerNorm, ...) takes every ternary layer's output, mean otherwise.
LayerPlan plan_layers(const torch::jit::Module& module, const QuantizeOptions& options, PlanPurpose purpose);

// Sets `weight` (a parameter, changed in place) to {-Wn, 0, +Wp} by its record's Δ and scales.
void ternarize_in_place(torch::Tensor weight, const LayerRecord& record);

// Ternarizes the selected layers of `module` in place (weights become {-Wn, 0, +Wp}) and returns
// the record of each. Other tensors are left bit-for-bit unchanged.
std::vector<LayerRecord> quantize_module(torch::jit::Module& module, const QuantizeOptions& options);

}  // namespace ttq
