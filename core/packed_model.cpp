#include "core/packed_model.h"

#include <torch/csrc/jit/ir/ir.h>
#include <torch/csrc/jit/passes/constant_propagation.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>
#include <torch/csrc/jit/passes/inliner.h>

#include <map>
#include <set>
#include <unordered_map>

#include "core/error.h"
#include "core/layers.h"
#include "core/ops/packed.h"

namespace ttq {
namespace {

using torch::jit::Node;
using torch::jit::Value;

// A read of a tensor attribute in the inlined graph: `owner` is the module value it is read from.
struct Read {
  Node* node;
  std::string name;  // qualified: "layer1.0.conv1.weight"
};

void collect_reads(torch::jit::Block* block, std::unordered_map<const Value*, std::string>& paths,
                   std::vector<Read>& reads) {
  for (Node* node : block->nodes()) {
    if (node->kind() == c10::prim::GetAttr) {
      const auto parent = paths.find(node->input(0));
      if (parent != paths.end()) {
        const std::string attr = node->s(c10::attr::name);
        const std::string name = parent->second.empty() ? attr : parent->second + "." + attr;
        if (node->output()->type()->cast<c10::ClassType>())
          paths[node->output()] = name;
        else
          reads.push_back({node, name});
      }
    }
    for (torch::jit::Block* inner : node->blocks()) collect_reads(inner, paths, reads);
  }
}

// The ttq op for a use of a weight of rank `dim`, or nullptr when that use cannot run packed.
const char* packed_op(const torch::jit::Use& use, int64_t dim, Activations activations = Activations::Float) {
  if (use.offset != 1) return nullptr;
  if (use.user->kind() == c10::aten::linear && dim == 2)
    return activations == Activations::Int8 ? "ttq::linear_int8" : "ttq::linear";
  if (use.user->kind() == c10::aten::conv2d && dim == 4) return "ttq::conv2d";
  return nullptr;
}

// Uses that ask about a tensor without reading its values: they keep the emptied weight, which has
// the weight's dtype and device (nn.MultiheadAttention checks both on every call).
bool is_metadata_query(const Node* user) {
  static const std::set<c10::Symbol> kinds{c10::prim::dtype, c10::prim::device, c10::prim::is_cuda,
                                           c10::prim::requires_grad, c10::prim::layout};
  return kinds.count(user->kind()) > 0;
}

// Fused fast paths of nn.TransformerEncoderLayer and nn.MultiheadAttention: they read the float
// weights directly, so a packed model takes the module's ordinary path instead (the same function,
// op by op, whose linear layers then run packed).
bool is_fused_fast_path(const Node* node) {
  static const std::set<c10::Symbol> kinds{c10::Symbol::fromQualString("aten::_transformer_encoder_layer_fwd"),
                                           c10::Symbol::fromQualString("aten::_native_multi_head_attention")};
  return kinds.count(node->kind()) > 0;
}

void collect_fast_paths(torch::jit::Block* block, const std::set<const Value*>& ternary, std::vector<Node*>& found) {
  for (Node* node : block->nodes()) {
    if (is_fused_fast_path(node))
      for (const Value* input : node->inputs())
        if (ternary.count(input)) {
          found.push_back(node);
          break;
        }
    for (torch::jit::Block* inner : node->blocks()) collect_fast_paths(inner, ternary, found);
  }
}

// Sets the condition of the `if` around each fused fast path that reads a ternary weight so that
// the other branch runs, then folds the dead branches away. True when the graph changed.
bool take_ordinary_paths(std::shared_ptr<torch::jit::Graph>& graph, const std::set<const Value*>& ternary) {
  std::vector<Node*> fast;
  collect_fast_paths(graph->block(), ternary, fast);
  bool changed = false;
  for (Node* node : fast) {
    Node* branch = node->owningBlock()->owningNode();
    if (!branch || branch->kind() != c10::prim::If) continue;  // stays float: reported by its use
    // The condition also flags, to the code after the `if`, that the fast path returned: every
    // use of it gets the constant, as if the module's own checks had turned the fast path down.
    const bool in_then = branch->blocks().at(0) == node->owningBlock();
    torch::jit::WithInsertPoint guard(graph->block()->nodes().front());
    branch->input(0)->replaceAllUsesWith(graph->insertConstant(c10::IValue(!in_then)));
    changed = true;
  }
  if (changed) {
    torch::jit::ConstantPropagation(graph);
    torch::jit::EliminateDeadCode(graph);
  }
  return changed;
}

// The ttq op taking the place of the weight's read: `op(inputs)` inserted before `before`.
Value* insert_op(torch::jit::Graph& graph, Node* before, const char* op, const std::vector<Value*>& inputs) {
  torch::jit::WithInsertPoint guard(before);
  Node* call = graph.insertNode(graph.create(c10::Symbol::fromQualString(op), inputs, 1));
  call->output()->setType(c10::TensorType::get());
  return call->output();
}

// Replaces `use` (aten::linear(x, w, b) or aten::conv2d(x, w, b, stride, padding, dilation,
// groups)) by the ttq op on the owner's codes and scales: the same inputs with w replaced by
// (codes, scales, shape). Any other use that reads the values gets the weight decoded for it by
// ttq::unpack (a temporary, as an attention projection read in thirds).
void replace_use(torch::jit::Graph& graph, const torch::jit::Use& use, Value* owner, const std::string& attr,
                 const char* op, const std::vector<int64_t>& shape) {
  Node* user = use.user;
  torch::jit::WithInsertPoint guard(user);
  std::vector<Value*> packed{graph.insertGetAttr(owner, codes_name(attr)), graph.insertGetAttr(owner, scales_name(attr)),
                             graph.insertConstant(c10::IValue(shape))};
  if (!op) {
    user->replaceInput(use.offset, insert_op(graph, user, "ttq::unpack", packed));
    return;
  }
  std::vector<Value*> inputs{user->input(0)};
  inputs.insert(inputs.end(), packed.begin(), packed.end());
  for (size_t i = 2; i < user->inputs().size(); ++i) inputs.push_back(user->input(i));
  user->output()->replaceAllUsesWith(insert_op(graph, user, op, inputs));
  user->destroy();
}

std::string attribute_of(const std::string& name) {
  const auto dot = name.rfind('.');
  return dot == std::string::npos ? name : name.substr(dot + 1);
}

}  // namespace

std::string codes_name(const std::string& weight) { return weight + "_codes"; }
std::string scales_name(const std::string& weight) { return weight + "_scales"; }

PackReport pack_module(torch::jit::Module& module, const std::vector<LayerRecord>& layers, Activations activations) {
  auto method = module.find_method("forward");
  if (!method) throw input_error("the model has no forward method to rewrite");
  auto graph = method->graph()->copy();
  torch::jit::Inline(*graph);
  // The reads of each ternary layer's weight, in forward order, after the fused fast paths that
  // would read them are replaced by ordinary ones.
  std::map<std::string, std::vector<Read>> reads_of;
  std::vector<std::string> order;
  for (bool again = true; again;) {
    std::unordered_map<const Value*, std::string> paths{{graph->inputs().at(0), ""}};
    std::vector<Read> reads;
    collect_reads(graph->block(), paths, reads);
    reads_of.clear();
    order.clear();
    std::set<const Value*> ternary;
    for (const auto& r : reads)
      if (find_layer(layers, r.name)) {
        if (!reads_of.count(r.name)) order.push_back(r.name);
        reads_of[r.name].push_back(r);
        ternary.insert(r.node->output());
      }
    again = take_ordinary_paths(graph, ternary);
  }

  PackReport report;
  std::set<const void*> registered;                          // module objects given codes
  std::map<c10::ClassTypePtr, std::set<std::string>> added;  // their types, and the names added
  torch::NoGradGuard no_grad;
  for (const auto& name : order) {
    const LayerRecord& layer = *find_layer(layers, name);
    ParameterSlot slot = find_slot(module, name);
    const torch::Tensor weight = slot.owner.attr(slot.attribute).toTensor();
    // Packed when some use runs packed; else float, and why: its first use.
    std::string why;
    bool runs_packed = false;
    for (const auto& r : reads_of[name])
      for (const auto& use : r.node->output()->uses()) {
        if (packed_op(use, weight.dim()))
          runs_packed = true;
        else if (why.empty() && !is_metadata_query(use.user))
          why = use.user->kind().toUnqualString();
      }
    if (!runs_packed || !slot.list_places.empty()) {
      report.kept_float.push_back({name, !slot.list_places.empty() ? "list" : why.empty() ? "unused" : why});
      continue;
    }
    ops::Packed packed;
    try {
      packed = ops::pack(weight, layer.wp, layer.wn);
    } catch (const c10::Error& e) {
      throw input_error(fmt::format("layer {}: {}", name, short_message(e.what_without_backtrace())));
    }
    slot.owner.register_buffer(codes_name(slot.attribute), packed.codes);
    slot.owner.register_buffer(scales_name(slot.attribute), packed.scales);
    registered.insert(slot.owner._ivalue().get());
    added[slot.owner.type()].insert(slot.attribute);
    for (const auto& r : reads_of[name]) {
      const auto uses = r.node->output()->uses();
      for (const auto& use : uses)
        if (!is_metadata_query(use.user))
          replace_use(*graph, use, r.node->input(0), slot.attribute, packed_op(use, weight.dim(), activations),
                      weight.sizes().vec());
    }
    slot.owner.setattr(slot.attribute, torch::empty({0}, weight.options()));
    report.packed.push_back(name);
  }
  for (const auto& layer : layers)
    if (!reads_of.count(layer.name)) report.kept_float.push_back({layer.name, "list"});  // an RNN's weight list
  // Modules share their class with others of the same configuration: those get empty codes.
  for (const auto& m : module.modules()) {
    const auto it = added.find(m.type());
    if (it == added.end() || registered.count(m._ivalue().get())) continue;
    for (const auto& attr : it->second) {
      torch::jit::Module other = m;
      other.register_buffer(codes_name(attr), torch::empty({0}, torch::kUInt8));
      other.register_buffer(scales_name(attr), torch::empty({0}, torch::kFloat));
    }
  }
  torch::jit::EliminateDeadCode(graph);
  auto& unit = *module._ivalue()->compilation_unit();
  const c10::QualifiedName qualified = method->function().qualname();
  module.type()->unsafeRemoveMethod("forward");
  unit.unsafeRemoveMethod(qualified);
  module.type()->addMethod(unit.create_function(qualified, graph));
  return report;
}

namespace {

// `f(codes, scales)` for the packed layer, with one input error naming the layer for what it finds.
template <class F>
auto with_packed(const torch::jit::Module& module, const LayerRecord& layer, F f) {
  const ParameterSlot slot = find_slot(module, layer.name);
  if (!slot.owner.hasattr(codes_name(slot.attribute)) || !slot.owner.hasattr(scales_name(slot.attribute)))
    throw input_error(fmt::format("packed layer {}: no {} or {} buffer", layer.name, codes_name(layer.name),
                                  scales_name(layer.name)));
  try {
    return f(slot.owner.attr(codes_name(slot.attribute)).toTensor(),
             slot.owner.attr(scales_name(slot.attribute)).toTensor());
  } catch (const c10::Error& e) {
    std::string why = short_message(e.what_without_backtrace());
    if (why.rfind("ttq: ", 0) == 0) why.erase(0, 5);  // the operators' own prefix, for PyTorch users
    throw input_error(fmt::format("packed layer {}: {}", layer.name, why));
  }
}

}  // namespace

torch::Tensor unpacked_weight(const torch::jit::Module& module, const LayerRecord& layer) {
  return with_packed(module, layer, [&](const torch::Tensor& codes, const torch::Tensor& scales) {
    return ops::unpack(codes, scales, layer.shape);
  });
}

void check_packed_layers(const torch::jit::Module& module, const std::vector<LayerRecord>& layers,
                         const std::vector<std::string>& packed) {
  for (const auto& name : packed) {
    const LayerRecord* layer = find_layer(layers, name);
    if (!layer) throw input_error(fmt::format("packed layer {} has no record in the TTQ metadata", name));
    with_packed(module, *layer, [&](const torch::Tensor& codes, const torch::Tensor& scales) {
      ops::check_packed(codes, scales, layer->shape);
      ops::check_packed_bits(codes, layer->shape);
      return 0;
    });
  }
}

}  // namespace ttq
