#include "core/packed_model.h"

#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/ir/ir.h>
#include <torch/csrc/jit/passes/constant_propagation.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>
#include <torch/csrc/jit/passes/peephole.h>

#include <map>
#include <set>
#include <unordered_map>
#include <utility>

#include "core/error.h"
#include "core/layers.h"
#include "core/ops/packed.h"

namespace ttq {
namespace {

using torch::jit::Block;
using torch::jit::Graph;
using torch::jit::Node;
using torch::jit::Value;

// The rewrite works method by method, on the graphs of the model's class types, as TorchScript
// stores them: a fully inlined forward would be one function as large as the model, which
// TorchScript needs hundreds of MiB to compile when the file is loaded (a 4-layer transformer
// encoder: 320 MiB). Modules of one configuration share a class type, so a rewritten method serves
// every instance of its type. For the same reason a function called with ternary weights becomes a
// method of its own (Outliner) rather than being inlined into its caller.

// A read of a tensor attribute in a method's graph, at `path` from the method's `self`
// ("weight", "out_proj.weight").
struct Read {
  Node* node;
  std::string path;
};

std::string join(const std::string& prefix, const std::string& name) {
  return prefix.empty() ? name : prefix + "." + name;
}

void collect_reads(Block* block, std::unordered_map<const Value*, std::string>& paths, std::vector<Read>& reads) {
  for (Node* node : block->nodes()) {
    if (node->kind() == c10::prim::GetAttr) {
      const auto parent = paths.find(node->input(0));
      if (parent != paths.end()) {
        const std::string name = join(parent->second, node->s(c10::attr::name));
        if (node->output()->type()->cast<c10::ClassType>())
          paths[node->output()] = name;
        else
          reads.push_back({node, name});
      }
    }
    for (Block* inner : node->blocks()) collect_reads(inner, paths, reads);
  }
}

std::vector<Read> reads_in(Graph& graph) {
  std::unordered_map<const Value*, std::string> paths{{graph.inputs().at(0), ""}};
  std::vector<Read> reads;
  collect_reads(graph.block(), paths, reads);
  return reads;
}

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

// Fused fast paths of nn.TransformerEncoderLayer and nn.MultiheadAttention: they read the float
// weights directly, so a packed model takes the module's ordinary path instead (the same function,
// op by op, whose linear layers then run packed).
bool is_fused_fast_path(const Node* node) {
  static const std::set<c10::Symbol> kinds{c10::Symbol::fromQualString("aten::_transformer_encoder_layer_fwd"),
                                           c10::Symbol::fromQualString("aten::_native_multi_head_attention")};
  return kinds.count(node->kind()) > 0;
}

bool is_shape_query(const std::string& op) { return op == "size" || op == "dim" || op == "len"; }

// The values in a method's graph that are ternary weights, with their paths from `self`.
using TernaryValues = std::unordered_map<const Value*, std::string>;

bool takes_any(const Node* node, const TernaryValues& values) {
  for (const Value* input : node->inputs())
    if (values.count(input)) return true;
  return false;
}

// The nodes of `block`, nested ones included, for which `pick` holds.
template <class Pick>
void collect(Block* block, Pick pick, std::vector<Node*>& found) {
  for (Node* node : block->nodes()) {
    if (pick(node)) found.push_back(node);
    for (Block* inner : node->blocks()) collect(inner, pick, found);
  }
}

// Sets the condition of the `if` around each fused fast path that reads a ternary weight so that
// the other branch runs, then folds the dead branches away. True when the graph changed.
bool take_ordinary_paths(std::shared_ptr<Graph>& graph, const TernaryValues& ternary) {
  std::vector<Node*> fast;
  collect(graph->block(), [&](Node* n) { return is_fused_fast_path(n) && takes_any(n, ternary); }, fast);
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

// Inlines the method calls that take a ternary weight as an argument (nn.Conv2d's _conv_forward),
// so that the weight's use is in this graph. True when any was.
bool inline_calls_taking(Graph& graph, const TernaryValues& ternary) {
  std::vector<Node*> calls;
  collect(graph.block(), [&](Node* n) { return n->kind() == c10::prim::CallMethod && takes_any(n, ternary); }, calls);
  for (Node* call : calls) {
    auto& callee = call->input(0)->type()->expectRef<c10::ClassType>().getMethod(call->s(c10::attr::name));
    torch::jit::inlineCallTo(call, &torch::jit::toGraphFunction(callee));
  }
  return !calls.empty();
}

// A function called with ternary weights becomes a method of the caller's class that reads them
// itself. Inlining F.multi_head_attention_forward instead, twice over into a branch of
// nn.MultiheadAttention.forward, made loading a small packed ViT peak at 55 MiB (TorchScript's
// compiler, mostly error reports it prepares for variables defined in one branch of a large `if`),
// against 9 MiB for its float model and 17 MiB this way. One method serves each function and set of
// weights.
class Outliner {
 public:
  explicit Outliner(c10::ClassTypePtr type) : type_(std::move(type)) {}

  // Replaces each call in `graph` (a method of the class) that passes ternary values by a call of
  // the method doing the same; true when any was.
  bool outline_calls(Graph& graph, const TernaryValues& ternary) {
    std::vector<Node*> calls;
    collect(graph.block(), [&](Node* n) { return n->kind() == c10::prim::CallFunction && takes_any(n, ternary); },
            calls);
    for (Node* call : calls) {
      // Input 0 is the function; the callee's argument i is the call's input i + 1.
      std::vector<std::pair<size_t, std::string>> weights;
      std::vector<Value*> inputs{graph.inputs().at(0)};
      for (size_t i = 1; i < call->inputs().size(); ++i) {
        const auto it = ternary.find(call->input(i));
        if (it != ternary.end())
          weights.emplace_back(i - 1, it->second);
        else
          inputs.push_back(call->input(i));
      }
      auto* callee = call->input(0)->type()->expectRef<c10::FunctionType>().function();
      Node* method_call = graph.create(c10::prim::CallMethod, inputs, call->outputs().size());
      method_call->s_(c10::attr::name, method_for(torch::jit::toGraphFunction(*callee), weights));
      method_call->insertBefore(call);
      for (size_t i = 0; i < call->outputs().size(); ++i) {
        method_call->output(i)->setType(call->output(i)->type());
        call->output(i)->replaceAllUsesWith(method_call->output(i));
      }
      call->destroy();
    }
    return !calls.empty();
  }

  // The methods made so far, to be prepared as the class's own.
  std::vector<torch::jit::Function*> take_new_methods() { return std::exchange(new_methods_, {}); }

 private:
  std::string method_for(torch::jit::GraphFunction& callee, const std::vector<std::pair<size_t, std::string>>& weights) {
    std::string key = callee.qualname().qualifiedName();
    for (const auto& [i, path] : weights) key += fmt::format(" {}={}", i, path);
    const auto [it, fresh] = names_.try_emplace(key);
    if (!fresh) return it->second;
    std::string name = "_ttq_" + callee.name();
    for (int n = 1; type_->findMethod(name); ++n) name = fmt::format("_ttq_{}_{}", callee.name(), n);
    it->second = name;

    auto graph = callee.graph()->copy();
    Value* self = graph->insertInput(0, "self")->setType(type_);
    torch::jit::WithInsertPoint at_start(graph->block()->param_node()->next());
    for (const auto& [i, path] : weights) {
      Value* read = self;
      for (size_t start = 0, dot; start <= path.size(); start = dot + 1) {
        dot = std::min(path.find('.', start), path.size());
        read = graph->insertGetAttr(read, path.substr(start, dot - start));
      }
      graph->inputs().at(i + 1)->replaceAllUsesWith(read);
    }
    for (auto w = weights.rbegin(); w != weights.rend(); ++w) graph->eraseInput(w->first + 1);
    auto* method = type_->compilation_unit()->create_function(c10::QualifiedName(*type_->name(), name), graph);
    type_->addMethod(method);
    new_methods_.push_back(method);
    return name;
  }

  c10::ClassTypePtr type_;
  std::map<std::string, std::string> names_;  // function and weights -> method
  std::vector<torch::jit::Function*> new_methods_;
};

bool raises(Block* block) {
  for (Node* node : block->nodes())
    if (node->kind() == c10::prim::RaiseException) return true;
  return false;
}

// TorchScript's refinements of an Optional[Tensor] argument (`assert w is not None`, `w is None`
// checks) pass a ternary weight through an `if` whose other branch raises, or through a cast: the
// uses of those values are the weight's own uses. True when any was folded.
bool fold_refinements(Block* block, const TernaryValues& ternary) {
  bool changed = false;
  for (Node* node : block->nodes()) {
    for (Block* inner : node->blocks()) changed = fold_refinements(inner, ternary) || changed;
    if (node->kind() == c10::prim::unchecked_cast && ternary.count(node->input()) && node->output()->hasUses()) {
      node->output()->replaceAllUsesWith(node->input());
      changed = true;
    }
    if (node->kind() != c10::prim::If) continue;
    for (size_t i = 0; i < node->outputs().size(); ++i) {
      Value* through = nullptr;
      bool only_raises_otherwise = true;
      for (Block* b : node->blocks()) {
        Value* out = b->outputs().at(i);
        if (ternary.count(out) && !through)
          through = out;
        else if (!raises(b))
          only_raises_otherwise = false;
      }
      if (through && only_raises_otherwise && node->output(i)->hasUses()) {
        node->output(i)->replaceAllUsesWith(through);
        changed = true;
      }
    }
  }
  return changed;
}

// A method of a class type, prepared for the rewrite, and its reads of tensor attributes.
struct MethodGraph {
  std::shared_ptr<Graph> graph;
  std::vector<Read> reads;
};

// A class type: the paths of its module instances ("" for the root) and its prepared methods.
struct TypeInfo {
  std::vector<std::string> paths;
  std::vector<MethodGraph> methods;
};

// The method graphs of `type`, with the calls taking ternary weights inlined or outlined and the
// fused fast paths reading them turned down, until none is left.
std::vector<MethodGraph> prepare_methods(const c10::ClassTypePtr& type, const std::function<bool(const std::string&)>& ternary) {
  std::vector<MethodGraph> methods;
  Outliner outliner(type);
  std::vector<torch::jit::Function*> todo = type->methods();
  for (size_t next = 0; next < todo.size(); ++next) {
    if (!todo[next]->isGraphFunction()) continue;
    auto graph = torch::jit::toGraphFunction(*todo[next]).graph();
    std::vector<Read> reads;
    // Each round removes a call, a fast path or a refinement; a graph still changing after this
    // many is a rewrite that does not settle, reported rather than run forever.
    constexpr int kMaxRounds = 1000;
    int round = 0;
    for (bool again = true; again; ++round) {
      if (round == kMaxRounds)
        throw runtime_error(fmt::format("packing {}.{}: the rewrite did not settle after {} rounds; please report "
                                        "this model", type->name()->qualifiedName(), todo[next]->name(), kMaxRounds));
      reads = reads_in(*graph);
      TernaryValues values;
      for (const auto& r : reads)
        if (ternary(r.path)) values[r.node->output()] = r.path;
      again = take_ordinary_paths(graph, values);
      again = fold_refinements(graph->block(), values) || again;
      const bool inlined = inline_calls_taking(*graph, values);
      if (inlined || outliner.outline_calls(*graph, values)) {
        // The callee's `weight is not None` checks and casts fold away on a Tensor argument, so
        // the weight reaches its uses directly; the weights a call no longer passes are not read.
        torch::jit::ConstantPropagation(graph);
        torch::jit::PeepholeOptimize(graph);
        torch::jit::EliminateDeadCode(graph);
        again = true;
      }
    }
    for (auto* method : outliner.take_new_methods()) todo.push_back(method);
    std::vector<Read> kept;
    for (const auto& r : reads)
      if (ternary(r.path)) kept.push_back(r);
    if (!kept.empty()) methods.push_back({graph, kept});
  }
  return methods;
}

// Inserts `op(inputs)` at the current insertion point; its one output is a tensor.
Value* insert_op(Graph& graph, const char* op, const std::vector<Value*>& inputs) {
  Node* call = graph.insertNode(graph.create(c10::Symbol::fromQualString(op), inputs, 1));
  call->output()->setType(c10::TensorType::get());
  return call->output();
}

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

}  // namespace

std::string codes_name(const std::string& weight) { return weight + "_codes"; }
std::string scales_name(const std::string& weight) { return weight + "_scales"; }

PackReport pack_module(torch::jit::Module& module, const std::vector<LayerRecord>& layers, Activations activations) {
  if (!module.find_method("forward")) throw input_error("the model has no forward method to rewrite");
  // Class types in the order modules are met, with their instances.
  std::vector<c10::ClassTypePtr> types;
  std::map<c10::ClassTypePtr, TypeInfo> info;
  for (const auto& m : module.named_modules()) {
    auto& t = info[m.value.type()];
    if (t.paths.empty()) types.push_back(m.value.type());
    t.paths.push_back(m.name);
  }
  // Each layer's reads: in which type's methods, at which path from `self`.
  std::map<std::string, std::vector<std::pair<c10::ClassTypePtr, const Read*>>> reads_of;
  for (const auto& type : types) {
    TypeInfo& t = info[type];
    auto ternary = [&](const std::string& path) {
      for (const auto& prefix : t.paths)
        if (find_layer(layers, join(prefix, path))) return true;
      return false;
    };
    t.methods = prepare_methods(type, ternary);
    for (const auto& method : t.methods)
      for (const auto& r : method.reads)
        for (const auto& prefix : t.paths)
          if (find_layer(layers, join(prefix, r.path))) reads_of[join(prefix, r.path)].push_back({type, &r});
  }

  // Which layers run packed: a linear or conv2d use, no list holding the weight, and one shape for
  // all the packed instances of a class (the shape is a constant of the rewritten method).
  PackReport report;
  std::map<std::pair<c10::ClassTypePtr, std::string>, std::vector<int64_t>> shape_of;  // (type, path)
  std::set<std::string> packed;
  for (const auto& layer : layers) {
    const auto it = reads_of.find(layer.name);
    if (it == reads_of.end()) {
      report.kept_float.push_back({layer.name, "list"});  // an RNN's weight list
      continue;
    }
    std::string why;
    bool runs_packed = false;
    for (const auto& [type, r] : it->second)
      for (const auto& use : r->node->output()->uses()) {
        if (packed_op(use, layer.shape.size()))
          runs_packed = true;
        else if (!is_metadata_query(use.user) && (why.empty() || is_shape_query(why)))
          why = use.user->kind().toUnqualString();  // the first op, rather than a size check
      }
    if (!find_slot(module, layer.name).list_places.empty()) why = "list", runs_packed = false;
    if (runs_packed)  // the first packed instance of a class fixes the shape for its method
      for (const auto& [type, r] : it->second) {
        const auto [shape, fresh] = shape_of.try_emplace({type, r->path}, layer.shape);
        if (!fresh && shape->second != layer.shape) why = "shared class, other shape", runs_packed = false;
      }
    if (!runs_packed) {
      report.kept_float.push_back({layer.name, why.empty() ? "unused" : why});
      continue;
    }
    packed.insert(layer.name);
    report.packed.push_back(layer.name);
  }

  // Codes and scales beside each packed weight, which is emptied; empty codes where a module of the
  // same class keeps the weight float (the rewritten method reads them for every instance).
  torch::NoGradGuard no_grad;
  std::map<c10::ClassTypePtr, std::set<std::string>> added;
  std::set<std::pair<const void*, std::string>> given;  // (module object, attribute): codes registered
  for (const auto& name : report.packed) {
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
      }
  }

  // The rewrite of each method that reads a packed weight.
  for (const auto& type : types) {
    TypeInfo& t = info[type];
    for (auto& method : t.methods) {
      bool changed = false;
      for (const auto& r : method.reads) {
        size_t count = 0;
        for (const auto& prefix : t.paths) count += packed.count(join(prefix, r.path));
        if (count == 0) continue;
        const auto dot = r.path.rfind('.');
        const PackedRead read{r.node->input(0), dot == std::string::npos ? r.path : r.path.substr(dot + 1),
                              shape_of.at({type, r.path}), activations, count < t.paths.size()};
        const auto uses = r.node->output()->uses();
        for (const auto& use : uses)
          if (!is_metadata_query(use.user)) replace_use(*method.graph, use, read);
        changed = true;
      }
      if (changed) torch::jit::EliminateDeadCode(method.graph);
    }
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
