#include "core/layers.h"

#include <torch/csrc/jit/passes/inliner.h>

#include <regex>
#include <unordered_map>
#include <unordered_set>

#include "core/error.h"
#include "core/util.h"

namespace ttq {
namespace {

bool is_quantizable(const torch::Tensor& t) { return t.dim() >= 2 && t.is_floating_point(); }

// Walks a graph (and nested blocks) and records the qualified attribute paths reached from
// `self` through chains of prim::GetAttr, in the order the graph first touches them.
void collect_attribute_reads(torch::jit::Block* block,
                             std::unordered_map<const torch::jit::Value*, std::string>& paths,
                             std::vector<std::string>& order) {
  for (torch::jit::Node* node : block->nodes()) {
    if (node->kind() == c10::prim::GetAttr) {
      auto parent = paths.find(node->input(0));
      if (parent != paths.end()) {
        const std::string& base = parent->second;
        const std::string path = base.empty() ? node->s(c10::attr::name)
                                              : base + "." + node->s(c10::attr::name);
        paths[node->output()] = path;
        order.push_back(path);
      }
    }
    for (torch::jit::Block* inner : node->blocks()) collect_attribute_reads(inner, paths, order);
  }
}

// Attribute paths in the order `forward` reads them; empty if the module has no forward.
std::vector<std::string> forward_read_order(const torch::jit::Module& module) {
  auto method = module.find_method("forward");
  if (!method) return {};
  auto graph = method->graph()->copy();
  torch::jit::Inline(*graph);
  std::unordered_map<const torch::jit::Value*, std::string> paths{{graph->inputs().at(0), ""}};
  std::vector<std::string> order;
  collect_attribute_reads(graph->block(), paths, order);
  return order;
}

}  // namespace

std::vector<Candidate> find_candidates(const torch::jit::Module& module) {
  std::vector<Candidate> registered;
  std::unordered_map<std::string, size_t> index;
  for (const auto& p : module.named_parameters(/*recurse=*/true)) {
    if (!is_quantizable(p.value) || index.count(p.name)) continue;
    index[p.name] = registered.size();
    registered.push_back({p.name, p.value, false});
  }

  std::vector<Candidate> ordered;
  std::unordered_set<std::string> placed;
  for (const auto& path : forward_read_order(module)) {
    auto it = index.find(path);
    if (it == index.end() || !placed.insert(path).second) continue;
    ordered.push_back(registered[it->second]);
  }
  for (const auto& c : registered)
    if (!placed.count(c.name)) ordered.push_back(c);
  return ordered;
}

size_t mark_selected(std::vector<Candidate>& candidates, const Selection& selection) {
  const auto include = compile_regexes(selection.include), exclude = compile_regexes(selection.exclude);

  size_t count = 0;
  for (size_t i = 0; i < candidates.size(); ++i) {
    auto& c = candidates[i];
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
    throw input_error("the model has no quantizable layer (no floating-point parameter of rank >= 2)");
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
  return {owner, rest};
}

void set_parameter(torch::jit::Module& module, const std::string& qualified_name,
                   const torch::Tensor& value) {
  find_slot(module, qualified_name).set(value);
}

}  // namespace ttq
