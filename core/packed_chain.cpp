// chain_int8_layers (packed_model.h): int8 convolutions that store the next ones' input bytes. The
// choice is made on each method's whole program, every call inlined, so that bytes pass through
// module boundaries (a block's output is the next block's input and residual) as well as within a
// parent; the class graphs only learn to read each module's steps, whose values are the choice.
#include <torch/csrc/jit/passes/constant_propagation.h>

#include <map>
#include <optional>
#include <set>

#include "core/error.h"
#include "core/graph_passes.h"
#include "core/packed_graph.h"
#include "core/packed_model.h"

namespace ttq {
namespace {

using torch::jit::Graph, torch::jit::Node, torch::jit::Value;

// The weight a conv2d_int8 node runs ("weight", from its read of "weight_codes").
std::string weight_of(const Node* conv) {
  const std::string codes = conv->input(kCodes)->node()->s(c10::attr::name);
  return codes.substr(0, codes.size() - codes_name("").size());
}

// Every conv2d_int8 node on the int8 kernels, in every method of every class, reads its output_step
// and residual_step from the module that holds its codes; every instance of that class gets both,
// zero (float32 output, a float32 residual) until chosen.
void read_steps_from_modules(const std::vector<c10::ClassTypePtr>& types, Instances& instances) {
  std::set<std::pair<c10::ClassTypePtr, std::string>> given;
  for (const auto& type : types)
    for (auto* method : type->methods()) {
      if (!method->isGraphFunction()) continue;
      auto graph = torch::jit::toGraphFunction(*method).graph();
      std::vector<Node*> convs;
      conv_nodes(graph->block(), convs);
      for (Node* conv : convs) {
        if (!on_int8_kernels(conv) || conv->input(kCodes)->node()->kind() != c10::prim::GetAttr) continue;
        Value* owner = conv->input(kCodes)->node()->input();
        const std::string weight = weight_of(conv);
        const auto owner_type = owner->type()->expect<c10::ClassType>();
        if (given.insert({owner_type, weight}).second)
          for (const auto& [path, m] : instances[owner_type])
            for (const auto& name : {output_step_name(weight), residual_step_name(weight)})
              torch::jit::Module(m).register_buffer(name, torch::zeros({1}));
        torch::jit::WithInsertPoint guard(conv);
        conv->replaceInput(kOutputStep, graph->insertGetAttr(owner, output_step_name(weight)));
        conv->replaceInput(kResidualStep, graph->insertGetAttr(owner, residual_step_name(weight)));
      }
    }
}

// The first method call in a block (its nested blocks too) that can be inlined.
Node* first_call(torch::jit::Block* block) {
  for (Node* node : block->nodes()) {
    if (node->kind() == c10::prim::CallMethod && called_method(node)) return node;
    for (auto* inner : node->blocks())
      if (Node* call = first_call(inner)) return call;
  }
  return nullptr;
}

// Each read of a module's bool, int or float attribute (MobileNetV2's use_res_connect, a block's
// stride) replaced by its value in `module`, where the program never sets that attribute; constant
// propagation then takes the branches they decide.
void fold_attribute_reads(Graph& graph, torch::jit::Block* block, const torch::jit::Module& module,
                          const std::set<std::pair<std::string, std::string>>& set) {
  for (auto it = block->nodes().begin(); it != block->nodes().end();) {
    Node* node = *it++;
    for (auto* inner : node->blocks()) fold_attribute_reads(graph, inner, module, set);
    const auto path = node->kind() == c10::prim::GetAttr ? module_path(node->output(), graph) : std::nullopt;
    if (!path || set.count({*path, node->s(c10::attr::name)}) || set.count({"*", node->s(c10::attr::name)})) continue;
    const auto value = submodule(module, *path).attr(node->s(c10::attr::name));
    if (!value.isBool() && !value.isInt() && !value.isDouble()) continue;
    torch::jit::WithInsertPoint guard(node);
    node->output()->replaceAllUsesWith(graph.insertConstant(value));
    node->destroy();
  }
}

// The attributes a program sets (prim::SetAttr), by module path and name ("*" for a module reached
// otherwise than through attributes).
void attributes_set(const Graph& graph, const torch::jit::Block* block, std::set<std::pair<std::string, std::string>>& set) {
  for (const Node* node : block->nodes()) {
    for (const auto* inner : node->blocks()) attributes_set(graph, inner, set);
    if (node->kind() == c10::prim::SetAttr)
      set.insert({path_of_module(node->inputs()[0], graph).value_or("*"), node->s(c10::attr::name)});
  }
}

// What one method of `module` runs: its graph with every method call inlined (inlined_program), its
// modules' numbers and flags as they are, and the branches they decide taken.
std::shared_ptr<Graph> whole_program(const torch::jit::Module& module, torch::jit::Function& method) {
  auto graph = inlined_program(method);
  std::set<std::pair<std::string, std::string>> set;
  attributes_set(*graph, graph->block(), set);
  fold_attribute_reads(*graph, graph->block(), module, set);
  torch::jit::ConstantPropagation(graph);
  return graph;
}

// A convolution of the program: its module's path, its weight, and the step its input is
// calibrated to (0: none, or not packed in this instance).
struct ProgramConv {
  std::string path, weight;
  float input_step = 0;
};
std::optional<ProgramConv> program_conv(const Node* conv, const Graph& graph, const torch::jit::Module& module) {
  if (!on_int8_kernels(conv)) return std::nullopt;
  const auto path = module_path(conv->input(kCodes), graph);
  if (!path) return std::nullopt;
  ProgramConv c{*path, weight_of(conv)};
  const auto owner = submodule(module, c.path);
  if (owner.attr(codes_name(c.weight)).toTensor().numel() > 0)
    c.input_step = owner.attr(input_step_name(c.weight)).toTensor().item<float>();
  return c;
}

// A float convolution of the program (ttq::conv2d_affine: a stem kept float) that may store bytes:
// one group, its input step read from its module (the int8 path), as conv2d_int8's.
std::optional<ProgramConv> program_float_conv(const Node* conv, const Graph& graph, const torch::jit::Module& module) {
  const auto groups = torch::jit::toIValue(conv->input(kAffineGroups));
  const Node* step = conv->input(kAffineInputStep)->node();
  const auto path = module_path(conv->input(kAffineWeight), graph);
  if (!groups || !groups->isInt() || groups->toInt() != 1 || step->kind() != c10::prim::GetAttr || !path)
    return std::nullopt;
  const auto input_step = submodule(module, *path).attr(input_step_name("weight")).toTensor();
  return ProgramConv{*path, "weight", input_step.item<float>()};
}

// The int8 convolutions of a block (its nested blocks too), in order: conv2d_int8 nodes and the
// float convolutions before them (conv2d_affine), which may store their bytes too.
void producer_nodes(torch::jit::Block* block, std::vector<Node*>& found) {
  for (Node* node : block->nodes()) {
    if (node->kind() == kConvInt8 || node->kind() == kConvAffine) found.push_back(node);
    for (auto* inner : node->blocks()) producer_nodes(inner, found);
  }
}

// The choice: per chained convolution (its weight's path) the step it stores at, and per
// convolution taking those bytes as its residual the step they are on; a module met with two
// different choices takes none (nullopt).
struct ChainChoice {
  std::map<std::string, std::optional<float>> output_step, residual_step;
  std::map<std::string, std::set<std::string>> feeds;  // chained -> residual takers
  std::vector<std::string> order;                      // chained, as forward first runs them
};

void choose(std::map<std::string, std::optional<float>>& choices, const std::string& key, std::optional<float> step) {
  const auto [it, fresh] = choices.emplace(key, step);
  if (!fresh && it->second != step) it->second = std::nullopt;
}

// The choice at each int8 convolution of one program (a float one run int8 too): bytes where every
// use of its output is the input of an int8 convolution on one calibrated step, or the residual of one.
void choose_in(Graph& graph, const torch::jit::Module& module, ChainChoice& choice) {
  std::vector<Node*> convs;
  producer_nodes(graph.block(), convs);
  for (Node* conv : convs) {
    const auto c = conv->kind() == kConvInt8 ? program_conv(conv, graph, module)
                                             : program_float_conv(conv, graph, module);
    if (!c) continue;
    const std::string key = join_path(c->path, c->weight);
    std::optional<float> step;
    std::set<std::string> residual_takers;
    bool bytes = c->input_step > 0 && !conv->output()->uses().empty();
    for (const auto& use : conv->output()->uses()) {
      const auto taker = use.user->kind() == kConvInt8 ? program_conv(use.user, graph, module) : std::nullopt;
      if (!taker || (use.offset != 0 && use.offset != kResidual)) {
        bytes = false;
      } else if (use.offset == kResidual) {
        residual_takers.insert(join_path(taker->path, taker->weight));
      } else if (taker->input_step == 0 || (step && *step != taker->input_step)) {
        bytes = false;
      } else {
        step = taker->input_step;
      }
    }
    bytes = bytes && step;
    if (!choice.output_step.count(key)) choice.order.push_back(key);
    choose(choice.output_step, key, bytes ? step : std::optional<float>(0.0f));
    if (!bytes) continue;
    for (const auto& taker : residual_takers) {
      choose(choice.residual_step, taker, step);
      choice.feeds[key].insert(taker);
    }
  }
}

// Sets the step buffer `name_of(weight)` of the module holding `key` ("layer1.0.conv2.weight").
void set_step(torch::jit::Module& module, const std::string& key, std::string (*name_of)(const std::string&), float step) {
  const size_t dot = key.rfind('.');
  const std::string path = dot == std::string::npos ? "" : key.substr(0, dot);
  submodule(module, path).register_buffer(name_of(key.substr(dot == std::string::npos ? 0 : dot + 1)),
                                          torch::full({1}, step));
}

}  // namespace

std::shared_ptr<Graph> inlined_program(torch::jit::Function& method) {
  auto graph = torch::jit::toGraphFunction(method).graph()->copy();
  constexpr int kMaxCalls = 100000;
  for (int calls = 0; Node* call = first_call(graph->block()); ++calls) {
    if (calls == kMaxCalls)
      throw runtime_error(fmt::format("packing: {} still calls methods after {} inlined; please report this model",
                                      method.name(), kMaxCalls));
    auto* callee = called_method(call);
    torch::jit::inlineCallTo(call, callee, callee->graph().get());
  }
  return graph;
}

std::vector<std::string> chain_int8_layers(torch::jit::Module& module) {
  torch::NoGradGuard no_grad;
  auto [types, instances] = module_types(module);
  read_steps_from_modules(types, instances);
  ChainChoice choice;
  for (auto* method : module.type()->methods())
    if (method->isGraphFunction()) choose_in(*whole_program(module, *method), module, choice);
  // A convolution that takes bytes as its residual on two different steps takes floats from all.
  for (auto& [key, step] : choice.output_step)
    for (const auto& taker : choice.feeds[key])
      if (!choice.residual_step.at(taker)) step = std::nullopt;
  std::vector<std::string> chained;
  for (const auto& key : choice.order) {
    const auto step = choice.output_step.at(key);
    if (!step || *step == 0) continue;
    set_step(module, key, output_step_name, *step);
    for (const auto& taker : choice.feeds[key]) set_step(module, taker, residual_step_name, *step);
    chained.push_back(key);
  }
  return chained;
}

}  // namespace ttq
