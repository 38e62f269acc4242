// fuse_residual_adds (packed_model.h): a residual block's `relu(conv(x) + identity)` becomes one
// ttq::conv2d_int8 that adds the identity and clamps as it stores each value, so that no float pass
// over the activations is left for the add and the ReLU.
#include <torch/csrc/jit/passes/dead_code_elimination.h>

#include <cmath>
#include <map>
#include <optional>
#include <set>

#include "core/graph_passes.h"
#include "core/ops/packed.h"
#include "core/packed_graph.h"
#include "core/packed_model.h"

namespace ttq {
namespace {

using torch::jit::Graph, torch::jit::Node, torch::jit::Value;

// A ttq::conv2d_int8 node that can take a residual: on the int8 kernels, a clamp read from its
// module (of a folded BatchNorm, or the identity one), no residual yet.
bool takes_residual(const Node* conv) {
  return conv->kind() == kConvInt8 && conv->inputs().size() == kClamp + 1 &&
         conv->input(kResidual)->type()->kind() == c10::TypeKind::NoneType &&
         conv->input(kClamp)->node()->kind() == c10::prim::GetAttr && on_int8_kernels(conv);
}

// Whether `value` is, alone, what takes it sees of a ttq::conv2d_int8 that takes_residual: that
// op's output, or a method call's whose graph returns one (through further calls).
bool from_conv(const Value* value) {
  if (value->uses().size() != 1) return false;
  const Node* node = value->node();
  if (node->kind() == kConvInt8) return takes_residual(node);
  if (node->kind() != c10::prim::CallMethod) return false;
  const auto* method = called_method(node);
  return method && method->graph()->outputs().size() == 1 && from_conv(method->graph()->outputs()[0]);
}

// The conv node behind `value` (from_conv), its calls inlined into the caller's graph, a level at a
// time: the op then stands beside the add, reading its module's tensors through the inlined
// attribute reads. (The method's graph as it is now: its cached optimized graph, inlineCallTo's
// default, is fully inlined and may predate the passes since the model last ran.)
Node* inline_to_conv(Value* value) {
  while (value->node()->kind() == c10::prim::CallMethod) {
    auto* method = called_method(value->node());
    value = torch::jit::inlineCallTo(value->node(), method, method->graph().get()).at(0);
  }
  return value->node();
}

// Whether `node` is aten::add(a, b, 1) or aten::add_(a, b, 1) of two tensors (the fusion takes the
// convolution's output as either operand of the functional one: the float sum is the same both ways).
bool tensor_add(const Node* node) {
  if ((node->kind() != c10::aten::add && node->kind() != c10::aten::add_) || node->inputs().size() != 3) return false;
  const auto alpha = torch::jit::toIValue(node->input(2));
  const auto tensor = c10::TensorType::get();
  return alpha && ((alpha->isInt() && alpha->toInt() == 1) || (alpha->isDouble() && alpha->toDouble() == 1.0)) &&
         node->input(0)->type()->isSubtypeOf(*tensor) && node->input(1)->type()->isSubtypeOf(*tensor);
}

void tensor_adds(torch::jit::Block* block, std::vector<Node*>& found) {
  for (Node* node : block->nodes()) {
    if (tensor_add(node)) found.push_back(node);
    for (auto* inner : node->blocks()) tensor_adds(inner, found);
  }
}

// Every instance's clamp of the convolution at `path` leaves values unclamped (no ReLU folded into
// it: the one after the add is).
bool unclamped(const std::vector<std::pair<std::string, torch::jit::Module>>& instances, const std::string& path,
               const std::string& clamp) {
  for (const auto& [p, m] : instances)
    if (!torch::equal(submodule(m, path).attr(clamp).toTensor(), clamp_tensor({}))) return false;
  return true;
}

// Whether `node` runs in instance `m` as far as the graph says: not where an If on a bool attribute
// of self (MobileNetV2's use_res_connect) takes the other branch in m.
bool runs_in(const Node* node, const Graph& graph, const torch::jit::Module& m) {
  for (const torch::jit::Block* block = node->owningBlock(); block->owningNode(); block = block->owningNode()->owningBlock()) {
    const Node* branch = block->owningNode();
    const Node* cond = branch->kind() == c10::prim::If ? branch->input(0)->node() : nullptr;
    if (!cond || cond->kind() != c10::prim::GetAttr || cond->input() != graph.inputs()[0]) continue;
    const auto value = m.attr(cond->s(c10::attr::name));
    if (value.isBool() && value.toBool() != (block == branch->blocks()[0])) return false;
  }
  return true;
}

// The fusable adds of one method of a parent (`instances`: its instances) fused; returns their
// convolutions' weights, by path.
std::vector<std::string> fuse_in(Graph& graph, const std::vector<std::pair<std::string, torch::jit::Module>>& instances) {
  std::vector<Node*> adds;
  tensor_adds(graph.block(), adds);
  std::vector<std::string> fused;
  for (Node* add : adds) {
    const int operand = from_conv(add->input(0)) ? 0 : add->kind() == c10::aten::add && from_conv(add->input(1)) ? 1 : -1;
    if (operand < 0 || add->input(operand)->node()->owningBlock() != add->owningBlock()) continue;
    Node* conv = inline_to_conv(add->input(operand));
    Node* read = conv->input(kClamp)->node();
    const auto path = module_path(read->output(), graph);
    const std::string clamp_read = read->s(c10::attr::name), suffix = clamp_name("");
    if (!path || clamp_read.size() <= suffix.size() ||
        clamp_read.compare(clamp_read.size() - suffix.size(), suffix.size(), suffix) ||
        !unclamped(instances, *path, clamp_read))
      continue;
    // The identity may be computed after the convolution (ResNet's downsample): the op moves to the add.
    conv->moveBefore(add);
    conv->replaceInput(kResidual, add->input(1 - operand));
    const Clamp clamp = sole_clamp(add->output(), graph);
    if (clamp.node) {  // the ReLU's floor and ceiling: this call's own, the same in every instance
      torch::jit::WithInsertPoint guard(conv);
      conv->replaceInput(kClamp, graph.insertConstant(clamp_tensor(clamp)));
    }
    for (const auto& [p, m] : instances)
      if (runs_in(add, graph, m)) fused.push_back(join_path(join_path(p, *path), "weight"));
    Node* last = clamp.node ? clamp.node : add;
    last->output()->replaceAllUsesWith(conv->output());
    if (clamp.node) clamp.node->destroy();
    add->destroy();
  }
  return fused;
}

}  // namespace

std::vector<std::string> fuse_residual_adds(torch::jit::Module& module) {
  torch::NoGradGuard no_grad;
  auto [parents, instances] = module_types(module);
  std::vector<std::string> fused;
  for (const auto& parent : parents)
    for (auto* method : parent->methods()) {
      if (!method->isGraphFunction()) continue;
      const auto graph = torch::jit::toGraphFunction(*method).graph();
      for (auto& path : fuse_in(*graph, instances[parent])) fused.push_back(std::move(path));
      torch::jit::EliminateDeadCode(graph);
    }
  return fused;
}

}  // namespace ttq
