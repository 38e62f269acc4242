#include "core/packed_model.h"

#include <torch/csrc/jit/passes/dead_code_elimination.h>

#include <map>
#include <set>
#include <string_view>
#include <utility>

#include "core/error.h"
#include "core/graph_passes.h"
#include "core/layers.h"
#include "core/objective.h"
#include "core/ops/packed.h"
#include "core/packed_graph.h"

namespace ttq {
namespace {

using torch::jit::Block, torch::jit::Graph, torch::jit::Node, torch::jit::Value;

// The ttq op for a use of a weight of rank `dim`, or nullptr when that use cannot run packed.
const char* packed_op(const torch::jit::Use& use, size_t dim, Activations activations = Activations::Float) {
  if (use.offset != 1) return nullptr;
  if (use.user->kind() == c10::aten::linear && dim == 2)
    return activations == Activations::Int8 ? "ttq::linear_int8" : "ttq::linear";
  if (use.user->kind() == c10::aten::conv2d && dim == 4)
    return activations == Activations::Int8 ? "ttq::conv2d_int8" : "ttq::conv2d";
  return nullptr;
}

// Tap-major codes (packed_model.h): the permutation from a weight [out, in, kh, kw] to the order of
// its codes [out, kh, kw, in], and back.
const std::vector<int64_t> kToTapMajor{0, 2, 3, 1};
const std::vector<int64_t> kFromTapMajor{0, 3, 1, 2};

// The shape of a layer's codes: its weight's, or tap-major.
std::vector<int64_t> codes_shape(const std::vector<int64_t>& shape, Activations activations) {
  if (!tap_major(shape, activations)) return shape;
  return {shape[0], shape[2], shape[3], shape[1]};
}

// Uses that ask about a tensor without reading its values: they keep the emptied weight, which has
// the weight's dtype and device (nn.MultiheadAttention checks both on every call).
bool is_metadata_query(const Node* user) {
  static const std::set<c10::Symbol> kinds{c10::prim::dtype, c10::prim::device, c10::prim::is_cuda,
                                           c10::prim::requires_grad, c10::prim::layout};
  return kinds.count(user->kind()) > 0;
}

bool is_shape_query(const std::string& op) { return op == "size" || op == "dim" || op == "len"; }

// A class type: the paths of its module instances ("" for the root) and its prepared methods.
struct TypeInfo {
  std::vector<std::string> paths;
  std::vector<MethodGraph> methods;
};

// Where a packed weight is read.
struct PackedRead {
  Value* owner;          // the module value holding the weight
  std::string attribute;
  std::vector<int64_t> shape;
  Activations activations;
  bool shared_with_float;  // some instances of the owner's class keep this weight float
};

// Replaces `use` of a packed weight: aten::linear(x, w, b) or aten::conv2d(x, w, b, stride, padding,
// dilation, groups) by the ttq op on the owner's codes and scales (the same inputs with w replaced by
// codes, scales, shape); any other use that reads the values gets the weight decoded for it by
// ttq::unpack (a temporary, as for an attention projection read in thirds). Where instances of the
// class keep the weight float, the packed form runs only when the codes are not empty.
void replace_use(Graph& graph, const torch::jit::Use& use, const PackedRead& read) {
  Node* user = use.user;
  const char* op = packed_op(use, read.shape.size(), read.activations);
  torch::jit::WithInsertPoint guard(user);
  Value* codes = graph.insertGetAttr(read.owner, codes_name(read.attribute));
  auto packed_form = [&] {
    Value* scales = graph.insertGetAttr(read.owner, scales_name(read.attribute));
    if (op) {  // the ops take the weight's shape, whatever the order of its codes
      std::vector<Value*> inputs{user->input(0), codes, scales, graph.insertConstant(c10::IValue(read.shape))};
      for (size_t i = 2; i < user->inputs().size(); ++i) inputs.push_back(user->input(i));
      if (read.activations == Activations::Int8)
        inputs.push_back(graph.insertGetAttr(read.owner, input_step_name(read.attribute)));
      // A node gives every argument of its schema: conv2d_int8's out_affine and clamp are None until
      // a BatchNorm folds into it (fold_batch_norms), its residual until an add fuses into it
      // (fuse_residual_adds), its output_step and residual_step until chain_int8_layers.
      if (std::string_view(op) == "ttq::conv2d_int8")
        for (int none = 0; none < 5; ++none) inputs.push_back(graph.insertConstant(c10::IValue()));
      return insert_op(graph, op, inputs);
    }
    Value* weight = insert_op(graph, "ttq::unpack",
                              {codes, scales, graph.insertConstant(c10::IValue(codes_shape(read.shape, read.activations)))});
    if (!tap_major(read.shape, read.activations)) return weight;
    return graph.insert(c10::aten::permute, {torch::jit::NamedValue(weight), torch::jit::NamedValue(kFromTapMajor)});
  };
  Value* replacement = nullptr;
  if (!read.shared_with_float) {
    replacement = packed_form();
  } else {
    static const auto numel = c10::Symbol::fromQualString("aten::numel");
    Value* count = graph.insert(numel, {torch::jit::NamedValue(codes)});
    Value* packed = graph.insert(c10::aten::gt, {torch::jit::NamedValue(count), torch::jit::NamedValue(int64_t{0})});
    Node* branch = graph.insertNode(graph.create(c10::prim::If, {packed}, 1));
    Block* then_block = branch->addBlock();
    Block* else_block = branch->addBlock();
    {
      torch::jit::WithInsertPoint in_then(then_block);
      then_block->registerOutput(packed_form());
    }
    if (op) {
      Node* original = graph.createClone(user, [](Value* v) { return v; });
      else_block->appendNode(original);
      else_block->registerOutput(original->output());
    } else {
      else_block->registerOutput(user->input(use.offset));
    }
    branch->output()->setType(op ? user->output()->type() : c10::TensorType::get());
    replacement = branch->output();
  }
  if (op) {
    user->output()->replaceAllUsesWith(replacement);
    user->destroy();
  } else {
    user->replaceInput(use.offset, replacement);
  }
}

// The model's class types in the order their modules are met, each with its instances and its
// prepared methods, and where each ternary layer is read: in which type's methods, at which path.
struct ModelGraphs {
  std::vector<c10::ClassTypePtr> types;
  std::map<c10::ClassTypePtr, TypeInfo> info;
  std::map<std::string, std::vector<std::pair<c10::ClassTypePtr, const Read*>>> reads_of;  // by layer
};

ModelGraphs prepare_model(const torch::jit::Module& module, const std::vector<LayerRecord>& layers) {
  ModelGraphs g;
  for (const auto& m : module.named_modules()) {
    auto& t = g.info[m.value.type()];
    if (t.paths.empty()) g.types.push_back(m.value.type());
    t.paths.push_back(m.name);
  }
  for (const auto& type : g.types) {
    TypeInfo& t = g.info[type];
    auto ternary = [&](const std::string& path) {
      for (const auto& prefix : t.paths)
        if (find_layer(layers, join_path(prefix, path))) return true;
      return false;
    };
    t.methods = prepare_methods(type, ternary);
    for (const auto& method : t.methods)
      for (const auto& r : method.reads)
        for (const auto& prefix : t.paths)
          if (find_layer(layers, join_path(prefix, r.path))) g.reads_of[join_path(prefix, r.path)].push_back({type, &r});
  }
  return g;
}

// Which layers run packed, and the shape of each rewritten read: a method serves every instance of
// its class, so the first packed instance fixes the shape its rewrite bakes in.
struct PackPlan {
  PackReport report;
  std::set<std::string> packed;
  std::map<std::pair<c10::ClassTypePtr, std::string>, std::vector<int64_t>> shape_of;  // (type, path)
};

// Why `layer` cannot run packed, from its reads (the first op that reads its values, rather than a
// size check), or "" when it can: it needs a linear or conv2d use and no list holding the weight.
std::string why_float(const torch::jit::Module& module, const LayerRecord& layer, const ModelGraphs& graphs) {
  const auto it = graphs.reads_of.find(layer.name);
  if (it == graphs.reads_of.end()) return "list";  // an RNN's weight list
  std::string why;
  bool runs_packed = false;
  for (const auto& [type, r] : it->second)
    for (const auto& use : r->node->output()->uses()) {
      if (packed_op(use, layer.shape.size()))
        runs_packed = true;
      else if (!is_metadata_query(use.user) && (why.empty() || is_shape_query(why)))
        why = use.user->kind().toUnqualString();
    }
  if (!find_slot(module, layer.name).list_places.empty()) return "list";
  if (runs_packed) return "";
  return why.empty() ? "unused" : why;
}

PackPlan plan_packing(const torch::jit::Module& module, const std::vector<LayerRecord>& layers,
                      const ModelGraphs& graphs) {
  PackPlan plan;
  for (const auto& layer : layers) {
    std::string why = why_float(module, layer, graphs);
    if (why.empty())
      for (const auto& [type, r] : graphs.reads_of.at(layer.name)) {
        const auto [shape, fresh] = plan.shape_of.try_emplace({type, r->path}, layer.shape);
        if (!fresh && shape->second != layer.shape) why = "shared class, other shape";
      }
    if (!why.empty()) {
      plan.report.kept_float.push_back({layer.name, layer.shape, why});
      continue;
    }
    plan.packed.insert(layer.name);
    plan.report.packed.push_back(layer.name);
  }
  return plan;
}

// Codes and scales beside each packed weight, which is emptied, and with int8 activations its input
// step (0: dynamic until calibrated); empty codes where a module of the same class keeps the weight
// float (the rewritten method reads them for every instance).
void register_codes(torch::jit::Module& module, const std::vector<LayerRecord>& layers,
                    const std::vector<std::string>& packed, Activations activations) {
  torch::NoGradGuard no_grad;
  std::map<c10::ClassTypePtr, std::set<std::string>> added;
  std::set<std::pair<const void*, std::string>> given;  // (module object, attribute): codes registered
  for (const auto& name : packed) {
    const LayerRecord& layer = *find_layer(layers, name);
    ParameterSlot slot = find_slot(module, name);
    const torch::Tensor weight = slot.owner.attr(slot.attribute).toTensor();
    ops::Packed codes;
    try {
      codes = ops::pack(tap_major(layer.shape, activations) ? weight.permute(kToTapMajor).contiguous() : weight,
                        layer.wp, layer.wn);
    } catch (const c10::Error& e) {
      throw input_error(fmt::format("layer {}: {}", name, short_message(e.what_without_backtrace())));
    }
    slot.owner.register_buffer(codes_name(slot.attribute), codes.codes);
    slot.owner.register_buffer(scales_name(slot.attribute), codes.scales);
    if (activations == Activations::Int8) slot.owner.register_buffer(input_step_name(slot.attribute), torch::zeros({1}));
    slot.owner.setattr(slot.attribute, torch::empty({0}, weight.options()));
    added[slot.owner.type()].insert(slot.attribute);
    given.insert({slot.owner._ivalue().get(), slot.attribute});
  }
  for (const auto& m : module.modules()) {
    const auto it = added.find(m.type());
    if (it == added.end()) continue;
    for (const auto& attr : it->second)
      if (!given.count({m._ivalue().get(), attr})) {  // the class has the slot; this object has no value
        torch::jit::Module other = m;
        other.register_buffer(codes_name(attr), torch::empty({0}, torch::kUInt8));
        other.register_buffer(scales_name(attr), torch::empty({0}, torch::kFloat));
        if (activations == Activations::Int8) other.register_buffer(input_step_name(attr), torch::zeros({1}));
      }
  }
}

// Rewrites each method that reads a packed weight: its uses call the ttq ops (replace_use).
void rewrite_methods(ModelGraphs& graphs, const PackPlan& plan, Activations activations) {
  for (const auto& type : graphs.types) {
    TypeInfo& t = graphs.info[type];
    for (auto& method : t.methods) {
      bool changed = false;
      for (const auto& r : method.reads) {
        size_t count = 0;
        for (const auto& prefix : t.paths) count += plan.packed.count(join_path(prefix, r.path));
        if (count == 0) continue;
        const auto dot = r.path.rfind('.');
        const PackedRead read{r.node->input(0), dot == std::string::npos ? r.path : r.path.substr(dot + 1),
                              plan.shape_of.at({type, r.path}), activations, count < t.paths.size()};
        const auto uses = r.node->output()->uses();
        for (const auto& use : uses)
          if (!is_metadata_query(use.user)) replace_use(*method.graph, use, read);
        changed = true;
      }
      if (changed) torch::jit::EliminateDeadCode(method.graph);
    }
  }
}

// The tensors (by name) that `graph`, a whole program (inlined_program), reads or sets through its
// module attributes; none where a call is left (to a method of an interface) or a module is used
// otherwise: then every tensor may be read.
std::optional<std::set<std::string>> tensors_read(const Graph& graph, const Block* block) {
  std::set<std::string> read;
  for (const Node* node : block->nodes()) {
    for (const auto* inner : node->blocks()) {
      auto inside = tensors_read(graph, inner);
      if (!inside) return std::nullopt;
      read.merge(*inside);
    }
    if (node->kind() == c10::prim::CallMethod) return std::nullopt;
    for (const Value* input : node->inputs()) {
      const auto type = input->type()->cast<c10::ClassType>();
      if (input->type()->cast<c10::InterfaceType>() ||
          (type && type->is_module() && node->kind() != c10::prim::GetAttr && node->kind() != c10::prim::SetAttr))
        return std::nullopt;
    }
    if (node->kind() != c10::prim::GetAttr && node->kind() != c10::prim::SetAttr) continue;
    const auto path = path_of_module(node->inputs()[0], graph);
    if (!path) return std::nullopt;
    read.insert(join_path(*path, node->s(c10::attr::name)));
  }
  return read;
}

// The storages of the tensors that a module's list, tuple, dict or object attributes hold (an LSTM's
// _flat_weights): a program reads those tensors through them, not by their names.
void contained_storages(const c10::IValue& value, std::set<const void*>& found) {
  if (value.isTensor() && value.toTensor().has_storage()) {
    found.insert(value.toTensor().storage().unsafeGetStorageImpl());
  } else if (value.isList()) {
    for (const auto& v : value.toListRef()) contained_storages(v, found);
  } else if (value.isTuple()) {
    for (const auto& v : value.toTupleRef().elements()) contained_storages(v, found);
  } else if (value.isGenericDict()) {
    for (const auto& entry : value.toGenericDict()) {
      contained_storages(entry.key(), found);
      contained_storages(entry.value(), found);
    }
  } else if (value.isObject() && !value.toObjectRef().type()->is_module()) {
    for (const auto& v : value.toObjectRef().slots()) contained_storages(v, found);
  }
}

}  // namespace

std::string codes_name(const std::string& weight) { return weight + "_codes"; }
std::string scales_name(const std::string& weight) { return weight + "_scales"; }
std::string input_step_name(const std::string& weight) { return weight + "_input_step"; }

PackReport pack_module(torch::jit::Module& module, const std::vector<LayerRecord>& layers, Activations activations) {
  if (!module.find_method("forward")) throw input_error("the model has no forward method to rewrite");
  ModelGraphs graphs = prepare_model(module, layers);
  const PackPlan plan = plan_packing(module, layers, graphs);
  register_codes(module, layers, plan.report.packed, activations);
  rewrite_methods(graphs, plan, activations);
  PackReport report = plan.report;
  if (activations == Activations::Int8) {
    report.folded = fold_batch_norms(module);
    report.eight_bit = eight_bit_linears(module);
  }
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
    throw input_error(fmt::format("packed layer {}: {}", layer.name, ops_message(e.what_without_backtrace())));
  }
}

}  // namespace

