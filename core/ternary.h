// The TTQ math for one weight tensor (see ../shared/docs/algorithm.md): the threshold Δ, the
// scale initialisation, the differentiable ternarization and the code statistics.
#pragma once
#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "core/choices.h"
#include "core/code_counts.h"

namespace ttq {

// How Δ is chosen for a tensor. Both modes come from the paper.
enum class ThresholdMode {
  MaxScaled,  // Δ = t · max|x|, t in (0, 1); paper default t = 0.05
  Sparsity,   // Δ = the k-th smallest |x| with k = ⌊s·n⌋, s in [0, 1)
};

struct ThresholdSpec {
  ThresholdMode mode = ThresholdMode::MaxScaled;
  double value = 0.05;  // t for MaxScaled, s for Sparsity
};

inline constexpr Choice<ThresholdMode> kThresholdModes[] = {
    {"max-scaled", ThresholdMode::MaxScaled, "Δ = t·max|x| (the paper's default)"},
    {"sparsity", ThresholdMode::Sparsity, "Δ such that a fraction s of the weights is zero"}};
constexpr const auto& choices(ThresholdMode) { return kThresholdModes; }

// Throws a usage error when the value is outside its mode's range.
void validate(const ThresholdSpec& spec);

// Δ for tensor x, rounded to float32 so that `x > Δ` means the same in C++ and in Python.
// Weights with |x| <= Δ become zero.
float compute_threshold(const torch::Tensor& x, const ThresholdSpec& spec);

enum class ScaleInit {
  Mean,  // L2-optimal: Wp = mean(x | x > Δ), Wn = mean(-x | x < -Δ)
  Ones,  // the authors' code: Wp = Wn = 1
  Auto,  // the trainer decides (core/train.h); elsewhere Mean
};
inline constexpr Choice<ScaleInit> kScaleInits[] = {
    {"mean", ScaleInit::Mean, "Wp, Wn = mean |x| above / below the threshold, L2-optimal"},
    {"ones", ScaleInit::Ones, "Wp = Wn = 1, as the paper's authors (suits BatchNorm after each layer)"},
    {"auto", ScaleInit::Auto, "finetune: ones when a normalization (BatchNorm, LayerNorm, ...) takes the output of "
                              "every ternary layer, mean otherwise; quantize: mean"}};
constexpr const auto& choices(ScaleInit) { return kScaleInits; }

struct Scales {
  float wp = 1.0f;
  float wn = 1.0f;
};

// With Mean, a side that has no weights takes the other side's value (its scale never reaches
// the forward pass, and a symmetric start is the least surprising); both empty gives 0.
Scales init_scales(const torch::Tensor& x, float delta, ScaleInit init);

// w_t = +Wp where x > Δ, 0 where |x| <= Δ, -Wn where x < -Δ; differentiable with the authors'
// backward: dWp = Σ_{x>Δ} g, dWn = -Σ_{x<-Δ} g, dx = Wp·g | g | Wn·g. wp and wn are scalar
// tensors (any shape with one element); their gradients keep that shape.
torch::Tensor ternarize(const torch::Tensor& x, const torch::Tensor& wp, const torch::Tensor& wn,
                        float delta);

// How many weights fall on each ternary code for threshold Δ.
CodeCounts count_codes(const torch::Tensor& x, float delta);

// The one record of a ternary layer: what quantize plans, what the trainer reports at each step
// and writes at the end, what the TTQ metadata and the run log store, and what stats reads back.
struct LayerRecord {
  std::string name;
  std::vector<int64_t> shape;
  float wp = 0.0f;
  float wn = 0.0f;
  float delta = 0.0f;
  ThresholdSpec threshold;  // the mode and value that produced delta
  CodeCounts counts;
};

// A layer as it stands: Δ and code counts of `weight` under `threshold`, with the given scales.
LayerRecord measure_layer(const std::string& name, const torch::Tensor& weight, const ThresholdSpec& threshold,
                          Scales scales);
// The plan for a weight not yet ternary: measure_layer with scales from `init`.
LayerRecord plan_layer(const std::string& name, const torch::Tensor& weight, const ThresholdSpec& threshold,
                       ScaleInit init);
// Input error naming the layer when `weight` holds NaN or Inf: its Δ and scales would be meaningless
// (an Inf makes every other weight zero) and its metadata unreadable.
void check_finite(const std::string& name, const torch::Tensor& weight);

// The record named `name`, or nullptr.
const LayerRecord* find_layer(const std::vector<LayerRecord>& layers, const std::string& name);

}  // namespace ttq
