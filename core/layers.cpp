#include "core/layers.h"

#include <torch/csrc/jit/passes/inliner.h>

#include <algorithm>
#include <regex>
#include <unordered_map>
#include <unordered_set>

#include "core/error.h"
#include "core/util.h"

namespace ttq {
namespace {

bool is_quantizable(const torch::Tensor& t) { return t.dim() >= 2 && t.is_floating_point(); }

// Ops that use a tensor as the weights of a layer (what TTQ ternarizes), by kind of layer.
const char* weight_use(c10::Symbol kind) {
  static const std::unordered_map<std::string, const char*> kUses = {
      {"aten::_convolution", "conv"},        {"aten::convolution", "conv"},         {"aten::conv1d", "conv"},
      {"aten::conv2d", "conv"},              {"aten::conv3d", "conv"},              {"aten::conv_transpose1d", "conv"},
      {"aten::conv_transpose2d", "conv"},    {"aten::conv_transpose3d", "conv"},    {"aten::linear", "linear"},
      {"aten::matmul", "linear"},            {"aten::mm", "linear"},                {"aten::bmm", "linear"},
      {"aten::addmm", "linear"},             {"aten::einsum", "linear"},            {"aten::lstm", "rnn"},
      {"aten::gru", "rnn"},                  {"aten::rnn_tanh", "rnn"},             {"aten::rnn_relu", "rnn"},
      {"aten::embedding", "embedding"},      {"aten::embedding_bag", "embedding"}};
  const auto it = kUses.find(kind.toQualString());
  return it == kUses.end() ? nullptr : it->second;
}

// Ops through which a weight reaches its use unchanged in value (nn.MultiheadAttention slices
// in_proj_weight; RNNs take their weights as a list).
bool passes_weights(c10::Symbol kind) {
  static const std::unordered_set<std::string> kPass = {
      "aten::t",     "aten::transpose", "aten::view",       "aten::reshape",     "aten::slice",
      "aten::chunk", "aten::unsafe_chunk", "aten::split",   "aten::split_with_sizes", "aten::unsafe_split",
      "aten::select", "aten::contiguous", "aten::__getitem__", "prim::ListUnpack", "prim::ListConstruct"};
  return kPass.count(kind.toQualString()) > 0;
}

// Normalizations: a layer whose output one of these takes directly has its output scale
// normalized away (what makes the authors' Wp = Wn = 1 start work).
bool normalizes(c10::Symbol kind) {
  static const std::unordered_set<std::string> kNorms = {"aten::batch_norm", "aten::layer_norm", "aten::group_norm",
                                                         "aten::instance_norm", "aten::native_batch_norm"};
  return kNorms.count(kind.toQualString()) > 0;
}

// What the inlined `forward` graph does with each parameter: the order in which it first reads
// attributes, and for each parameter its weight use (conv, linear, rnn, embedding) or else the
// first op that takes it ("add", "mul", "cat", ...).
struct GraphUses {
  std::vector<std::string> order;                     // attribute paths and parameters, first read first
  std::unordered_map<std::string, std::string> weight;  // parameter → its weight use
  std::unordered_map<std::string, std::string> other;   // parameter → the first other op using it
  std::unordered_set<std::string> normalized;           // weights whose layer output a normalization takes
};

class UseWalker {
 public:
  UseWalker(const torch::jit::Module& module, GraphUses& uses) : module_(module), uses_(uses) {
    // By their data: a loaded RNN's _flat_weights list holds other tensor objects over the same memory.
    for (const auto& p : module.named_parameters(true))
      if (p.value.numel() > 0) params_[p.value.data_ptr()] = p.name;
  }

  void walk(torch::jit::Block* block) {
    for (torch::jit::Node* node : block->nodes()) {
      if (node->kind() == c10::prim::GetAttr)
        read_attribute(node);
      else
        use(node);
      for (torch::jit::Block* inner : node->blocks()) walk(inner);
    }
  }

  void start(const torch::jit::Value* self) { paths_[self] = ""; }

