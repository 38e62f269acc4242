// Packed models: a ternary TorchScript model whose ternary linear and 2-D convolution layers call
// the ttq:: operators (core/ops) with their weights packed (2 bits a weight), so that the model
// runs as ternary in LibTorch and in PyTorch (after torch.ops.load_library("libttq_ops.so")).
#pragma once
#include <torch/script.h>

#include <map>
#include <set>
#include <string>
#include <vector>

#include "core/choices.h"
#include "core/data.h"
#include "core/layers.h"
#include "core/ternary.h"

namespace ttq {

// What a packed layer computes on: the float32 inputs (exact: the outputs equal the float32
// ternary model's up to summation order) or its inputs quantized to int8 on the fly (faster; the
// sums over the weights are exact, the inputs rounded to 8 bits): a linear layer's per row
// (ttq::linear_int8), a convolution's per sample (ttq::conv2d_int8).
enum class Activations { Float, Int8 };
inline constexpr Choice<Activations> kActivations[] = {
    {"float", Activations::Float, "exact, the float32 ternary model's outputs"},
    {"int8", Activations::Int8, "layers quantize their inputs to int8 on the fly, for speed"}};
constexpr const auto& choices(Activations) { return kActivations; }

// The plan's decisions: the layers that run packed, and those that stay float32 tensors with the
// op that keeps them so (core/layers.h).
struct PackReport {
  std::vector<std::string> packed;  // forward order
  std::vector<KeptFloat> kept_float;
  std::vector<std::string> folded;  // int8: the convolutions a BatchNorm was folded into
  std::vector<std::string> eight_bit;  // int8: the float linear layers kept in 8 bits
};

// The names of the buffers that replace a packed weight "conv1.weight" in its module.
std::string codes_name(const std::string& weight);   // "conv1.weight_codes"
std::string scales_name(const std::string& weight);  // "conv1.weight_scales"
// With int8 activations: the layer's calibrated int8 step of its inputs, one float (0: dynamic).
std::string input_step_name(const std::string& weight);  // "conv1.weight_input_step"

// Rewrites `module` in place: its forward becomes the inlined forward graph with every
// aten::linear and aten::conv2d whose weight is one of `layers` (the TTQ metadata's records,
// which give Wp and Wn) replaced by ttq::linear / ttq::conv2d on codes and scales registered
// beside the weight, and that weight emptied (ttq::linear_int8 / ttq::conv2d_int8 with int8
// activations). Layers with no linear or conv2d use stay float; other reads of a packed weight
// get it decoded (ttq::unpack). Input errors for a layer whose values are not {-Wn, 0, +Wp} of its
// record.
PackReport pack_module(torch::jit::Module& module, const std::vector<LayerRecord>& layers,
                       Activations activations = Activations::Float);

// Whether a layer's codes are stored tap-major, [out, kh, kw, in] rather than its weight's [out, in,
// kh, kw]: the convolutions of int8 models, whose kernel reads a pixel's channels for one tap at a
// time (ttq::conv2d_int8). The weight's shape still names the layer everywhere else.
bool tap_major(const std::vector<int64_t>& shape, Activations activations);

// The float32 weight of a packed layer, bit-exact, from its codes and scales in `module` (a model
// packed with `activations`).
torch::Tensor unpacked_weight(const torch::jit::Module& module, const LayerRecord& layer, Activations activations);

// With int8 activations: a convolution's [2, out] scale and shift of each output channel, and its
// clamp, [2]: min(max(scale · y + shift, floor), ceiling), applied as the kernels store y
// (ttq::conv2d_int8's out_affine and clamp; floor -inf and ceiling +inf where there is none).
std::string out_affine_name(const std::string& weight);  // "conv1.weight_out_affine"
std::string clamp_name(const std::string& weight);       // "conv1.weight_clamp"

// Int8 models (pack_module calls it): in each method of a class, `self.bn(self.conv(x))` where conv
// is an nn.Conv2d running ttq::conv2d_int8 and bn an nn.BatchNorm2d in evaluation mode with running
// statistics, in every instance of the class, becomes the convolution alone with the BatchNorm as
// its out_affine (bn(y) = y · γ/√(var+ε) + β − mean · γ/√(var+ε), exact up to rounding), and a ReLU
// (ReLU6) that alone takes the BatchNorm's output its clamp's floor of 0 (and ceiling of 6). A
// convolution kept float takes the fold as a call of ttq::conv2d_affine on its weight, rounded to 8
// bits a row once (<weight>_int8, <weight>_step: the bytes the operator would round it to per call)
// where it has one group. The BatchNorm modules and the float weight stay, unread by the program
// (set_aside_unread moves them out of the running model), so that the float model comes back
// bit-exact. Returns the folded convolutions' weights.
std::vector<std::string> fold_batch_norms(torch::jit::Module& module);

// Int8 models (ttq export, after pack_module and calibration): in each method of a class, `y + r`
// (aten::add, or add_ into y) where y is, alone, the output of a ttq::conv2d_int8 on the int8 kernels whose
// clamp leaves values unclamped (in every instance), directly or returned by method calls (inlined
// into the method to reach it), and a ReLU or ReLU6 that alone takes the sum: the convolution adds r
// as its residual as it stores each value and clamps after it, the clamp a constant of that call
// (the ReLU is the graph's, the same in every instance). ResNet's blocks, MobileNetV2's inverted
// residuals. The outputs are the same, bit for bit. Returns the fused convolutions' weights.
std::vector<std::string> fuse_residual_adds(torch::jit::Module& module);

// Calibrated int8 models (ttq export --calibrate, after fuse_residual_adds): every int8 convolution
// on the int8 kernels reads an output_step and a residual_step of its module (0: float32 output, a
// float32 residual), and each is decided on the whole program of each method of the model (every
// method call inlined, branches on a module's bool attribute taken as it has it): a packed
// convolution with a calibrated step whose output only int8 convolutions take, as their input (all
// on the same calibrated step) or as their residual, stores it as that input (uint8, q + 128 on the
// step: the bytes they would make of it) rather than float32, wherever its module is called; those
// taking it as a residual get that step as their residual_step. A layer's output reaches the next
// within a block, from block to block (through Sequential) and into the next block's residual add.
// The outputs are the same bit for bit where the bytes are an input; a residual carries the step's
// rounding, as PyTorch's quantized add does. Returns the chained convolutions' weights, in the order
// forward runs them.
std::string output_step_name(const std::string& weight);    // "conv1.weight_output_step"
std::string residual_step_name(const std::string& weight);  // "conv2.weight_residual_step"
std::vector<std::string> chain_int8_layers(torch::jit::Module& module);

// Int8 models (pack_module calls it, after fold_batch_norms): every float32 linear layer left (one
// the packing keeps float, as a classifier by the paper's rule: an attribute that only
// aten::linear reads, as its weight, a matrix of one shape in every instance of its class) is
// rounded to 8 bits per output channel (max |w| / 127) and runs ttq::linear_8bit on
// <weight>_int8 (rows 64-byte multiples apart), <weight>_step and its own <weight>_input_step,
// calibrated as the packed layers' are; the float weight is emptied. The way back restores it as
// its 8-bit values (q · step): the one part of an int8 model that does not come back bit-exact.
// Returns the layers' weights.
std::string eight_bit_name(const std::string& weight);   // "fc.weight_int8"
std::string weight_step_name(const std::string& weight);  // "fc.weight_step"
std::vector<std::string> eight_bit_linears(torch::jit::Module& module);

// Packed models, last before saving: the tensors among `candidates` (the model's own, before
// packing: those the way back restores) that none of the methods of `module` reads or sets, every
// call inlined (the BatchNorms folded into convolutions, the float weight of a convolution kept in 8
// bits), emptied and returned by name: the way back (restore_packed) takes them from an extra file,
// and the running model does not hold them. None where the program uses a module otherwise than
// through its attributes (a call through an interface) or a module has hooks; and never a tensor
// that a list, tuple or dict attribute also holds (an LSTM's weights, read through _flat_weights). A folded BatchNorm
// called alone then has no statistics; the packed layers' own buffers always stay.
std::map<std::string, torch::Tensor> set_aside_unread(torch::jit::Module& module,
                                                      const std::set<std::string>& candidates);

// Static int8 activations: runs `data` (in batches of `batch_size`, eval mode, no gradients) through
// `module`, packed with int8 activations, while the operators calibrate (ops::set_calibrating), so
// that each packed layer's input step becomes the largest step its inputs needed (max |x| / 127);
// the layers those samples never reach, and convolutions the int8 kernels do not take, stay dynamic
// (0). Returns each packed layer's step, in `packed`'s order.
struct CalibratedLayer {
  std::string name;
  float input_step = 0;
};
std::vector<CalibratedLayer> calibrate_packed(torch::jit::Module& module, const std::vector<std::string>& packed,
                                              const Dataset& data, const Preprocess& pre, int64_t batch_size);

// Input error naming the first packed layer whose codes or scales do not fit its record.
void check_packed_layers(const torch::jit::Module& module, const std::vector<LayerRecord>& layers,
                         const std::vector<std::string>& packed);

}  // namespace ttq
