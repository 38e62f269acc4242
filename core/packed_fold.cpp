// Graph passes for packed int8 models (packed_model.h). fold_batch_norms: a parent's `bn(conv(x))`,
// and a ReLU or ReLU6 right after it, become the convolution's out_affine, applied as the int8
// kernels store each output, so that no float pass over the activations is left between them.
#include <torch/csrc/jit/passes/dead_code_elimination.h>

#include <cmath>
#include <limits>
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

// ttq::conv2d_affine's max_pool argument.
constexpr size_t kMaxPool = 9;

// A convolution whose forward returns one ttq::conv2d_int8 of its own input: the op is its output.
bool packed_int8_conv(const c10::ClassTypePtr& type) {
  const auto graph = forward_graph(type);
  if (!graph || graph->outputs().size() != 1) return false;
  std::vector<Node*> convs;
  conv_nodes(graph->block(), convs);
  return convs.size() == 1 && graph->outputs()[0] == convs[0]->output() &&
         convs[0]->input(kOutAffine)->type()->kind() == c10::TypeKind::NoneType;
}

// One `bn(conv(x))` (and a ReLU or ReLU6 of it) in a parent's method; `float_conv`: the
// convolution stays float (float_conv below).
struct Fold {
  std::shared_ptr<Graph> graph;  // the method's
  Node* bn_call;
  Clamp clamp;  // node nullptr: none
  std::string conv, bn;
  bool float_conv = false;
};

// How often each child is called in the parent's methods: a child called twice cannot take a fold
// that only one of its calls is followed by.
std::map<std::string, int> child_calls(const c10::ClassTypePtr& parent) {
  std::map<std::string, int> calls;
  for (auto* method : parent->methods()) {
    if (!method->isGraphFunction()) continue;
    const auto graph = torch::jit::toGraphFunction(*method).graph();
    for (Node* node : graph->nodes())
      if (node->kind() == c10::prim::CallMethod && node->input(0)->node()->kind() == c10::prim::GetAttr)
        ++calls[node->input(0)->node()->s(c10::attr::name)];
  }
  return calls;
}

// An nn.Conv2d the packing kept float (a first layer): float weight, zero padding given as numbers.
bool float_conv(const torch::jit::Module& conv) {
  const auto type = conv.type();
  if (!type_named(type, ".Conv2d") || conv.hasattr(codes_name("weight")) || !conv.hasattr("weight") ||
      !conv.attr("weight").isTensor())
    return false;
  const auto w = conv.attr("weight").toTensor();
  for (const char* constant : {"stride", "padding", "dilation", "groups", "padding_mode"})
    if (!type->hasConstant(constant)) return false;
  return w.dim() == 4 && w.numel() > 0 && w.scalar_type() == torch::kFloat &&
         type->getConstant("padding_mode").toStringRef() == "zeros" && type->getConstant("padding").isTuple();
}

// Whether every instance's BatchNorm can fold: evaluation mode, running statistics kept.
bool foldable_bn(const torch::jit::Module& bn) {
  if (bn.is_training() || !bn.type()->hasConstant("eps")) return false;
  for (const char* stat : {"running_mean", "running_var"})
    if (!bn.hasattr(stat) || !bn.attr(stat).isTensor()) return false;
  return true;
}

// The folds in one method's graph of `parent` (`calls`: child_calls).
void folds_in(const std::shared_ptr<Graph>& graph, const std::vector<torch::jit::Module>& instances,
              const std::map<std::string, int>& calls, std::vector<Fold>& folds) {
  for (Node* node : graph->nodes()) {
    const std::string bn = child_call(node, *graph);
    if (bn.empty() || node->inputs().size() != 2 || !type_named(node->input(0)->type(), ".BatchNorm2d")) continue;
    Value* conv_out = node->input(1);
    const std::string conv = child_call(conv_out->node(), *graph);
    if (conv.empty() || conv_out->uses().size() != 1 || calls.at(conv) != 1 || calls.at(bn) != 1) continue;
    const bool packed = packed_int8_conv(conv_out->node()->input(0)->type()->expect<c10::ClassType>());
    bool every = true;
    for (const auto& m : instances) {
      const auto c = m.attr(conv).toModule();
      every = every && foldable_bn(m.attr(bn).toModule()) &&
              (packed ? c.hasattr(codes_name("weight")) && c.attr(codes_name("weight")).toTensor().numel() > 0
                      : float_conv(c));
    }
    if (every) folds.push_back({graph, node, sole_clamp(node->output(), *graph), conv, bn, !packed});
  }
}