 private:
  void read_attribute(torch::jit::Node* node) {
    const auto parent = paths_.find(node->input(0));
    if (parent == paths_.end()) return;
    const std::string name = node->s(c10::attr::name);
    const std::string path = parent->second.empty() ? name : parent->second + "." + name;
    paths_[node->output()] = path;
    uses_.order.push_back(path);
    // A parameter, or a list of them (an RNN's _flat_weights), by identity with the module's.
    const c10::IValue value = attribute(path);
    std::vector<std::string>& origin = origins_[node->output()];
    const auto add = [&](const c10::IValue& v) {
      if (!v.isTensor()) return;
      const auto& t = v.toTensor();
      if (!t.defined() || t.numel() == 0) return;
      const auto it = params_.find(t.data_ptr());
      if (it != params_.end()) origin.push_back(it->second);
    };
    if (value.isList())
      for (const auto& v : value.toListRef()) add(v);
    else
      add(value);
    // Parameters read through a list are read where the list is.
    for (const auto& p : origin)
      if (p != path) uses_.order.push_back(p);
  }

  c10::IValue attribute(const std::string& path) const {
    torch::jit::Module owner = module_;
    std::string rest = path;
    for (size_t dot; (dot = rest.find('.')) != std::string::npos; rest = rest.substr(dot + 1)) {
      const std::string child = rest.substr(0, dot);
      if (!owner.hasattr(child) || !owner.attr(child).isModule()) return {};
      owner = owner.attr(child).toModule();
    }
    return owner.hasattr(rest) ? owner.attr(rest) : c10::IValue();
  }

  void use(torch::jit::Node* node) {
    if (normalizes(node->kind()) && node->inputs().size() > 0) {
      const auto layer = layer_outputs_.find(node->input(0));
      if (layer != layer_outputs_.end()) uses_.normalized.insert(layer->second.begin(), layer->second.end());
    }
    std::vector<std::string> reaching;
    for (const torch::jit::Value* input : node->inputs()) {
      const auto it = origins_.find(input);
      if (it != origins_.end()) reaching.insert(reaching.end(), it->second.begin(), it->second.end());
    }
    if (reaching.empty()) return;
    if (passes_weights(node->kind())) {
      for (const torch::jit::Value* output : node->outputs()) origins_[output] = reaching;
      return;
    }
    const char* weight = weight_use(node->kind());
    const std::string op = node->kind().toUnqualString();
    for (const auto& p : reaching) {
      if (weight) uses_.weight.emplace(p, weight);
      else uses_.other.emplace(p, op);
    }
    if (weight && node->outputs().size() > 0) layer_outputs_[node->output(0)] = reaching;
  }