bool tap_major(const std::vector<int64_t>& shape, Activations activations) {
  return activations == Activations::Int8 && shape.size() == 4;
}

torch::Tensor unpacked_weight(const torch::jit::Module& module, const LayerRecord& layer, Activations activations) {
  return with_packed(module, layer, [&](const torch::Tensor& codes, const torch::Tensor& scales) {
    const auto weight = ops::unpack(codes, scales, codes_shape(layer.shape, activations));
    return tap_major(layer.shape, activations) ? weight.permute(kFromTapMajor).contiguous() : weight;
  });
}

std::vector<CalibratedLayer> calibrate_packed(torch::jit::Module& module, const std::vector<std::string>& packed,
                                              const Dataset& data, const Preprocess& pre, int64_t batch_size) {
  struct Calibrating {  // off again however the run ends
    Calibrating() { ops::set_calibrating(true); }
    ~Calibrating() { ops::set_calibrating(false); }
  };
  {
    torch::NoGradGuard no_grad;
    const bool was_training = module.is_training();
    module.eval();
    Calibrating calibrating;
    for (int64_t start = 0; start < data.size(); start += batch_size) {
      const auto idx = torch::arange(start, std::min(start + batch_size, data.size()), torch::kInt64);
      run_model(module, prepare_inputs(data, idx, pre));
    }
    module.train(was_training);
  }
  std::vector<CalibratedLayer> steps;
  for (const auto& name : packed) {
    const ParameterSlot slot = find_slot(module, name);
    steps.push_back({name, slot.owner.attr(input_step_name(slot.attribute)).toTensor().item<float>()});
  }
  return steps;
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

std::map<std::string, torch::Tensor> set_aside_unread(torch::jit::Module& module,
                                                      const std::set<std::string>& candidates) {
  std::set<std::string> read;
  for (const auto& m : module.modules())
    if (!m.type()->getForwardHooks().empty() || !m.type()->getForwardPreHooks().empty()) return {};
  for (auto* method : module.type()->methods()) {
    if (!method->isGraphFunction()) return {};
    const auto graph = inlined_program(*method);
    auto reads = tensors_read(*graph, graph->block());
    if (!reads) return {};
    read.merge(*reads);
  }
  std::set<const void*> contained;
  for (const auto& m : module.modules())
    for (const auto& slot : m._ivalue()->slots())
      if (!slot.isTensor() && !slot.isModule()) contained_storages(slot, contained);
  std::map<std::string, torch::Tensor> unread;
  for (const auto& [name, tensor, _] : module_tensors(module))
    if (tensor.numel() > 0 && candidates.count(name) && !read.count(name) &&
        !contained.count(tensor.storage().unsafeGetStorageImpl()))
      unread.emplace(name, tensor);
  for (const auto& [name, tensor] : unread) set_parameter(module, name, torch::empty({0}, tensor.options()));
  return unread;
}

}  // namespace ttq