// The folds in every method of `parent` (torchvision's ResNet runs its stem in _forward_impl).
std::vector<Fold> folds_in(const c10::ClassTypePtr& parent, const std::vector<torch::jit::Module>& instances) {
  std::vector<Fold> folds;
  const auto calls = child_calls(parent);
  for (auto* method : parent->methods())
    if (method->isGraphFunction()) folds_in(torch::jit::toGraphFunction(*method).graph(), instances, calls, folds);
  return folds;
}

// [scale; shift] of `bn` (bn(y) = scale · y + shift per channel).
torch::Tensor affine_of(const torch::jit::Module& bn) {
  const auto mean = bn.attr("running_mean").toTensor().to(torch::kDouble);
  const auto var = bn.attr("running_var").toTensor().to(torch::kDouble);
  const double eps = bn.type()->getConstant("eps").toDouble();
  auto scale = (var + eps).rsqrt();
  if (bn.attr("weight").isTensor()) scale = scale * bn.attr("weight").toTensor().to(torch::kDouble);
  auto shift = -mean * scale;
  if (bn.attr("bias").isTensor()) shift = shift + bn.attr("bias").toTensor().to(torch::kDouble);
  return torch::stack({scale, shift}).to(torch::kFloat);
}

// The one value of an nn.MaxPool2d's constant `name` for both dimensions (an int, or a pair of
// equal ones), else none.
std::optional<int64_t> square(const c10::ClassTypePtr& pool, const char* name) {
  if (!pool->hasConstant(name)) return std::nullopt;
  const c10::IValue v = pool->getConstant(name);
  if (v.isInt()) return v.toInt();
  if (!v.isTuple() || v.toTupleRef().elements().size() != 2) return std::nullopt;
  const auto& e = v.toTupleRef().elements();
  if (!e[0].isInt() || !e[1].isInt() || e[0].toInt() != e[1].toInt()) return std::nullopt;
  return e[0].toInt();
}

// A max-pool that alone takes a ttq::conv2d_affine's output (`self.maxpool(x)`: an nn.MaxPool2d of
// square kernel, stride and padding, no dilation, floor mode, no indices; ResNet's after its stem)
// becomes the operator's max_pool: it then writes the full-size output into a reused scratch.
void pool_into_conv(Graph& graph, Node* conv) {
  Value* out = conv->output();
  if (out->uses().size() != 1) return;
  Node* call = out->uses()[0].user;
  if (child_call(call, graph).empty() || call->inputs().size() != 2 || !type_named(call->input(0)->type(), ".MaxPool2d"))
    return;
  const auto pool = call->input(0)->type()->expect<c10::ClassType>();
  const auto kernel = square(pool, "kernel_size"), stride = square(pool, "stride"), padding = square(pool, "padding");
  const auto dilation = square(pool, "dilation");
  if (!kernel || !stride || !padding || dilation != 1 || !pool->hasConstant("ceil_mode") ||
      pool->getConstant("ceil_mode").toBool() || !pool->hasConstant("return_indices") ||
      pool->getConstant("return_indices").toBool())
    return;
  torch::jit::WithInsertPoint guard(conv);
  conv->replaceInput(kMaxPool, graph.insertConstant(c10::IValue(std::vector<int64_t>{*kernel, *stride, *padding})));
  call->output()->replaceAllUsesWith(out);
  call->destroy();
}

