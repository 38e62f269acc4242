// What the int8 graph passes share (packed_fold.cpp: fold_batch_norms, chain_int8_layers;
// packed_residual.cpp: fuse_residual_adds; packed_linear.cpp: eight_bit_linears): the arguments of
// ttq::conv2d_int8 nodes, and the patterns they look for in a parent's methods.
#pragma once
#include <torch/csrc/jit/ir/ir.h>
#include <torch/script.h>

#include <limits>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace ttq {

inline const c10::Symbol kConvInt8 = c10::Symbol::fromQualString("ttq::conv2d_int8");
// Its arguments shape, groups, out_affine, output_step and residual (ops.cpp's schema).
constexpr size_t kShape = 3, kGroups = 8, kOutAffine = 10, kOutputStep = 11, kResidual = 12;

// Whether `type` is a class whose qualified name ends in `suffix` (".BatchNorm2d").
bool type_named(const c10::TypePtr& type, const std::string& suffix);

// `self.NAME.forward(...)` in a method of `self` (its first input): NAME, else "".
std::string child_call(const torch::jit::Node* node, const torch::jit::Graph& graph);

// The graph of a class's forward, or nullptr.
std::shared_ptr<torch::jit::Graph> forward_graph(const c10::ClassTypePtr& type);

// A ReLU or ReLU6 that alone takes a value: the bounds it clamps to, and its node (nullptr: none).
struct Clamp {
  torch::jit::Node* node = nullptr;
  double floor = -std::numeric_limits<double>::infinity(), ceiling = std::numeric_limits<double>::infinity();
};
// `self.relu(value)` of an nn.ReLU or nn.ReLU6, aten::relu(_), aten::relu6 or aten::hardtanh(_) with
// constant bounds (nn.ReLU6 inlined), where it alone takes `value`.
Clamp sole_clamp(torch::jit::Value* value, const torch::jit::Graph& graph);

// The module's class types, in the order they are first met, and each one's instances (path, module).
using Instances = std::map<c10::ClassTypePtr, std::vector<std::pair<std::string, torch::jit::Module>>>;
std::pair<std::vector<c10::ClassTypePtr>, Instances> module_types(const torch::jit::Module& module);

// The submodule of m at "a.b.c" (m itself at "").
torch::jit::Module submodule(torch::jit::Module m, const std::string& path);

}  // namespace ttq
