// What `inspect` shows (and `quantize` prints after its work): per-layer code statistics and the
// sizes of the model as FP32, with 2-bit codes, and at the entropy limit of the codes.
#pragma once
#include <torch/script.h>

#include <optional>
#include <string>
#include <vector>

#include "core/quantize.h"

namespace ttq {

enum class LayerKind {
  Ternary,  // weights hold only {-Wn, 0, +Wp}
  Planned,  // full precision now; `quantize` with the same flags would ternarize it (dry run)
  FullPrecision,
};
std::string to_string(LayerKind kind);

struct LayerReport {
  LayerRecord layer;  // name and shape always; scales, Δ and counts for ternary and planned layers
  int64_t numel = 0;
  LayerKind kind = LayerKind::FullPrecision;
  bool delta_known = false;  // false for full-precision layers and ternary ones without TTQ metadata

  bool coded() const { return kind != LayerKind::FullPrecision; }
  double bits() const { return coded() ? layer.counts.entropy_bits() : 32.0; }
  int64_t bytes_fp32() const { return numel * 4; }
  int64_t bytes_2bit() const { return coded() ? (numel * 2 + 7) / 8 : numel * 4; }
};

struct Totals {
  int64_t parameters = 0;        // all parameters of the model
  int64_t coded_parameters = 0;  // in ternary (or planned) layers
  int64_t coded_layers = 0;
  int64_t model_bytes = 0;       // every parameter and buffer at its stored width
  int64_t bytes_2bit = 0;        // codes at 2 bits per weight + the scales
  int64_t bytes_entropy = 0;     // each ternary layer at its bound (ternary_bound_bytes) + the rest
  double ratio_2bit() const;
  double ratio_entropy() const;
};

// The sizes of `module` with `layers` (its candidates) coded where coded(): the one count of
// inspect's totals and sensitivity's points.
Totals compute_totals(const torch::jit::Module& module, const std::vector<LayerReport>& layers);

struct ModelReport {
  bool dry_run = false;  // no ternary layer found: the report shows what `quantize` would do
  std::vector<LayerReport> layers;  // every quantizable weight, in forward order
  std::vector<KeptFloat> excluded;  // rank >= 2 parameters that are not layer weights, and their use
  Totals totals;
};

// Ternary layers are recognised from their values (and named by `recorded`, the layers of the
// TTQ metadata, when present); a model without any is reported as a dry run of `quantize` with
// `options`.
ModelReport inspect_module(const torch::jit::Module& module, const std::optional<std::vector<LayerRecord>>& recorded,
                           const QuantizeOptions& options);

}  // namespace ttq