// `conv(x)` of a float convolution becomes ttq::conv2d_affine(x, conv.weight_int8, conv.bias, ...,
// conv.weight_out_affine, conv.weight_input_step, [], conv.weight_clamp, conv.weight_step,
// conv.weight_output_step) in the parent's graph (int8 inputs and the weights in 8 bits, calibrated
// as the packed layers are; a grouped one on its float weight; bytes out where chain_int8_layers
// chooses), with the max-pool after it (pool_into_conv): the convolution's own forward stays as it is.
Value* insert_conv2d_affine(Graph& graph, Node* conv_call, const torch::jit::Module& conv) {
  torch::jit::WithInsertPoint guard(conv_call);
  Value* self = conv_call->input(0);
  const auto type = conv.type();
  auto numbers = [&](const char* constant) {
    std::vector<int64_t> values;
    const c10::IValue tuple = type->getConstant(constant);
    for (const auto& v : tuple.toTupleRef().elements()) values.push_back(v.toInt());
    return graph.insertConstant(c10::IValue(values));
  };
  const bool eight_bit = conv.hasattr(eight_bit_name("weight"));
  Value* out = insert_op(graph, "ttq::conv2d_affine",
                         {conv_call->input(1), graph.insertGetAttr(self, eight_bit ? eight_bit_name("weight") : "weight"),
                          graph.insertGetAttr(self, "bias"), numbers("stride"), numbers("padding"), numbers("dilation"),
                          graph.insertConstant(type->getConstant("groups")),
                          graph.insertGetAttr(self, out_affine_name("weight")),
                          graph.insertGetAttr(self, input_step_name("weight")),
                          graph.insertConstant(c10::IValue(std::vector<int64_t>{})),
                          graph.insertGetAttr(self, clamp_name("weight")),
                          eight_bit ? graph.insertGetAttr(self, weight_step_name("weight"))
                                    : graph.insertConstant(c10::IValue()),
                          graph.insertGetAttr(self, output_step_name("weight"))});
  return out;
}

// The call replaced, once no insert point refers to it: a guard made after the call is destroyed
// (pool_into_conv's) would otherwise restore a freed node on leaving (an assertion in LibTorch 2.x,
// reading freed memory in either).
void call_conv2d_affine(Graph& graph, Node* conv_call, const torch::jit::Module& conv) {
  Value* out = insert_conv2d_affine(graph, conv_call, conv);
  conv_call->output()->replaceAllUsesWith(out);
  conv_call->destroy();
  pool_into_conv(graph, out->node());
}

// A float convolution's buffers for conv2d_affine: its input step (0: dynamic until calibrated), its
// output step (0 until chained) and, with one group (the int8 kernels'), its weight in 8 bits a row
// (weight_int8, weight_step), the bytes conv2d_affine would round it to.
void register_float_conv(torch::jit::Module conv) {
  conv.register_buffer(input_step_name("weight"), torch::zeros({1}));
  conv.register_buffer(output_step_name("weight"), torch::zeros({1}));  // float32 out until chained
  if (conv.type()->getConstant("groups").toInt() != 1) return;
  const auto w = conv.attr("weight").toTensor();
  const auto [bytes, step] = ops::eight_bit_rows(w);
  conv.register_buffer(eight_bit_name("weight"), bytes.reshape(w.sizes()).clone());
  conv.register_buffer(weight_step_name("weight"), step);
}

// The identity out_affine and clamp for the modules of `instances` not `given` one: scale 1, shift 0,
// no floor or ceiling; and a float convolution's buffers (register_float_conv).
void give_identity(const std::vector<std::pair<std::string, torch::jit::Module>>& instances,
                   const std::set<const void*>& given) {
  for (const auto& [path, m] : instances) {
    if (given.count(m._ivalue().get())) continue;
    const bool packed = m.hasattr(codes_name("weight"));
    auto identity = torch::zeros({2, m.attr(packed ? codes_name("weight") : "weight").toTensor().size(0)});
    identity[0].fill_(1);
    torch::jit::Module(m).register_buffer(out_affine_name("weight"), identity);
    torch::jit::Module(m).register_buffer(clamp_name("weight"), clamp_tensor({}));
    if (!packed) register_float_conv(m);
  }
}