  const torch::jit::Module& module_;
  GraphUses& uses_;
  std::unordered_map<const void*, std::string> params_;
  std::unordered_map<const torch::jit::Value*, std::string> paths_;
  std::unordered_map<const torch::jit::Value*, std::vector<std::string>> origins_;
  std::unordered_map<const torch::jit::Value*, std::vector<std::string>> layer_outputs_;  // → their weights
};

// nullopt when the module has no `forward` ttq can read.
std::optional<GraphUses> forward_uses(const torch::jit::Module& module) {
  auto method = module.find_method("forward");
  if (!method) return std::nullopt;
  auto graph = method->graph()->copy();
  torch::jit::Inline(*graph);
  GraphUses uses;
  UseWalker walker(module, uses);
  walker.start(graph->inputs().at(0));
  walker.walk(graph->block());
  return uses;
}

}  // namespace

LayerUses analyze_layers(const torch::jit::Module& module) {
  std::vector<Candidate> registered;
  std::unordered_map<std::string, size_t> index;
  for (const auto& p : module.named_parameters(/*recurse=*/true)) {
    if (!is_quantizable(p.value) || index.count(p.name)) continue;
    index[p.name] = registered.size();
    registered.push_back({p.name, p.value, false});
  }
  LayerUses a;
  const auto uses = forward_uses(module);
  if (!uses) {
    spdlog::warn("the model has no forward method ttq can read: every floating parameter of rank >= 2 is a "
                 "candidate, in registration order");
    a.candidates = registered;
    return a;
  }
  std::unordered_set<std::string> placed;
  for (const auto& path : uses->order) {
    auto it = index.find(path);
    if (it == index.end() || !uses->weight.count(path) || !placed.insert(path).second) continue;
    a.candidates.push_back(registered[it->second]);
    a.candidates.back().normalized = uses->normalized.count(path) > 0;
  }
  for (const auto& c : registered) {
    if (placed.count(c.name)) continue;
    const auto other = uses->other.find(c.name);
    a.excluded.push_back({c.name, c.weight.sizes().vec(), other == uses->other.end() ? "unused" : other->second});
  }
  return a;
}

std::vector<Candidate> find_candidates(const torch::jit::Module& module) { return analyze_layers(module).candidates; }

size_t mark_selected(std::vector<Candidate>& candidates, const Selection& selection) {
  const auto include = compile_regexes(selection.include), exclude = compile_regexes(selection.exclude);

  size_t count = 0;
  for (size_t i = 0; i < candidates.size(); ++i) {
    auto& c = candidates[i];
    if (!selection.only.empty()) {
      c.selected = std::find(selection.only.begin(), selection.only.end(), c.name) != selection.only.end();
      count += c.selected;
      continue;
    }
    const bool kept_fp = (i == 0 && !selection.quantize_first) ||
                         (i + 1 == candidates.size() && !selection.quantize_last);
    c.selected = !kept_fp && (include.empty() || matches_any(c.name, include)) &&
                 !matches_any(c.name, exclude);
    count += c.selected;
  }
  return count;
}

void apply_selection(std::vector<Candidate>& candidates, const Selection& selection) {
  if (candidates.empty())
    throw input_error("the model has no quantizable layer (no parameter that forward uses as the weights of a "
                      "convolution, linear or matrix product, RNN or embedding)");
  if (mark_selected(candidates, selection) == 0)
    throw usage_error(fmt::format(
        "no layer selected: the model has {} quantizable layer(s); the first and last stay full "
        "precision unless --quantize-first/--quantize-last, and --include/--exclude narrow the rest",
        candidates.size()));
}

ParameterSlot find_slot(const torch::jit::Module& module, const std::string& qualified_name) {
  torch::jit::Module owner = module;
  std::string rest = qualified_name;
  for (size_t dot; (dot = rest.find('.')) != std::string::npos; rest = rest.substr(dot + 1)) {
    const std::string child = rest.substr(0, dot);
    if (!owner.hasattr(child) || !owner.attr(child).isModule())
      throw runtime_error(fmt::format("no submodule '{}' in '{}'", child, qualified_name));
    owner = owner.attr(child).toModule();
  }
  if (!owner.hasattr(rest)) throw runtime_error(fmt::format("no parameter '{}'", qualified_name));
  ParameterSlot slot{owner, rest, {}};
  // torch.nn's RNNs name the places of their _flat_weights list in _flat_weights_names.
  if (owner.hasattr("_flat_weights") && owner.hasattr("_flat_weights_names") && owner.attr("_flat_weights").isList() &&
      owner.attr("_flat_weights_names").isList()) {
    const auto names = owner.attr("_flat_weights_names").toList();
    for (size_t i = 0; i < names.size(); ++i)
      if (names.get(i).isString() && names.get(i).toStringRef() == rest)
        slot.list_places.emplace_back(owner.attr("_flat_weights").toList(), i);
  }
  return slot;
}

void set_parameter(torch::jit::Module& module, const std::string& qualified_name,
                   const torch::Tensor& value) {
  find_slot(module, qualified_name).set(value);
}

std::vector<ModuleTensor> module_tensors(const torch::jit::Module& module) {
  std::vector<ModuleTensor> out;
  for (const auto& p : module.named_parameters(/*recurse=*/true)) out.push_back({p.name, p.value, true});
  for (const auto& b : module.named_buffers(/*recurse=*/true)) out.push_back({b.name, b.value, false});
  return out;
}

}  // namespace ttq
