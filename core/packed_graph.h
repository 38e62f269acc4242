// What the int8 graph passes share (packed_fold.cpp: fold_batch_norms; packed_residual.cpp:
// fuse_residual_adds; packed_chain.cpp: chain_int8_layers; packed_linear.cpp: eight_bit_linears):
// the arguments of ttq::conv2d_int8 nodes, and the patterns they look for in a parent's methods.
#pragma once
#include <torch/csrc/jit/ir/ir.h>
#include <torch/script.h>

#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace ttq {

inline const c10::Symbol kConvInt8 = c10::Symbol::fromQualString("ttq::conv2d_int8");
// Its arguments codes, shape, groups, input_step, out_affine, output_step, residual, residual_step
// and clamp (ops.cpp's schema).
constexpr size_t kCodes = 1, kShape = 3, kGroups = 8, kInputStep = 9, kOutAffine = 10, kOutputStep = 11,
                 kResidual = 12, kResidualStep = 13, kClamp = 14;
inline const c10::Symbol kConvAffine = c10::Symbol::fromQualString("ttq::conv2d_affine");
// Its arguments weight, groups, input_step and output_step.
constexpr size_t kAffineWeight = 1, kAffineGroups = 6, kAffineInputStep = 8, kAffineOutputStep = 12;

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
// `self.relu(value)` of an nn.ReLU or nn.ReLU6, F.relu or F.relu6, aten::relu(_), aten::relu6 or
// aten::hardtanh(_) with constant bounds (nn.ReLU6 inlined), where it alone takes `value`.
Clamp sole_clamp(torch::jit::Value* value, const torch::jit::Graph& graph);
// The operators' clamp argument: [floor, ceiling], float32 (-inf and +inf where there is none).
torch::Tensor clamp_tensor(const Clamp& clamp);

// The ttq::conv2d_int8 nodes of a block, in its nested blocks too, in order.
void conv_nodes(torch::jit::Block* block, std::vector<torch::jit::Node*>& found);

// Whether a ttq::conv2d_int8 node runs on the int8 kernels (ops::conv_runs_int8 of its constant
// shape and groups).
bool on_int8_kernels(const torch::jit::Node* conv);

// The graph of the method a prim::CallMethod node calls, or nullptr.
torch::jit::GraphFunction* called_method(const torch::jit::Node* call);

// The path from the graph's `self` to the module whose attribute `read` (a prim::GetAttr's output)
// reads ("conv2", "layer1.0.conv2"; "" for self's own), none where it is not read through attributes.
std::optional<std::string> module_path(const torch::jit::Value* read, const torch::jit::Graph& graph);

// A method's graph (a copy) with every method call inlined, each callee's graph as it is now. Calls
// are not recursive in TorchScript, so the inlining ends; a program still calling after many rounds
// is reported, never a hang.
std::shared_ptr<torch::jit::Graph> inlined_program(torch::jit::Function& method);

// The path of a module value from the graph's `self` ("" for self), none where it is not reached
// through attributes.
std::optional<std::string> path_of_module(const torch::jit::Value* m, const torch::jit::Graph& graph);

// The module's class types, in the order they are first met, and each one's instances (path, module).
using Instances = std::map<c10::ClassTypePtr, std::vector<std::pair<std::string, torch::jit::Module>>>;
std::pair<std::vector<c10::ClassTypePtr>, Instances> module_types(const torch::jit::Module& module);

// The submodule of m at "a.b.c" (m itself at "").
torch::jit::Module submodule(torch::jit::Module m, const std::string& path);

}  // namespace ttq