// The qualified name of the function a prim::CallFunction node calls ("" for any other node).
std::string called_function(const Node* node) {
  if (node->kind() != c10::prim::CallFunction) return "";
  const auto type = node->input(0)->type()->cast<c10::FunctionType>();
  return type ? type->function()->qualname().qualifiedName() : "";
}

}  // namespace

bool type_named(const c10::TypePtr& type, const std::string& suffix) {
  const auto cls = type->cast<c10::ClassType>();
  if (!cls || !cls->name()) return false;
  const std::string name = cls->name()->qualifiedName();
  return name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string child_call(const Node* node, const Graph& graph) {
  if (node->kind() != c10::prim::CallMethod || node->s(c10::attr::name) != "forward") return "";
  const Node* get = node->input(0)->node();
  if (get->kind() != c10::prim::GetAttr || get->input() != graph.inputs()[0]) return "";
  return get->s(c10::attr::name);
}

std::shared_ptr<Graph> forward_graph(const c10::ClassTypePtr& type) {
  torch::jit::Function* forward = type->findMethod("forward");
  return forward && forward->isGraphFunction() ? torch::jit::toGraphFunction(*forward).graph() : nullptr;
}

Clamp sole_clamp(Value* value, const Graph& graph) {
  if (value->uses().size() != 1) return {};
  Node* user = value->uses()[0].user;
  const bool child = !child_call(user, graph).empty();
  // F.relu(x) and F.relu6(x) are calls of TorchScript functions, x their first argument.
  const std::string function = value->uses()[0].offset == 1 ? called_function(user) : "";
  if (user->kind() == c10::aten::relu || user->kind() == c10::aten::relu_ ||
      (child && type_named(user->input(0)->type(), ".ReLU")) || function == "__torch__.torch.nn.functional.relu")
    return {user, 0.0};
  static const auto relu6 = c10::Symbol::fromQualString("aten::relu6");
  if (user->kind() == relu6 || (child && type_named(user->input(0)->type(), ".ReLU6")) ||
      function == "__torch__.torch.nn.functional.relu6")
    return {user, 0.0, 6.0};
  if (user->kind() == c10::aten::hardtanh || user->kind() == c10::aten::hardtanh_) {
    const auto low = torch::jit::toIValue(user->input(1)), high = torch::jit::toIValue(user->input(2));
    if (low && high && low->isDouble() && high->isDouble()) return {user, low->toDouble(), high->toDouble()};
  }
  return {};
}

torch::Tensor clamp_tensor(const Clamp& clamp) {
  return torch::tensor({static_cast<float>(clamp.floor), static_cast<float>(clamp.ceiling)});
}

std::pair<std::vector<c10::ClassTypePtr>, Instances> module_types(const torch::jit::Module& module) {
  std::vector<c10::ClassTypePtr> types;
  Instances instances;
  for (const auto& m : module.named_modules()) {
    auto& list = instances[m.value.type()];
    if (list.empty()) types.push_back(m.value.type());
    list.emplace_back(m.name, m.value);
  }
  return {types, instances};
}

torch::jit::Module submodule(torch::jit::Module m, const std::string& path) {
  for (size_t at = 0; at < path.size();) {
    const size_t dot = std::min(path.find('.', at), path.size());
    m = m.attr(path.substr(at, dot - at)).toModule();
    at = dot + 1;
  }
  return m;
}

void conv_nodes(torch::jit::Block* block, std::vector<Node*>& found) {
  for (Node* node : block->nodes()) {
    if (node->kind() == kConvInt8) found.push_back(node);
    for (auto* inner : node->blocks()) conv_nodes(inner, found);
  }
}

bool on_int8_kernels(const Node* conv) {
  const auto shape = torch::jit::toIValue(conv->input(kShape));
  const auto groups = torch::jit::toIValue(conv->input(kGroups));
  return conv->kind() == kConvInt8 && shape && groups && shape->isIntList() && groups->isInt() &&
         ops::conv_runs_int8(shape->toIntVector(), groups->toInt());
}

torch::jit::GraphFunction* called_method(const Node* call) {
  const auto type = call->input(0)->type()->cast<c10::ClassType>();
  torch::jit::Function* method = type ? type->findMethod(call->s(c10::attr::name)) : nullptr;
  return method && method->isGraphFunction() ? &torch::jit::toGraphFunction(*method) : nullptr;
}

std::optional<std::string> module_path(const Value* read, const Graph& graph) {
  const Node* node = read->node();
  if (node->kind() != c10::prim::GetAttr) return std::nullopt;
  std::string path;
  for (const Value* m = node->input(); m != graph.inputs()[0]; m = m->node()->input()) {
    if (m->node()->kind() != c10::prim::GetAttr) return std::nullopt;
    path = path.empty() ? m->node()->s(c10::attr::name) : join_path(m->node()->s(c10::attr::name), path);
  }
  return path;
}

std::optional<std::string> path_of_module(const Value* m, const Graph& graph) {
  if (m == graph.inputs()[0]) return "";
  const auto parent = module_path(m, graph);
  return parent ? std::optional<std::string>(join_path(*parent, m->node()->s(c10::attr::name))) : std::nullopt;
}

std::string out_affine_name(const std::string& weight) { return weight + "_out_affine"; }
std::string clamp_name(const std::string& weight) { return weight + "_clamp"; }
std::string output_step_name(const std::string& weight) { return weight + "_output_step"; }
std::string residual_step_name(const std::string& weight) { return weight + "_residual_step"; }

std::vector<std::string> fold_batch_norms(torch::jit::Module& module) {
  torch::NoGradGuard no_grad;
  auto [parents, instances] = module_types(module);
  std::vector<std::string> folded;  // the convolutions' weights, by path
  std::set<c10::ClassTypePtr> conv_types, float_conv_types;
  std::set<const void*> given;  // the convolution objects given an out_affine (hasattr asks the class)
  for (const auto& parent : parents) {
    std::vector<torch::jit::Module> of_parent;
    for (const auto& [path, m] : instances[parent]) of_parent.push_back(m);
    const auto folds = folds_in(parent, of_parent);
    for (const auto& fold : folds) {
      for (const auto& [path, m] : instances[parent]) {
        auto conv = m.attr(fold.conv).toModule();
        conv.register_buffer(out_affine_name("weight"), affine_of(m.attr(fold.bn).toModule()));
        conv.register_buffer(clamp_name("weight"), clamp_tensor(fold.clamp));
        if (fold.float_conv) register_float_conv(conv);
        (fold.float_conv ? float_conv_types : conv_types).insert(conv.type());
        given.insert(conv._ivalue().get());
        folded.push_back(join_path(join_path(path, fold.conv), "weight"));
      }
      Value* conv_out = fold.bn_call->input(1);
      Node* last = fold.clamp.node ? fold.clamp.node : fold.bn_call;
      last->output()->replaceAllUsesWith(conv_out);
      if (fold.clamp.node) fold.clamp.node->destroy();
      fold.bn_call->destroy();
      if (fold.float_conv)
        call_conv2d_affine(*fold.graph, conv_out->node(), instances[parent][0].second.attr(fold.conv).toModule());
    }
    for (const auto& fold : folds) torch::jit::EliminateDeadCode(fold.graph);
  }
  // Each convolution class that takes a fold has an out_affine and a clamp: instances without them
  // get the identity (scale 1, shift 0, no floor or ceiling). A packed class's forward reads them.
  for (const auto& type : float_conv_types) give_identity(instances[type], given);
  for (const auto& type : conv_types) {
    give_identity(instances[type], given);
    const auto graph = forward_graph(type);
    std::vector<Node*> convs;
    conv_nodes(graph->block(), convs);
    torch::jit::WithInsertPoint guard(convs[0]);
    convs[0]->replaceInput(kOutAffine, graph->insertGetAttr(graph->inputs()[0], out_affine_name("weight")));
    convs[0]->replaceInput(kClamp, graph->insertGetAttr(graph->inputs()[0], clamp_name("weight")));
  }
  return folded;
}

}  // namespace ttq
