// eight_bit_linears (packed_model.h): the float linear layers of an int8 model (those the packing
// keeps float: a classifier, by the paper's rule) rounded to 8 bits per output channel and run by
// ttq::linear_8bit, so that no float32 weight is left to read or to hold.
#include <cmath>
#include <map>
#include <set>

#include "core/graph_passes.h"
#include "core/ops/packed.h"
#include "core/packed_graph.h"
#include "core/packed_model.h"

namespace ttq {
namespace {

using torch::jit::Graph, torch::jit::Node, torch::jit::Value;

// `aten::linear(x, self.NAME, bias)` in a graph of the class (its input 0 is self): NAME, else "".
std::string linear_weight(const Node* node, const Graph& graph) {
  if (node->kind() != c10::aten::linear || node->inputs().size() != 3) return "";
  const Node* read = node->input(1)->node();
  if (read->kind() != c10::prim::GetAttr || read->input() != graph.inputs()[0]) return "";
  return read->s(c10::attr::name);
}

// For each tensor of the module (by path from the root), whether every read of it in every method
// of every class is its own module's aten::linear weight (a parent may read a child's weight
// itself, as nn.MultiheadAttention reads out_proj.weight).
std::map<std::string, bool> linear_only(const std::vector<c10::ClassTypePtr>& types, Instances& instances) {
  std::map<std::string, bool> only;
  for (const auto& type : types)
    for (auto* method : type->methods()) {
      if (!method->isGraphFunction()) continue;
      const auto graph = torch::jit::toGraphFunction(*method).graph();
      for (const Read& read : reads_in(*graph)) {
        bool linear = read.path.find('.') == std::string::npos;
        for (const auto& use : read.node->output()->uses())
          linear = linear && use.offset == 1 && linear_weight(use.user, *graph) == read.path;
        for (const auto& [path, m] : instances[type]) {
          const auto [it, fresh] = only.try_emplace(join_path(path, read.path), linear);
          if (!fresh) it->second = it->second && linear;
        }
      }
    }
  return only;
}

// The attributes of `type` whose every read, in every instance, is its aten::linear's (linear_only).
std::set<std::string> linear_weights(const c10::ClassTypePtr& type, Instances& instances,
                                     const std::map<std::string, bool>& only) {
  std::set<std::string> names;
  for (auto* method : type->methods()) {
    if (!method->isGraphFunction()) continue;
    const auto graph = torch::jit::toGraphFunction(*method).graph();
    for (const Read& read : reads_in(*graph)) names.insert(read.path);
  }
  std::set<std::string> linear;
  for (const auto& name : names) {
    bool all = !instances[type].empty();
    for (const auto& [path, m] : instances[type]) {
      const auto it = only.find(join_path(path, name));
      all = all && it != only.end() && it->second;
    }
    if (all) linear.insert(name);
  }
  return linear;
}

// Whether every instance holds a float32 matrix of one shape as `name` (not a packed weight, which
// is empty).
bool float_matrices(const std::vector<std::pair<std::string, torch::jit::Module>>& instances, const std::string& name) {
  std::vector<int64_t> shape;
  for (const auto& [path, m] : instances) {
    if (!m.hasattr(name) || !m.attr(name).isTensor() || m.hasattr(codes_name(name))) return false;
    const auto w = m.attr(name).toTensor();
    if (w.dim() != 2 || w.numel() == 0 || w.scalar_type() != torch::kFloat) return false;
    if (!shape.empty() && w.sizes().vec() != shape) return false;
    shape = w.sizes().vec();
  }
  return !instances.empty();
}

// The aten::linear nodes of `block` (and the blocks within) whose weight is one of `names`.
void linears_in(torch::jit::Block* block, const Graph& graph, const std::set<std::string>& names,
                std::vector<Node*>& found) {
  for (Node* node : block->nodes()) {
    if (names.count(linear_weight(node, graph))) found.push_back(node);
    for (auto* inner : node->blocks()) linears_in(inner, graph, names, found);
  }
}

}  // namespace

std::string eight_bit_name(const std::string& weight) { return weight + "_int8"; }
std::string weight_step_name(const std::string& weight) { return weight + "_step"; }

std::vector<std::string> eight_bit_linears(torch::jit::Module& module) {
  torch::NoGradGuard no_grad;
  auto [types, instances] = module_types(module);
  const auto only = linear_only(types, instances);
  std::vector<std::string> done;
  for (const auto& type : types) {
    std::set<std::string> names;
    for (const auto& name : linear_weights(type, instances, only))
      if (float_matrices(instances[type], name)) names.insert(name);
    if (names.empty()) continue;
    // The buffers first: a graph reads only attributes its class has.
    for (const auto& [path, m] : instances[type])
      for (const auto& name : names) {
        torch::jit::Module owner = m;
        const auto w = owner.attr(name).toTensor();
        const auto [bytes, step] = ops::eight_bit_rows(w, 64);  // rows 64-byte multiples apart: the kernels' steps
        owner.register_buffer(eight_bit_name(name), bytes);
        owner.register_buffer(weight_step_name(name), step);
        owner.register_buffer(input_step_name(name), torch::zeros({1}));
        owner.setattr(name, torch::empty({0}, w.options()));
        done.push_back(join_path(path, name));
      }
    for (auto* method : type->methods()) {
      if (!method->isGraphFunction()) continue;
      const auto graph = torch::jit::toGraphFunction(*method).graph();
      std::vector<Node*> linears;
      linears_in(graph->block(), *graph, names, linears);
      for (Node* node : linears) {
        const std::string name = linear_weight(node, *graph);
        torch::jit::WithInsertPoint guard(node);
        Value* self = graph->inputs()[0];
        Value* out = insert_op(*graph, "ttq::linear_8bit",
                               {node->input(0), graph->insertGetAttr(self, eight_bit_name(name)),
                                graph->insertGetAttr(self, weight_step_name(name)), node->input(2),
                                graph->insertGetAttr(self, input_step_name(name))});
        node->output()->replaceAllUsesWith(out);
        node->destroy();
      }
    }
  }
  return done;
}

}  // namespace ttq
