// Packed models: a ternary TorchScript model whose ternary linear and 2-D convolution layers call
// the ttq:: operators (core/ops) with their weights packed (2 bits a weight), so that the model
// runs as ternary in LibTorch and in PyTorch (after torch.ops.load_library("libttq_ops.so")).
#pragma once
#include <torch/script.h>

#include <string>
#include <vector>

#include "core/ternary.h"

namespace ttq {

// A ternary layer that stays a float32 tensor in the packed model, and why: the op that uses it
// ("embedding", "lstm", "slice" for an attention projection read in parts, ...).
struct FloatLayer {
  std::string name;
  std::string use;
};
struct PackReport {
  std::vector<std::string> packed;  // forward order
  std::vector<FloatLayer> kept_float;
};

// The names of the buffers that replace a packed weight "conv1.weight" in its module.
std::string codes_name(const std::string& weight);   // "conv1.weight_codes"
std::string scales_name(const std::string& weight);  // "conv1.weight_scales"

// Rewrites `module` in place: its forward becomes the inlined forward graph with every
// aten::linear and aten::conv2d whose weight is one of `layers` (the TTQ metadata's records,
// which give Wp and Wn) replaced by ttq::linear / ttq::conv2d on codes and scales registered
// beside the weight, and that weight emptied. Layers used any other way stay float. Input errors
// for a layer whose values are not {-Wn, 0, +Wp} of its record.
PackReport pack_module(torch::jit::Module& module, const std::vector<LayerRecord>& layers);

// The float32 weight of a packed layer, bit-exact, from its codes and scales in `module`.
torch::Tensor unpacked_weight(const torch::jit::Module& module, const LayerRecord& layer);

// Input error naming the first packed layer whose codes or scales do not fit its record.
void check_packed_layers(const torch::jit::Module& module, const std::vector<LayerRecord>& layers,
                         const std::vector<std::string>& packed);

}  // namespace ttq
