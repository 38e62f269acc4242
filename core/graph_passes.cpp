#include "core/graph_passes.h"

#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/passes/constant_propagation.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>
#include <torch/csrc/jit/passes/peephole.h>

#include <map>
#include <set>
#include <unordered_map>
#include <utility>

#include "core/error.h"

namespace ttq {
namespace {

using torch::jit::Block, torch::jit::Graph, torch::jit::Node, torch::jit::Value;

void collect_reads(Block* block, std::unordered_map<const Value*, std::string>& paths, std::vector<Read>& reads) {
  for (Node* node : block->nodes()) {
    if (node->kind() == c10::prim::GetAttr) {
      const auto parent = paths.find(node->input(0));
      if (parent != paths.end()) {
        const std::string name = join_path(parent->second, node->s(c10::attr::name));
        if (node->output()->type()->cast<c10::ClassType>())
          paths[node->output()] = name;
        else
          reads.push_back({node, name});
      }
    }
    for (Block* inner : node->blocks()) collect_reads(inner, paths, reads);
  }
}

// Fused fast paths of nn.TransformerEncoderLayer and nn.MultiheadAttention: they read the float
// weights directly, so a packed model takes the module's ordinary path instead (the same function,
// op by op, whose linear layers then run packed).
bool is_fused_fast_path(const Node* node) {
  static const std::set<c10::Symbol> kinds{c10::Symbol::fromQualString("aten::_transformer_encoder_layer_fwd"),
                                           c10::Symbol::fromQualString("aten::_native_multi_head_attention")};
  return kinds.count(node->kind()) > 0;
}

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

}  // namespace

Value* insert_op(Graph& graph, const char* op, const std::vector<Value*>& inputs) {
  Node* call = graph.insertNode(graph.create(c10::Symbol::fromQualString(op), inputs, 1));
  call->output()->setType(c10::TensorType::get());
  return call->output();
}

std::string join_path(const std::string& prefix, const std::string& name) {
  return prefix.empty() ? name : prefix + "." + name;
}

std::vector<Read> reads_in(Graph& graph) {
  std::unordered_map<const Value*, std::string> paths{{graph.inputs().at(0), ""}};
  std::vector<Read> reads;
  collect_reads(graph.block(), paths, reads);
  return reads;
}

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

}  // namespace ttq
